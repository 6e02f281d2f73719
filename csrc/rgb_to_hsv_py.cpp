// rgb_to_hsv_py.cpp — Python binding of rgb_to_hsv: checks rgb and out, dispatches to the CPU or
// CUDA twin by the device the image lives on.
#include "bindings.h"
#include "rgb_to_hsv.h"

namespace py = pybind11;

namespace hf {
namespace {

void rgb_to_hsv(py::object rgb_obj, py::object out_obj, [[maybe_unused]] StreamHandle stream) {
  const View rgb_view = view_of(rgb_obj, "rgb", false);
  const auto rgb = image_of<const uint8_t>(rgb_view, "rgb");
  const View out_view = view_of(out_obj, "out", true);
  output_of(out_view, "out", {rgb.height, rgb.width, 3}, DType::U8, rgb.device);
  disjoint(rgb_view, "rgb", out_view, "out");
  const auto hsv = image_of<uint8_t>(out_view, "out");
  py::gil_scoped_release nogil;
  if (rgb.device == -1) return rgb_to_hsv_cpu(rgb, hsv);
#ifdef HISTOFAST_WITH_CUDA
  rgb_to_hsv_cuda(rgb, hsv, stream);
#endif
}

}  // namespace

void bind_rgb_to_hsv(py::module_& m) {
  using namespace pybind11::literals;
  m.def("rgb_to_hsv", &rgb_to_hsv, "rgb"_a, "out"_a, "stream"_a = 0);
}

}  // namespace hf
