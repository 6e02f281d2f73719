// white_ratio_py.cpp — Python bindings of white_ratio, white_counts, white_ratio_from_counts and grid_shape:
// their memory checks, and white_ratio's dispatch to the CPU or CUDA twin by the device the region lives on.
#include <array>
#include <cstdint>
#include <string>
#include <utility>

#include "bindings.h"

namespace py = pybind11;

namespace hf {
namespace {

void white_ratio(py::object region_obj, py::object out_obj, int64_t tile_size, int64_t stride,
                 std::array<int, 3> lower, std::array<int, 3> upper, [[maybe_unused]] StreamHandle stream,
                 int threads) {
  const View region_view = view_of(region_obj, "region", false);
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

// Whether n tiles from tile index first, at this stride, end inside `cells` cells of side `cell` (in 128 bits:
// no overflow can fool the check, and the kernel's int64 arithmetic stays below the end it checks).
bool tiles_inside(int64_t first, int64_t n, int64_t stride, int64_t tile, int64_t cell, int64_t cells) {
  const __int128 end = (static_cast<__int128>(first) + n - 1) * stride + tile;
  return end <= INT64_MAX && end / cell <= cells;
}

void white_ratio_from_counts(py::array counts, py::object out_obj, int64_t cell, int64_t tile_size, int64_t stride,
                             int64_t row0) {
  if (!counts.dtype().is(py::dtype::of<int64_t>()) || counts.ndim() != 2 || !(counts.flags() & py::array::c_style))
    throw ArgumentError("counts: expected a C-contiguous int64 (cells_y, cells_x) array");
  positive(cell, "cell");
  positive(tile_size, "tile_size");
  positive(stride, "stride");
  if (row0 < 0) throw ArgumentError("row0=" + std::to_string(row0) + ": must be >= 0");
  const View out_view = view_of(out_obj, "out", true);
  if (out_view.shape.size() != 2) throw ArgumentError("out: expected shape (rows, cols), got " + shape_str(out_view.shape));
  const CountsRatioArgs a{static_cast<const int64_t*>(counts.data()), counts.shape(0), counts.shape(1), cell,
                          tile_size, stride, row0, out_view.shape[0], out_view.shape[1]};
  float* out = static_cast<float*>(output_of(out_view, "out", {a.rows, a.cols}, DType::F32, -1));
  if (a.rows > 0 && a.cols > 0 &&
      !(tiles_inside(row0, a.rows, stride, tile_size, cell, a.cells_y) &&
        tiles_inside(0, a.cols, stride, tile_size, cell, a.cells_x)))
    throw ArgumentError("out: tile rows " + std::to_string(row0) + ".." + std::to_string(row0 + a.rows - 1) + ", columns 0.." +
                        std::to_string(a.cols - 1) + " of tiles " + std::to_string(tile_size) + " at stride " +
                        std::to_string(stride) + " reach past the " + shape_str({a.cells_y, a.cells_x}) + " counts of cells " +
                        std::to_string(cell));
  py::gil_scoped_release nogil;
  white_ratio_from_counts_cpu(a, out);
}

}  // namespace

void bind_white_ratio(py::module_& m) {
  using namespace pybind11::literals;
  m.def("white_ratio", &white_ratio, "region"_a, "out"_a, "tile_size"_a, "stride"_a, "lower"_a, "upper"_a,
        "stream"_a = 0, "threads"_a = 0);
  m.def("white_counts", &white_counts, "part"_a, "counts"_a, "x"_a, "y"_a, "cell"_a, "lower"_a, "upper"_a,
        "Add the white pixels of `part` (view pixels at (x, y)) to the int64 cell counts (side `cell`); host only.");
  m.def("white_ratio_from_counts", &white_ratio_from_counts, "counts"_a, "out"_a, "cell"_a, "tile_size"_a,
        "stride"_a, "row0"_a,
        "white_ratio of tile rows row0 .. row0 + out.shape[0] - 1 (float32 `out`, C-contiguous) from the int64\n"
        "cell counts white_counts filled (side `cell`, dividing tile_size and stride); host only.");
  m.def("grid_shape", &grid_shape, "height"_a, "width"_a, "tile_size"_a, "stride"_a,
        "(rows, cols) of whole tiles at this stride; raises for sizes that white_ratio rejects.");
}

}  // namespace hf
