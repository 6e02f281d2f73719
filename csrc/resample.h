// resample.h — op: a separable resampling filter in fixed point, the same integers on CPU and GPU.
//
// Output pixel (v, u), channel c, of an H'×W' result from an H×W uint8 RGB image:
//   down(v, x) = (Σ_k wy[v][k] · img(y_first[v] + k, x) + 2^6) >> 7            (int16, 7 fraction bits)
//   out(v, u)  = (Σ_k wx[u][k] · down(v, x_first[u] + k) + 2^20) >> 21         (uint8)
// Down first: that pass runs along whole rows (contiguous, vectorised), and the pass across then
// reads rows already reduced in height. Each row of weights is non-negative and sums to 2^14 (kWeightOne;
// ops.Taps checks it), so down fits int16 (at most 255·128), every sum fits int32 (a pair of int16
// products too: the AVX2 path's multiply-add), and a flat colour stays exactly that colour. The weights are the caller's (a view's
// triangle filter: histofast/io/level.py); because they are integers the result does not depend on the
// order of the sums, so the twins agree bit for bit and a region reads the same however it is cut.
#pragma once
#include <cstdint>

#include "array.h"

namespace hf {

constexpr int32_t kWeightBits = 14;
constexpr int32_t kWeightOne = 1 << kWeightBits;
constexpr int32_t kDownShift = 7;                              // down keeps 7 fraction bits of a level
constexpr int32_t kAcrossShift = 2 * kWeightBits - kDownShift;  // 21: back to whole levels

// One axis of the filter: output pixel i reads input pixels first[i] .. first[i] + taps - 1.
struct Taps {
  const int64_t* first;    // n entries, non-decreasing
  const int32_t* weights;  // n × taps, row-major
  int64_t n, taps;
};

struct ResampleArgs {
  Pixels<const uint8_t> in;
  Taps x, y;           // host memory (the CUDA twin copies them); x.n = out width, y.n = out height
  Pixels<uint8_t> out;
  int threads;         // CPU: OpenMP threads (0: OpenMP's default)

  int64_t col0() const { return x.first[0]; }                           // the input columns the output reads:
  int64_t cols() const { return x.first[x.n - 1] + x.taps - col0(); }   // col0 .. col0 + cols - 1
};

HF_HD int16_t down_value(int32_t acc) { return static_cast<int16_t>((acc + (1 << (kDownShift - 1))) >> kDownShift); }
HF_HD uint8_t across_value(int32_t acc) { return static_cast<uint8_t>((acc + (1 << (kAcrossShift - 1))) >> kAcrossShift); }

void resample_cpu(const ResampleArgs& args);
void resample_cuda(const ResampleArgs& args, StreamHandle stream);

}  // namespace hf
