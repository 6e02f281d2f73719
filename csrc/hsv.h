// hsv.h — OpenCV's 8-bit RGB→HSV (H 0–179, S and V 0–255) and cv::inRange, shared by the CPU and
// CUDA twins so they cannot drift apart. Bit-identical to cv2.cvtColor(COLOR_RGB2HSV) on all 2^24
// colours (tests/test_ops.py checks it exhaustively).
#pragma once
#include <cstdint>

#include "array.h"

namespace hf {

constexpr int kHsvShift = 12;  // OpenCV's fixed-point shift for the 8-bit path

// OpenCV's sdiv_table[v] = round((255 << 12) / v) and hdiv_table180[d] = round((180 << 12) / (6 d)),
// in integers. Neither quotient is ever exactly k + 0.5 for v, d in 1..255, so rounding half up
// here equals cv::saturate_cast's round-half-to-even.
HF_HD int32_t hsv_sdiv(int32_t v) { return v ? (2 * (255 << kHsvShift) + v) / (2 * v) : 0; }
HF_HD int32_t hsv_hdiv(int32_t d) { return d ? (2 * (180 << kHsvShift) + 6 * d) / (12 * d) : 0; }

struct HsvTables {
  int32_t sdiv[256];
  int32_t hdiv[256];
};

inline HsvTables make_hsv_tables() {
  HsvTables t{};
  for (int i = 0; i < 256; ++i) {
    t.sdiv[i] = hsv_sdiv(i);
    t.hdiv[i] = hsv_hdiv(i);
  }
  return t;
}

// S from diff = max - min and sdiv(max); never decreases with diff at a fixed max.
HF_HD int32_t hsv_saturation(int32_t diff, int32_t sdiv_v) {
  return (diff * sdiv_v + (1 << (kHsvShift - 1))) >> kHsvShift;
}

struct Hsv {
  int32_t h, s, v;
};

// One pixel, exactly as OpenCV's RGB2HSV_b: sdiv and hdiv are HsvTables' arrays (host or shared memory).
HF_HD Hsv rgb_to_hsv_px(int32_t r, int32_t g, int32_t b, const int32_t* sdiv, const int32_t* hdiv) {
  int32_t v = r > g ? r : g;
  v = v > b ? v : b;
  int32_t vmin = r < g ? r : g;
  vmin = vmin < b ? vmin : b;
  const int32_t diff = v - vmin;
  const int32_t s = hsv_saturation(diff, sdiv[v]);
  // OpenCV's branch-free masks: which channel holds the max picks the hue sector.
  const int32_t vr = v == r ? -1 : 0, vg = v == g ? -1 : 0;
  int32_t h = (vr & (g - b)) + (~vr & ((vg & (b - r + 2 * diff)) + (~vg & (r - g + 4 * diff))));
  h = (h * hdiv[diff] + (1 << (kHsvShift - 1))) >> kHsvShift;  // arithmetic shift of negatives, as OpenCV
  h += (h >> 31) & 180;
  return {h, s, v};
}

// Inclusive bounds per channel, as cv2.inRange(hsv, lower, upper).
struct HsvRange {
  int32_t lo[3], hi[3];
};

HF_HD bool hsv_in_range(const Hsv& p, const HsvRange& r) {
  // & rather than &&: no branches to mispredict in the per-pixel loops
  return (p.h >= r.lo[0]) & (p.h <= r.hi[0]) & (p.s >= r.lo[1]) & (p.s <= r.hi[1]) & (p.v >= r.lo[2]) &
         (p.v <= r.hi[2]);
}

}  // namespace hf

#ifdef __CUDACC__
namespace hf {
// Block-shared copies of the tables (2 KiB); every thread of the block must call it, then sync.
__device__ inline void fill_hsv_tables(int32_t* sdiv, int32_t* hdiv) {
  const int threads = blockDim.x * blockDim.y;
  for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < 256; i += threads) {
    sdiv[i] = hsv_sdiv(i);
    hdiv[i] = hsv_hdiv(i);
  }
}
}  // namespace hf
#endif
