// py_array.h — the array marshalling every *_py.cpp shares: a non-owning View of a host (buffer
// protocol) or CUDA (__cuda_array_interface__) array, and the input/output/size checks built on it.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::array arguments, std::pair results: the same casters in every *_py.cpp

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "array.h"

namespace hf {

enum class DType { U8, F16, F32, Other };
constexpr int kAnyCuda = -2;

// -1: host; kAnyCuda: an empty CUDA array (data pointer 0, so no ordinal); else the CUDA ordinal.
std::string device_name(int device);
const char* dtype_name(DType d);

// A non-owning view of a host or CUDA array; strides in bytes.
struct View {
  void* data = nullptr;
  DType dtype = DType::Other;
  std::vector<int64_t> shape, strides;
  int device = -1;  // as device_name() reads it
};

// Reads `obj` without copying; `name` is the argument's name in error messages.
View view_of(pybind11::handle obj, const std::string& name, bool writable);

// "(2, 3)", "(4,)": a shape (or strides) as Python prints a tuple.
std::string shape_str(const std::vector<int64_t>& s);

// An H×W×3 uint8 image whose pixels are packed (rows may be strided).
template <class T>
Pixels<T> image_of(const View& v, const std::string& name) {
  if (v.dtype != DType::U8) throw DtypeError(name + ": expected uint8, got " + dtype_name(v.dtype));
  if (v.shape.size() != 3 || v.shape[2] != 3)
    throw ArgumentError(name + ": expected shape (H, W, 3), got " + shape_str(v.shape));
  if (v.shape[0] < 1 || v.shape[1] < 1) throw ArgumentError(name + ": empty image " + shape_str(v.shape));
  if (v.strides[2] != 1 || v.strides[1] != 3 || v.strides[0] < 3 * v.shape[1])
    throw ArgumentError(name + ": pixels must be packed RGB (strides (row, 3, 1)); got strides " + shape_str(v.strides) +
                        " — pass np.ascontiguousarray(" + name + ")");
  return {static_cast<T*>(v.data), v.shape[0], v.shape[1], v.strides[0], v.device};
}

// A C-contiguous output of exactly this shape and dtype on `device`; returns its data pointer.
void* output_of(const View& v, const std::string& name, const std::vector<int64_t>& shape, DType dtype, int device);

// Raises unless the bytes `out` can write and those `in` can read are disjoint (same kind of memory).
void disjoint(const View& in, const std::string& in_name, const View& out, const std::string& out_name);

// Raises unless value > 0.
void positive(int64_t value, const char* name);

// A small host-side parameter array (numpy converts lists and other dtypes to it).
template <class T>
using HostArray = pybind11::array_t<T, pybind11::array::c_style | pybind11::array::forcecast>;

// Raises unless `a` has exactly this shape.
void require_shape(const pybind11::array& a, const char* name, const std::vector<int64_t>& shape);

}  // namespace hf
