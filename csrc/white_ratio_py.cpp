// white_ratio_py.cpp — Python bindings of white_ratio and grid_shape: the HSV-range and tile-grid
// checks, and white_ratio's dispatch to the CPU or CUDA twin by the device the region lives on.
#include <array>
#include <string>
#include <utility>

#include "py_array.h"
#include "white_ratio.h"

namespace py = pybind11;

namespace hf {

// white_counts' checks, also used by jpeg_decode_py.cpp's fused loop.
WhiteCountsArgs white_counts_args(const View& part, py::array counts, int64_t x, int64_t y, int64_t cell,
                                  const std::array<int, 3>& lower, const std::array<int, 3>& upper);

namespace {

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

void white_ratio(py::object region_obj, py::object out_obj, int64_t tile_size, int64_t stride,
                 std::array<int, 3> lower, std::array<int, 3> upper, [[maybe_unused]] StreamHandle stream,
                 int threads) {
  const View region_view = view_of(region_obj, "region", false);
  if (threads < 0) throw ArgumentError("threads=" + std::to_string(threads) + ": must be >= 0 (0: OpenMP's default)");
  WhiteRatioArgs a{image_of<const uint8_t>(region_view, "region"), tile_size, stride, hsv_range(lower, upper), threads};
  grid_shape(a.region.height, a.region.width, tile_size, stride);
  const CellGrid g = make_cell_grid(a, 1);
  const View out_view = view_of(out_obj, "out", true);
  float* out = static_cast<float*>(output_of(out_view, "out", {g.rows, g.cols}, DType::F32, a.region.device));
  disjoint(region_view, "region", out_view, "out");
  py::gil_scoped_release nogil;
  if (a.region.device == -1) return white_ratio_cpu(a, out);
#ifdef HISTOFAST_WITH_CUDA
  white_ratio_cuda(a, out, stream);
#endif
}

void white_counts(py::object part_obj, py::array counts, int64_t x, int64_t y, int64_t cell,
                  std::array<int, 3> lower, std::array<int, 3> upper) {
  const WhiteCountsArgs a = white_counts_args(view_of(part_obj, "part", false), counts, x, y, cell, lower, upper);
  py::gil_scoped_release nogil;
  white_counts_cpu(a);
}

}  // namespace

WhiteCountsArgs white_counts_args(const View& part, py::array counts, int64_t x, int64_t y, int64_t cell,
                                  const std::array<int, 3>& lower, const std::array<int, 3>& upper) {
  WhiteCountsArgs a{image_of<const uint8_t>(part, "part"), x, y, nullptr, 0, 0, cell, hsv_range(lower, upper)};
  if (a.part.device != -1) throw ArgumentError("part: white_counts runs on the host, got " + device_name(a.part.device));
  positive(cell, "cell");
  if (x < 0 || y < 0) throw ArgumentError("x, y: must be >= 0");
  if (!counts.dtype().is(py::dtype::of<int64_t>()) || counts.ndim() != 2 || !counts.writeable() ||
      !(counts.flags() & py::array::c_style))
    throw ArgumentError("counts: expected a writable C-contiguous int64 (cells_y, cells_x) array");
  a.counts = static_cast<int64_t*>(counts.mutable_data());
  a.cells_y = counts.shape(0);
  a.cells_x = counts.shape(1);
  return a;
}

std::pair<int64_t, int64_t> grid_shape(int64_t height, int64_t width, int64_t tile_size, int64_t stride) {
  positive(tile_size, "tile_size");
  positive(stride, "stride");
  if (tile_size > height || tile_size > width)
    throw ArgumentError("tile_size=" + std::to_string(tile_size) + ": larger than region (" + std::to_string(height) +
                        "×" + std::to_string(width) + " pixels)");
  return {(height - tile_size) / stride + 1, (width - tile_size) / stride + 1};
}

void bind_white_ratio(py::module_& m) {
  using namespace pybind11::literals;
  m.def("white_ratio", &white_ratio, "region"_a, "out"_a, "tile_size"_a, "stride"_a, "lower"_a, "upper"_a,
        "stream"_a = 0, "threads"_a = 0);
  m.def("white_counts", &white_counts, "part"_a, "counts"_a, "x"_a, "y"_a, "cell"_a, "lower"_a, "upper"_a,
        "Add the white pixels of `part` (view pixels at (x, y)) to the int64 cell counts (side `cell`); host only.");
  m.def("grid_shape", &grid_shape, "height"_a, "width"_a, "tile_size"_a, "stride"_a,
        "(rows, cols) of whole tiles at this stride; raises for sizes that white_ratio rejects.");
}

}  // namespace hf
