// resample_cpu.cpp — CPU twin of resample, one output row at a time (OpenMP over rows): its taps of the
// input rows summed down into a row buffer (contiguous: vectorised), then each output pixel's taps of that
// row summed across, with the common tap counts unrolled at compile time.
#include <vector>

#include "resample.h"
#include "threads.h"

namespace hf {
namespace {

template <int kTaps>  // 0: the count is x.taps, read at run time
__attribute__((always_inline)) inline void across_taps(const uint16_t* down, const Taps& x, int64_t col0, uint8_t* dst) {
  const int64_t taps = kTaps > 0 ? kTaps : x.taps;
  for (int64_t u = 0; u < x.n; ++u) {
    const int32_t* w = x.weights + u * taps;
    const uint16_t* p = down + 3 * (x.first[u] - col0);
    int32_t r = 0, g = 0, b = 0;
    for (int64_t k = 0; k < taps; ++k) {
      r += w[k] * p[3 * k];
      g += w[k] * p[3 * k + 1];
      b += w[k] * p[3 * k + 2];
    }
    dst[3 * u] = across_value(r);
    dst[3 * u + 1] = across_value(g);
    dst[3 * u + 2] = across_value(b);
  }
}

// One output row: its taps of the input rows summed down into `down`, then across into `dst`. Compiled for
// AVX2 and for the baseline, picked once by the CPU it runs on (GCC's target_clones): the wide integer
// multiply-adds of AVX2 without requiring it of the build.
__attribute__((target_clones("avx2", "default"))) void resample_row(const ResampleArgs& a, int64_t v, int64_t col0,
                                                                   int32_t* acc, uint16_t* down) {
  const int64_t width = 3 * a.cols();
  const int32_t* w = a.y.weights + v * a.y.taps;
  const uint8_t* src = a.in.data + a.y.first[v] * a.in.row_stride + 3 * col0;
  for (int64_t i = 0; i < width; ++i) acc[i] = w[0] * src[i];
  for (int64_t k = 1; k < a.y.taps; ++k) {
    const uint8_t* row = src + k * a.in.row_stride;
    const int32_t wk = w[k];
    for (int64_t i = 0; i < width; ++i) acc[i] += wk * row[i];
  }
  for (int64_t i = 0; i < width; ++i) down[i] = down_value(acc[i]);
  uint8_t* dst = a.out.data + v * a.out.row_stride;
  switch (a.x.taps) {
    case 2: across_taps<2>(down, a.x, col0, dst); break;
    case 3: across_taps<3>(down, a.x, col0, dst); break;
    case 4: across_taps<4>(down, a.x, col0, dst); break;
    case 5: across_taps<5>(down, a.x, col0, dst); break;
    case 6: across_taps<6>(down, a.x, col0, dst); break;
    case 8: across_taps<8>(down, a.x, col0, dst); break;
    case 9: across_taps<9>(down, a.x, col0, dst); break;
    default: across_taps<0>(down, a.x, col0, dst);
  }
}

}  // namespace

void resample_cpu(const ResampleArgs& a) {
  const int64_t col0 = a.col0(), width = 3 * a.cols();
  const int team = team_size(a.threads);
#pragma omp parallel num_threads(team)
  {
    std::vector<int32_t> acc(static_cast<size_t>(width));
    std::vector<uint16_t> down(static_cast<size_t>(width));
#pragma omp for schedule(static)
    for (int64_t v = 0; v < a.y.n; ++v) resample_row(a, v, col0, acc.data(), down.data());
  }
}

}  // namespace hf
