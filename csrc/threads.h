// threads.h — the OpenMP team of one CPU kernel call: the caller's thread count (a slide's `workers`,
// so workers=1 is one thread in all), or OpenMP's default when the caller leaves it at 0.
#pragma once
#ifdef _OPENMP
#include <omp.h>
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

}  // namespace hf
