// cpu.h — what the CPU twins ask of the host: the OpenMP team of one kernel call (the caller's thread count,
// a slide's `threads`, so threads=1 is one thread in all; or OpenMP's default when the caller leaves it at 0),
// and whether the CPU has AVX2 (kernels with an AVX2 path take it only then: the build does not require it).
#pragma once
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define HF_HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

namespace hf {

inline int team_size(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

#ifdef HF_HAVE_AVX2_PATH
inline bool cpu_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

}  // namespace hf
