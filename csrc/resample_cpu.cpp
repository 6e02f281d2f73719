// resample_cpu.cpp — CPU twin of resample, one output row at a time (OpenMP over rows): its taps of the
// input rows summed down into one int16 plane per channel, then each output pixel's taps of a plane summed
// across. With AVX2 (where the CPU has it) both passes multiply-add int16 pairs: down 16 pixels and two taps
// at a time (each channel gathered from the interleaved bytes by pshufb), across eight output pixels at a time
// when they have at most four taps (any scale up to 2). The integers are the same on every path.
#include <cstring>
#include <vector>

#include "cpu.h"
#include "resample.h"

namespace hf {
namespace {

constexpr int64_t kPad = 4;  // int16 zeros after each plane: a four-tap load never reads past it

// Pixels x0 .. cols − 1 of row v's taps of the input rows, summed down into the planes (channel c at c·pitch).
void down_row(const ResampleArgs& a, int64_t v, int64_t col0, int64_t x0, int16_t* planes, int64_t pitch) {
  const int32_t* w = a.y.weights + v * a.y.taps;
  const uint8_t* src = a.in.data + a.y.first[v] * a.in.row_stride + 3 * col0;
  for (int64_t x = x0; x < a.cols(); ++x)
    for (int c = 0; c < 3; ++c) {
      int32_t acc = 0;
      for (int64_t k = 0; k < a.y.taps; ++k) acc += w[k] * src[k * a.in.row_stride + 3 * x + c];
      planes[c * pitch + x] = down_value(acc);
    }
}

// Output pixels u0 .. n − 1 of one channel: dst[3u] from the plane (its column 0 is input column col0).
void across_plane(const int16_t* plane, const Taps& x, int64_t col0, int64_t u0, uint8_t* dst) {
  for (int64_t u = u0; u < x.n; ++u) {
    const int32_t* w = x.weights + u * x.taps;
    const int16_t* p = plane + (x.first[u] - col0);
    int32_t acc = 0;
    for (int64_t k = 0; k < x.taps; ++k) acc += w[k] * p[k];
    dst[3 * u] = across_value(acc);
  }
}

#ifdef HF_HAVE_AVX2_PATH
// pshufb masks gathering channel c of 16 interleaved pixels from the part-th of their three 16-byte loads.
struct Deinterleave {
  alignas(16) uint8_t mask[3][3][16];
  Deinterleave() {
    for (int c = 0; c < 3; ++c)
      for (int part = 0; part < 3; ++part)
        for (int j = 0; j < 16; ++j) {
          const int from = 3 * j + c - 16 * part;
          mask[c][part][j] = from >= 0 && from < 16 ? static_cast<uint8_t>(from) : 0x80;
        }
  }
};

// Channel c of the 16 pixels at p, as 16 int16.
__attribute__((target("avx2"))) inline __m256i channel16(const uint8_t* p, const __m128i (&mask)[3][3], int c) {
  const __m128i* q = reinterpret_cast<const __m128i*>(p);
  const __m128i bytes = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(_mm_loadu_si128(q), mask[c][0]),
                                                  _mm_shuffle_epi8(_mm_loadu_si128(q + 1), mask[c][1])),
                                     _mm_shuffle_epi8(_mm_loadu_si128(q + 2), mask[c][2]));
  return _mm256_cvtepu8_epi16(bytes);
}

// down_row for the first pixels, 16 at a time, two taps per multiply-add of int16 pairs (the weights fit
// int16: at most 2^14); returns how many pixels it did.
__attribute__((target("avx2"))) int64_t down_row_avx2(const ResampleArgs& a, int64_t v, int64_t col0,
                                                      int16_t* planes, int64_t pitch) {
  static const Deinterleave table;
  __m128i mask[3][3];
  for (int c = 0; c < 3; ++c)
    for (int part = 0; part < 3; ++part)
      mask[c][part] = _mm_load_si128(reinterpret_cast<const __m128i*>(table.mask[c][part]));
  const int64_t taps = a.y.taps, stride = a.in.row_stride;
  const int32_t* w = a.y.weights + v * taps;
  const uint8_t* src = a.in.data + a.y.first[v] * stride + 3 * col0;
  const __m256i round = _mm256_set1_epi32(1 << (kDownShift - 1));
  int64_t x = 0;
  for (; x + 16 <= a.cols(); x += 16)
    for (int c = 0; c < 3; ++c) {
      __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();  // pixels 0–3, 8–11 | 4–7, 12–15
      for (int64_t k = 0; k < taps; k += 2) {
        const bool pair = k + 1 < taps;
        const __m256i top = channel16(src + k * stride + 3 * x, mask, c);
        const __m256i bottom = pair ? channel16(src + (k + 1) * stride + 3 * x, mask, c) : _mm256_setzero_si256();
        const __m256i weights = _mm256_set1_epi32((w[k] & 0xffff) | ((pair ? w[k + 1] : 0) << 16));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(top, bottom), weights));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(top, bottom), weights));
      }
      lo = _mm256_srai_epi32(_mm256_add_epi32(lo, round), kDownShift);
      hi = _mm256_srai_epi32(_mm256_add_epi32(hi, round), kDownShift);
      // packs works per 128-bit lane, which puts the pixels back in order.
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(planes + c * pitch + x), _mm256_packs_epi32(lo, hi));
    }
  return x;
}

