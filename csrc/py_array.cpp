// py_array.cpp — the array marshalling declared in py_array.h: reading host and CUDA arrays into
// Views, and the dtype, shape, contiguity and device checks on them.
#include "py_array.h"

#ifdef HISTOFAST_WITH_CUDA
#include "device.h"
#endif

namespace py = pybind11;

namespace hf {
namespace {

DType dtype_from_code(char kind, int64_t size) {
  if (kind == 'u' && size == 1) return DType::U8;
  if (kind == 'f' && size == 2) return DType::F16;
  if (kind == 'f' && size == 4) return DType::F32;
  return DType::Other;
}

}  // namespace

std::string device_name(int device) {
  return device == -1 ? "cpu" : device == kAnyCuda ? "cuda" : "cuda:" + std::to_string(device);
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::U8: return "uint8";
    case DType::F16: return "float16";
    case DType::F32: return "float32";
    default: return "an unsupported dtype";
  }
}

View view_of(py::handle obj, const std::string& name, bool writable) {
  View v;
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    const py::dict cai = obj.attr("__cuda_array_interface__");
    const py::tuple data = cai["data"];
    v.data = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
    if (writable && data[1].cast<bool>()) throw ArgumentError(name + " is read-only");
    const std::string typestr = cai["typestr"].cast<std::string>();
    if (typestr.size() < 3) throw DtypeError(name + ": unsupported typestr '" + typestr + "'");
    if (typestr[0] == (PY_LITTLE_ENDIAN ? '>' : '<'))
      throw DtypeError(name + ": byte order of typestr '" + typestr + "' is not this machine's");
    if (cai.contains("mask") && !cai["mask"].is_none()) throw ArgumentError(name + ": masked arrays are not supported");
    const int64_t itemsize = std::stoll(typestr.substr(2));
    v.dtype = dtype_from_code(typestr[1], itemsize);
    for (auto s : cai["shape"].cast<py::tuple>()) v.shape.push_back(s.cast<int64_t>());
    int64_t count = 1;
    for (int64_t d : v.shape) count *= d;
    // Checked before any CUDA call: a NULL data pointer is only the empty array's.
    if (v.data == nullptr && count != 0)
      throw ArgumentError(name + ": __cuda_array_interface__ has a NULL data pointer but shape " + shape_str(v.shape) +
                          " (only an empty array may)");
    if (cai.contains("strides") && !cai["strides"].is_none()) {
      for (auto s : cai["strides"].cast<py::tuple>()) v.strides.push_back(s.cast<int64_t>());
    } else {  // C-contiguous
      v.strides.assign(v.shape.size(), itemsize);
      for (int64_t d = static_cast<int64_t>(v.shape.size()) - 2; d >= 0; --d) v.strides[d] = v.strides[d + 1] * v.shape[d + 1];
    }
#ifdef HISTOFAST_WITH_CUDA
    v.device = v.data == nullptr ? kAnyCuda : cuda_pointer_device(v.data);
    if (v.device == -1)
      throw ArgumentError(name + ": __cuda_array_interface__ points at memory that is not on a CUDA device");
#else
    throw ArgumentError(name + " is a CUDA array, but this histofast was built without CUDA "
                        "(rebuild where nvcc is found, without HISTOFAST_CUDA=0)");
#endif
    return v;
  }
  if (!PyObject_CheckBuffer(obj.ptr()))
    throw DtypeError(name + ": expected a numpy array, torch tensor or CuPy array, got " +
                     std::string(py::str(py::type::of(obj).attr("__name__"))));
  const py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request(writable);
  std::string format = info.format;
  if (!format.empty() && std::string("@=<>|!").find(format[0]) != std::string::npos) {
    // '<', '>' and '!' fix the byte order; the kernels read and write the machine's own.
    const char order = format[0];
    const bool little = PY_LITTLE_ENDIAN;
    if ((order == '<' && !little) || ((order == '>' || order == '!') && little))
      throw DtypeError(name + ": byte order '" + std::string(1, order) + "' is not this machine's (" +
                       (little ? "little" : "big") + "-endian); pass " + name + ".astype(" + name +
                       ".dtype.newbyteorder('='))");
    format = format.substr(1);
  }
  v.dtype = format == "B" ? DType::U8 : format == "e" ? DType::F16 : format == "f" ? DType::F32 : DType::Other;
  v.data = info.ptr;
  v.shape.assign(info.shape.begin(), info.shape.end());
  v.strides.assign(info.strides.begin(), info.strides.end());
  return v;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

void* output_of(const View& v, const std::string& name, const std::vector<int64_t>& shape, DType dtype, int device) {
  if (v.dtype != dtype) throw DtypeError(name + ": expected " + dtype_name(dtype) + ", got " + dtype_name(v.dtype));
  if (v.shape != shape) throw ArgumentError(name + ": expected shape " + shape_str(shape) + ", got " + shape_str(v.shape));
  int64_t expect = dtype == DType::U8 ? 1 : dtype == DType::F16 ? 2 : 4;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] > 1 && v.strides[d] != expect) throw ArgumentError(name + ": must be C-contiguous");
    expect *= shape[d];
  }
  const bool same = v.device == device || (v.device == kAnyCuda && device >= 0) || (device == kAnyCuda && v.device >= 0);
  if (!same)
    throw ArgumentError(name + " is on " + device_name(v.device) + " but the input is on " + device_name(device));
  return v.data;
}

namespace {

// The bytes a view can touch: [lo, hi); empty for an array with no elements.
std::pair<uintptr_t, uintptr_t> byte_span(const View& v, int64_t itemsize) {
  intptr_t lo = 0, hi = 0;
  for (size_t d = 0; d < v.shape.size(); ++d) {
    if (v.shape[d] == 0) return {0, 0};
    const intptr_t step = static_cast<intptr_t>((v.shape[d] - 1) * v.strides[d]);
    (step < 0 ? lo : hi) += step;
  }
  const uintptr_t base = reinterpret_cast<uintptr_t>(v.data);
  return {base + lo, base + hi + itemsize};
}

int64_t itemsize_of(DType d) { return d == DType::U8 ? 1 : d == DType::F16 ? 2 : 4; }

}  // namespace

void disjoint(const View& in, const std::string& in_name, const View& out, const std::string& out_name) {
  const bool host_in = in.device == -1, host_out = out.device == -1;
  if (host_in != host_out) return;  // host and device addresses never alias
  const auto a = byte_span(in, itemsize_of(in.dtype)), b = byte_span(out, itemsize_of(out.dtype));
  if (a.first < a.second && b.first < b.second && a.first < b.second && b.first < a.second)
    throw ArgumentError(out_name + ": shares memory with " + in_name +
                        "; the kernels read " + in_name + " while writing " + out_name + " — pass a separate array");
}

void positive(int64_t value, const char* name) {
  if (value <= 0) throw ArgumentError(std::string(name) + "=" + std::to_string(value) + ": must be a positive integer");
}

void require_shape(const py::array& a, const char* name, const std::vector<int64_t>& shape) {
  const std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  if (got != shape) throw ArgumentError(std::string(name) + ": expected shape " + shape_str(shape) + ", got " + shape_str(got));
}

}  // namespace hf
