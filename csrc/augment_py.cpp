// augment_py.cpp — Python binding of augment: checks the region, the per-tile parameter arrays and
// out, packs the per-tile parameters, dispatches to the CPU or CUDA twin by the region's device.
// mean, std and the layout are ops.check_batch_format's (any values are safe here: nchw picks out's shape).
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "augment.h"
#include "bindings.h"

namespace py = pybind11;

namespace hf {
namespace {

void augment(py::object region_obj, py::object out_obj, int64_t tile_size, HostArray<int64_t> origins,
             HostArray<int64_t> rot90, HostArray<bool> flip, HostArray<int64_t> shift, HostArray<double> angle,
             std::array<float, 3> mean, std::array<float, 3> std, bool nchw, [[maybe_unused]] StreamHandle stream,
             int threads) {
  AugmentArgs a{};
  a.threads = threads;
  const View region_view = view_of(region_obj, "region", false);
  a.region = image_of<const uint8_t>(region_view, "region");
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
    a.mean[c] = mean[c];
    a.std[c] = std[c];
  }
  a.layout = nchw ? Layout::NCHW : Layout::NHWC;

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
  disjoint(region_view, "region", out_view, "out");
  if (a.n == 0) return;
  py::gil_scoped_release nogil;
  if (a.region.device == -1) return augment_cpu(a);
#ifdef HISTOFAST_WITH_CUDA
  augment_cuda(a, stream);
#endif
}

}  // namespace

void bind_augment(py::module_& m) {
  using namespace pybind11::literals;
  m.def("augment", &augment, "region"_a, "out"_a, "tile_size"_a, "origins"_a, "rot90"_a, "flip"_a, "shift"_a,
        "angle"_a, "mean"_a, "std"_a, "nchw"_a, "stream"_a = 0, "threads"_a = 0);
}

}  // namespace hf
