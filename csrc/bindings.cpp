// bindings.cpp — the only file that knows pybind11: reads arrays (buffer protocol on the host,
// __cuda_array_interface__ on the GPU) without copying, checks every argument, and dispatches each
// op to its CPU or CUDA twin by the device the data lives on. Python's door is histofast/ops.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "augment.h"
#include "rgb_to_hsv.h"
#include "white_ratio.h"
#ifdef HISTOFAST_WITH_CUDA
#include "device.h"
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace hf {
namespace {

enum class DType { U8, F16, F32, Other };
constexpr int kAnyCuda = -2;

// -1: host; kAnyCuda: an empty CUDA array (data pointer 0, so no ordinal); else the CUDA ordinal.
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

// A non-owning view of a host or CUDA array; strides in bytes.
struct View {
  void* data = nullptr;
  DType dtype = DType::Other;
  std::vector<int64_t> shape, strides;
  int device = -1;  // as device_name() reads it
};

DType dtype_from_code(char kind, int64_t size) {
  if (kind == 'u' && size == 1) return DType::U8;
  if (kind == 'f' && size == 2) return DType::F16;
  if (kind == 'f' && size == 4) return DType::F32;
  return DType::Other;
}

View view_of(py::handle obj, const std::string& name, bool writable) {
  View v;
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    const py::dict cai = obj.attr("__cuda_array_interface__");
    const py::tuple data = cai["data"];
    v.data = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
    if (writable && data[1].cast<bool>()) throw ArgumentError(name + " is read-only");
    const std::string typestr = cai["typestr"].cast<std::string>();
    if (typestr.size() < 3 || typestr[0] == '>') throw DtypeError(name + ": unsupported typestr '" + typestr + "'");
    if (cai.contains("mask") && !cai["mask"].is_none()) throw ArgumentError(name + ": masked arrays are not supported");
    const int64_t itemsize = std::stoll(typestr.substr(2));
    v.dtype = dtype_from_code(typestr[1], itemsize);
    for (auto s : cai["shape"].cast<py::tuple>()) v.shape.push_back(s.cast<int64_t>());
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
  if (!format.empty() && std::string("@=<>|!").find(format[0]) != std::string::npos) format = format.substr(1);
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

// A C-contiguous output of exactly this shape and dtype on `device`.
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

void positive(int64_t value, const char* name) {
  if (value <= 0) throw ArgumentError(std::string(name) + "=" + std::to_string(value) + ": must be a positive integer");
}

HsvRange hsv_range(const std::array<int, 3>& lower, const std::array<int, 3>& upper) {
  static const int top[3] = {180, 255, 255};
  static const char* channel[3] = {"H", "S", "V"};
  HsvRange r{};
  for (int c = 0; c < 3; ++c) {
    for (const auto* b : {&lower, &upper}) {
      const int value = (*b)[c];
      if (value < 0 || value > top[c])
        throw ArgumentError(std::string(b == &lower ? "lower" : "upper") + "[" + std::to_string(c) + "]=" +
                            std::to_string(value) + ": " + channel[c] + " must lie in [0, " + std::to_string(top[c]) +
                            "] (OpenCV 8-bit HSV)");
    }
    if (lower[c] > upper[c])
      throw ArgumentError("lower[" + std::to_string(c) + "]=" + std::to_string(lower[c]) + " exceeds upper[" +
                          std::to_string(c) + "]=" + std::to_string(upper[c]));
    r.lo[c] = lower[c];
    r.hi[c] = upper[c];
  }
  return r;
}

void rgb_to_hsv(py::object rgb_obj, py::object out_obj, [[maybe_unused]] StreamHandle stream) {
  const auto rgb = image_of<const uint8_t>(view_of(rgb_obj, "rgb", false), "rgb");
  const View out_view = view_of(out_obj, "out", true);
  output_of(out_view, "out", {rgb.height, rgb.width, 3}, DType::U8, rgb.device);
  const auto hsv = image_of<uint8_t>(out_view, "out");
  py::gil_scoped_release nogil;
  if (rgb.device == -1) return rgb_to_hsv_cpu(rgb, hsv);
#ifdef HISTOFAST_WITH_CUDA
  rgb_to_hsv_cuda(rgb, hsv, stream);
#endif
}

// Tile rows and columns of the grid over a height×width region; the checks white_ratio applies.
std::pair<int64_t, int64_t> grid_shape(int64_t height, int64_t width, int64_t tile_size, int64_t stride) {
  positive(tile_size, "tile_size");
  positive(stride, "stride");
  if (tile_size > height || tile_size > width)
    throw ArgumentError("tile_size=" + std::to_string(tile_size) + ": larger than region (" + std::to_string(height) +
                        "×" + std::to_string(width) + " pixels)");
  return {(height - tile_size) / stride + 1, (width - tile_size) / stride + 1};
}

void white_ratio(py::object region_obj, py::object out_obj, int64_t tile_size, int64_t stride,
                 std::array<int, 3> lower, std::array<int, 3> upper, [[maybe_unused]] StreamHandle stream) {
  WhiteRatioArgs a{image_of<const uint8_t>(view_of(region_obj, "region", false), "region"), tile_size, stride,
                   hsv_range(lower, upper)};
  grid_shape(a.region.height, a.region.width, tile_size, stride);
  const CellGrid g = make_cell_grid(a, 1);
  float* out = static_cast<float*>(
      output_of(view_of(out_obj, "out", true), "out", {g.rows, g.cols}, DType::F32, a.region.device));
  py::gil_scoped_release nogil;
  if (a.region.device == -1) return white_ratio_cpu(a, out);
#ifdef HISTOFAST_WITH_CUDA
  white_ratio_cuda(a, out, stream);
#endif
}

template <class T>
using HostArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

void require_shape(const py::array& a, const char* name, std::vector<int64_t> shape) {
  std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  if (got != shape) throw ArgumentError(std::string(name) + ": expected shape " + shape_str(shape) + ", got " + shape_str(got));
}

void augment(py::object region_obj, py::object out_obj, int64_t tile_size, HostArray<int64_t> origins,
             HostArray<int64_t> rot90, HostArray<bool> flip, HostArray<int64_t> shift, HostArray<double> angle,
             std::array<float, 3> mean, std::array<float, 3> std, const std::string& layout,
             [[maybe_unused]] StreamHandle stream) {
  AugmentArgs a{};
  a.region = image_of<const uint8_t>(view_of(region_obj, "region", false), "region");
  a.tile = tile_size;
  grid_shape(a.region.height, a.region.width, tile_size, 1);
  if (origins.ndim() != 2 || origins.shape(1) != 2)
    throw ArgumentError("origins: expected shape (N, 2) of (x, y), got " +
                        shape_str(std::vector<int64_t>(origins.shape(), origins.shape() + origins.ndim())));
  a.n = origins.shape(0);
  require_shape(rot90, "rot90", {a.n});
  require_shape(flip, "flip", {a.n});
  require_shape(shift, "shift", {a.n, 2});
  require_shape(angle, "angle", {a.n});
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(mean[c])) throw ArgumentError("mean[" + std::to_string(c) + "]: must be finite");
    if (!(std::isfinite(std[c]) && std[c] > 0))
      throw ArgumentError("std[" + std::to_string(c) + "]=" + std::to_string(std[c]) + ": must be positive");
    a.mean[c] = mean[c];
    a.std[c] = std[c];
  }
  if (layout != "NCHW" && layout != "NHWC") throw ArgumentError("layout='" + layout + "': expected 'NCHW' or 'NHWC'");
  a.layout = layout == "NCHW" ? Layout::NCHW : Layout::NHWC;

  const auto o = origins.unchecked<2>();
  const auto k = rot90.unchecked<1>();
  const auto f = flip.unchecked<1>();
  const auto s = shift.unchecked<2>();
  const auto ang = angle.unchecked<1>();
  std::vector<TileParams> params(a.n);
  for (int64_t i = 0; i < a.n; ++i) {
    const std::string at = "[" + std::to_string(i) + "]";
    if (o(i, 0) < 0 || o(i, 1) < 0 || o(i, 0) > a.region.width - a.tile || o(i, 1) > a.region.height - a.tile)
      throw ArgumentError("origins" + at + "=(" + std::to_string(o(i, 0)) + ", " + std::to_string(o(i, 1)) +
                          "): the tile must start inside the region, x in [0, " + std::to_string(a.region.width - a.tile) +
                          "], y in [0, " + std::to_string(a.region.height - a.tile) + "] (origins are (x, y))");
    if (k(i) < 0 || k(i) > 3) throw ArgumentError("rot90" + at + "=" + std::to_string(k(i)) + ": must be 0, 1, 2 or 3");
    if (!std::isfinite(ang(i))) throw ArgumentError("angle" + at + ": must be finite");
    TileParams& p = params[i];
    p.x0 = o(i, 0) + s(i, 0);
    p.y0 = o(i, 1) + s(i, 1);
    p.k = static_cast<int32_t>(k(i));
    p.flip = f(i) ? 1 : 0;
    p.rotate = ang(i) != 0.0;
    const double rad = ang(i) * 3.14159265358979323846 / 180.0;
    p.cos_a = static_cast<float>(std::cos(rad));
    p.sin_a = static_cast<float>(std::sin(rad));
  }
  a.params = params.data();

  const View out_view = view_of(out_obj, "out", true);
  a.out_type = out_view.dtype == DType::U8 ? OutType::U8 : out_view.dtype == DType::F16 ? OutType::F16 : OutType::F32;
  const std::vector<int64_t> shape = a.layout == Layout::NCHW ? std::vector<int64_t>{a.n, 3, a.tile, a.tile}
                                                              : std::vector<int64_t>{a.n, a.tile, a.tile, 3};
  if (out_view.dtype == DType::Other) throw DtypeError("out: expected uint8, float16 or float32");
  a.out = output_of(out_view, "out", shape, out_view.dtype, a.region.device);
  if (a.n == 0) return;
  py::gil_scoped_release nogil;
  if (a.region.device == -1) return augment_cpu(a);
#ifdef HISTOFAST_WITH_CUDA
  augment_cuda(a, stream);
#endif
}

py::dict build_info() {
  py::dict d;
#ifdef HISTOFAST_WITH_CUDA
  d["cuda_compiled"] = true;
  d["cuda_archs"] = HISTOFAST_CUDA_ARCHS;
  d["cuda_runtime_version"] = cuda_runtime_version();
#else
  d["cuda_compiled"] = false;
  d["cuda_archs"] = "";
  d["cuda_runtime_version"] = -1;
#endif
#ifdef _OPENMP
  d["openmp"] = true;
  d["cpu_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["cpu_threads"] = 1;
#endif
#if defined(__x86_64__) && defined(__GNUC__)
  d["avx2"] = static_cast<bool>(__builtin_cpu_supports("avx2"));
#else
  d["avx2"] = false;
#endif
  d["compiler"] = __VERSION__;
  return d;
}

}  // namespace
}  // namespace hf