// The four int16 the taps of an output pixel read, from p.
inline int64_t four_taps(const int16_t* p) {
  int64_t t;
  std::memcpy(&t, p, sizeof t);
  return t;
}

// across_plane for taps <= 4 (w4: the weights as int16, four per output pixel, zero-padded), eight output
// pixels at a time; returns how many it did (a multiple of 8), the rest is across_plane's.
__attribute__((target("avx2"))) int64_t across4_avx2(const int16_t* plane, const Taps& x, const int16_t* w4,
                                                     int64_t col0, uint8_t* dst) {
  const __m256i round = _mm256_set1_epi32(1 << (kAcrossShift - 1));
  const int16_t* p = plane - col0;
  int64_t u = 0;
  for (; u + 8 <= x.n; u += 8) {
    const int64_t* f = x.first + u;
    const __m256i lo = _mm256_set_epi64x(four_taps(p + f[3]), four_taps(p + f[2]), four_taps(p + f[1]),
                                         four_taps(p + f[0]));
    const __m256i hi = _mm256_set_epi64x(four_taps(p + f[7]), four_taps(p + f[6]), four_taps(p + f[5]),
                                         four_taps(p + f[4]));
    const __m256i w_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w4 + 4 * u));
    const __m256i w_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w4 + 4 * u + 16));
    // Pairs of products summed in int32, then the pairs: lanes hold pixels u + (0, 1, 4, 5 | 2, 3, 6, 7).
    __m256i sum = _mm256_hadd_epi32(_mm256_madd_epi16(lo, w_lo), _mm256_madd_epi16(hi, w_hi));
    sum = _mm256_srai_epi32(_mm256_add_epi32(sum, round), kAcrossShift);
    alignas(32) int32_t out[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), sum);
    static constexpr int kPixel[8] = {0, 1, 4, 5, 2, 3, 6, 7};
    for (int j = 0; j < 8; ++j) dst[3 * (u + kPixel[j])] = static_cast<uint8_t>(out[j]);
  }
  return u;
}
#endif

}  // namespace

void resample_cpu(const ResampleArgs& a) {
  const int64_t col0 = a.col0(), pitch = a.cols() + kPad;
#ifdef HF_HAVE_AVX2_PATH
  const bool avx2 = cpu_has_avx2(), four = avx2 && a.x.taps <= 4;
  std::vector<int16_t> w4(four ? static_cast<size_t>(4 * a.x.n) : 0, 0);
  for (int64_t u = 0; four && u < a.x.n; ++u)
    for (int64_t k = 0; k < a.x.taps; ++k) w4[4 * u + k] = static_cast<int16_t>(a.x.weights[u * a.x.taps + k]);
#endif
  const int team = team_size(a.threads);
#pragma omp parallel num_threads(team)
  {
    std::vector<int16_t> planes(static_cast<size_t>(3 * pitch), 0);
#pragma omp for schedule(static)
    for (int64_t v = 0; v < a.y.n; ++v) {
      int64_t x0 = 0;
#ifdef HF_HAVE_AVX2_PATH
      if (avx2) x0 = down_row_avx2(a, v, col0, planes.data(), pitch);
#endif
      down_row(a, v, col0, x0, planes.data(), pitch);
      uint8_t* dst = a.out.data + v * a.out.row_stride;
      for (int c = 0; c < 3; ++c) {
        int64_t u0 = 0;
#ifdef HF_HAVE_AVX2_PATH
        if (four) u0 = across4_avx2(planes.data() + c * pitch, a.x, w4.data(), col0, dst + c);
#endif
        across_plane(planes.data() + c * pitch, a.x, col0, u0, dst + c);
      }
    }
  }
}

}  // namespace hf
