// array.h — what crosses from the bindings (*_py.cpp) into every kernel: non-owning pixel views, the
// stream handle, and the two error types kernels and bindings raise (translated to Python in module.cpp).
#pragma once
#include <cstdint>
#include <stdexcept>

#ifdef __CUDACC__
#define HF_HD __host__ __device__ __forceinline__
#else
#define HF_HD inline
#endif

namespace hf {

// A bad argument value or shape; becomes histofast.HistofastError (a ValueError) in Python.
struct ArgumentError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// A wrong dtype or an object that is no array; becomes TypeError in Python.
struct DtypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// An interleaved RGB(-like) uint8 image: pixel (x, y) channel ch lives at
// data[y * row_stride + 3 * x + ch]. Rows may be strided (a crop of a larger array); pixels may not.
template <class T>
struct Pixels {
  T* data;
  int64_t height, width, row_stride;  // row_stride in elements
  int device;                         // -1: host memory, else the CUDA device ordinal
};

// A CUDA stream as an integer (cudaStream_t), so headers seen by the host compiler need no CUDA.
using StreamHandle = std::uintptr_t;

HF_HD int64_t hf_min(int64_t a, int64_t b) { return a < b ? a : b; }

}  // namespace hf
