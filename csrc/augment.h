// augment.h — op: for each tile, one gather pass producing normalize(D(window)) where window is a
// tile×tile crop of the reflect-padded region (optionally rotated about its centre, bilinear) and
// D is np.rot90(·, k) followed by an optional left-right flip. The geometry and the conversions
// below are shared by both twins, so CPU and CUDA compute the same values by the same operations.
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>

#include "array.h"

namespace hf {

enum class Layout { NCHW, NHWC };
enum class OutType { U8, F16, F32 };

// Per-tile parameters, prepared on the host. (x0, y0) = origin + shift, region pixels.
struct TileParams {
  int64_t x0, y0;
  int32_t k;       // counter-clockwise quarter turns, 0..3 (np.rot90)
  int32_t flip;    // left-right flip after the rotation
  int32_t rotate;  // 1: sample the window rotated by the angle whose cos/sin follow
  float cos_a, sin_a;
};

struct AugmentArgs {
  Pixels<const uint8_t> region;
  int64_t tile;
  int64_t n;                 // number of tiles
  const TileParams* params;  // host pointer, n entries
  float mean[3], std[3];
  Layout layout;
  OutType out_type;
  void* out;  // [n,3,T,T] or [n,T,T,3], C-contiguous, on the region's device
  int threads;  // CPU: OpenMP threads (0: OpenMP's default)
};

// np.pad(..., mode="reflect") as an index map: any i, period 2(n-1), edges not repeated.
HF_HD int64_t reflect_index(int64_t i, int64_t n) {
  if (i >= 0 && i < n) return i;  // the common case, without a division
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

// Output pixel (y, x) of D(window) reads window pixel (row, col).
HF_HD void dihedral_source(int32_t k, int32_t flip, int64_t t, int64_t y, int64_t x, int64_t& row,
                           int64_t& col) {
  if (flip) x = t - 1 - x;
  switch (k) {
    case 0: row = y; col = x; break;
    case 1: row = x; col = t - 1 - y; break;
    case 2: row = t - 1 - y; col = t - 1 - x; break;
    default: row = t - 1 - x; col = y; break;
  }
}

// Window pixel (row, col) of a rotated tile, bilinear over the reflect-padded region; rgb gets
// 0..255 floats. The window centre is fixed; coordinates stay window-local until the final integer
// offset so precision does not depend on where the tile sits in a large region.
HF_HD void sample_rotated(const Pixels<const uint8_t>& img, const TileParams& p, int64_t t,
                          int64_t row, int64_t col, float rgb[3]) {
  const float h = 0.5f * static_cast<float>(t - 1);
  const float dx = static_cast<float>(col) - h, dy = static_cast<float>(row) - h;
  const float u = h + (p.cos_a * dx - p.sin_a * dy);
  const float v = h + (p.sin_a * dx + p.cos_a * dy);
  const float fu = floorf(u), fv = floorf(v);
  const float wx = u - fu, wy = v - fv;
  const int64_t c0 = p.x0 + static_cast<int64_t>(fu), r0 = p.y0 + static_cast<int64_t>(fv);
  const int64_t xa = 3 * reflect_index(c0, img.width), xb = 3 * reflect_index(c0 + 1, img.width);
  const uint8_t* ra = img.data + reflect_index(r0, img.height) * img.row_stride;
  const uint8_t* rb = img.data + reflect_index(r0 + 1, img.height) * img.row_stride;
  for (int ch = 0; ch < 3; ++ch) {
    const float p00 = ra[xa + ch], p01 = ra[xb + ch], p10 = rb[xa + ch], p11 = rb[xb + ch];
    const float top = p00 + wx * (p01 - p00);
    const float bottom = p10 + wx * (p11 - p10);
    rgb[ch] = top + wy * (bottom - top);
  }
}

// float → IEEE binary16 bits, round to nearest even (as numpy's astype(float16) and __float2half_rn).
HF_HD uint16_t float_to_half_bits(float f) {
  uint32_t x;
#ifdef __CUDA_ARCH__
  x = __float_as_uint(f);
#else
  std::memcpy(&x, &f, sizeof x);
#endif
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp = (x >> 23) & 0xffu;
  uint32_t man = x & 0x7fffffu;
  if (exp == 0xffu) return static_cast<uint16_t>(sign | 0x7c00u | (man ? 0x200u : 0u));
  const int32_t e = static_cast<int32_t>(exp) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {  // subnormal half (or zero)
    if (e < -10) return static_cast<uint16_t>(sign);
    man |= 0x800000u;
    const uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1u), mid = 1u << (shift - 1u);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(e) << 10) | (man >> 13);
  const uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // a carry rounds into the exponent
  return static_cast<uint16_t>(half);
}

// The value (0..255, integer or interpolated) of channel ch as the output type: uint8 rounds and
// skips normalisation; floats are (value / 255 - mean) / std in float32, as the numpy recipe.
template <class OutT>
HF_HD OutT convert_value(float value, float mean, float std);
template <>
HF_HD uint8_t convert_value<uint8_t>(float value, float, float) {
  return static_cast<uint8_t>(value + 0.5f);
}
template <>
HF_HD float convert_value<float>(float value, float mean, float std) {
  return (value / 255.0f - mean) / std;
}
template <>
HF_HD uint16_t convert_value<uint16_t>(float value, float mean, float std) {
  return float_to_half_bits(convert_value<float>(value, mean, std));
}

// Element index of (tile i, channel ch, y, x) in the output.
HF_HD int64_t out_index(Layout layout, int64_t t, int64_t i, int ch, int64_t y, int64_t x) {
  return layout == Layout::NCHW ? ((i * 3 + ch) * t + y) * t + x : ((i * t + y) * t + x) * 3 + ch;
}

void augment_cpu(const AugmentArgs& args);
void augment_cuda(const AugmentArgs& args, StreamHandle stream);

}  // namespace hf