PYBIND11_MODULE(_C, m) {
  m.doc() = "histofast's compiled kernels. Use histofast.ops; these functions write into `out`.";
  // ArgumentError → histofast.HistofastError (a ValueError); DtypeError → TypeError.
  // Leaked on purpose: a static py::object would be released after the interpreter is gone.
  static PyObject* histofast_error = 
      py::object(py::module_::import("histofast.errors").attr("HistofastError")).release().ptr();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const hf::ArgumentError& e) {
      PyErr_SetString(histofast_error, e.what());
    } catch (const hf::DtypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  using namespace pybind11::literals;
  m.def("rgb_to_hsv", &hf::rgb_to_hsv, "rgb"_a, "out"_a, "stream"_a = 0);
  m.def("white_ratio", &hf::white_ratio, "region"_a, "out"_a, "tile_size"_a, "stride"_a, "lower"_a, "upper"_a,
        "stream"_a = 0);
  m.def("augment", &hf::augment, "region"_a, "out"_a, "tile_size"_a, "origins"_a, "rot90"_a, "flip"_a, "shift"_a,
        "angle"_a, "mean"_a, "std"_a, "layout"_a, "stream"_a = 0);
  m.def("grid_shape", &hf::grid_shape, "height"_a, "width"_a, "tile_size"_a, "stride"_a,
        "(rows, cols) of whole tiles at this stride; raises for sizes that white_ratio rejects.");
  m.def("build_info", &hf::build_info, "How this extension was built: CUDA, architectures, OpenMP, AVX2.");
#ifdef HISTOFAST_WITH_CUDA
  m.def("cuda_compiled", [] { return true; });
  m.def("cuda_device_count", &hf::cuda_device_count, "CUDA devices visible (0 without a driver).");
  m.def("cuda_driver_version", &hf::cuda_driver_version);
#else
  m.def("cuda_compiled", [] { return false; });
  m.def("cuda_device_count", [] { return 0; }, "CUDA devices visible (0: built without CUDA).");
  m.def("cuda_driver_version", [] { return 0; });
#endif
}
