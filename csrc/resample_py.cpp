// resample_py.cpp — Python binding of resample: checks the image, the two tables against it (every tap
// inside the image, first[] non-decreasing: the memory the kernels read) and out, then dispatches to the
// CPU or CUDA twin by the image's device. The weights' values (non-negative, each row summing to
// kWeightOne) are ops.resample's check: any values are safe here.
#include <string>
#include <vector>

#include "bindings.h"
#include "resample.h"

namespace py = pybind11;

namespace hf {
namespace {

Taps taps_of(const HostArray<int64_t>& first, const HostArray<int32_t>& weights, int64_t size, const char* name) {
  if (first.ndim() != 1 || weights.ndim() != 2 || weights.shape(0) != first.shape(0) || first.shape(0) < 1 ||
      weights.shape(1) < 1)
    throw ArgumentError(std::string(name) + ": expected first (n,) and weights (n, taps) with n, taps >= 1");
  const Taps t{first.data(), weights.data(), first.shape(0), weights.shape(1)};
  for (int64_t i = 0; i < t.n; ++i)
    if (t.first[i] < 0 || t.first[i] > size - t.taps || (i > 0 && t.first[i] < t.first[i - 1]))
      throw ArgumentError(std::string(name) + ": first[" + std::to_string(i) + "]=" + std::to_string(t.first[i]) +
                          ": taps must lie inside the image (0 .. " + std::to_string(size - t.taps) +
                          ") and never go back");
  return t;
}

void resample(py::object in_obj, py::object out_obj, HostArray<int64_t> x_first, HostArray<int32_t> x_weights,
              HostArray<int64_t> y_first, HostArray<int32_t> y_weights, [[maybe_unused]] StreamHandle stream,
              int threads) {
  const View in_view = view_of(in_obj, "region", false);
  ResampleArgs a{};
  a.in = image_of<const uint8_t>(in_view, "region");
  a.x = taps_of(x_first, x_weights, a.in.width, "x_taps");
  a.y = taps_of(y_first, y_weights, a.in.height, "y_taps");
  a.threads = threads;
  const View out_view = view_of(out_obj, "out", true);
  a.out = {static_cast<uint8_t*>(output_of(out_view, "out", {a.y.n, a.x.n, 3}, DType::U8, a.in.device)), a.y.n, a.x.n,
           3 * a.x.n, a.in.device};
  disjoint(in_view, "region", out_view, "out");
  py::gil_scoped_release nogil;
  if (a.in.device == -1) return resample_cpu(a);
#ifdef HISTOFAST_WITH_CUDA
  resample_cuda(a, stream);
#endif
}

}  // namespace

void bind_resample(py::module_& m) {
  using namespace pybind11::literals;
  m.def("resample", &resample, "region"_a, "out"_a, "x_first"_a, "x_weights"_a, "y_first"_a, "y_weights"_a,
        "stream"_a = 0, "threads"_a = 0);
}

}  // namespace hf
