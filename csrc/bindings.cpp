// bindings.cpp — the binding helpers more than one *_py.cpp uses (declared in bindings.h): the tile grid's
// bounds (white_ratio, augment), the HSV range and white_counts' checks (white_counts, decode_jpegs_counting_white).
#include "bindings.h"

#include <string>

namespace py = pybind11;

namespace hf {

std::pair<int64_t, int64_t> grid_shape(int64_t height, int64_t width, int64_t tile_size, int64_t stride) {
  positive(tile_size, "tile_size");
  positive(stride, "stride");
  if (tile_size > height || tile_size > width)
    throw ArgumentError("tile_size=" + std::to_string(tile_size) + ": larger than region (" + std::to_string(height) +
                        "×" + std::to_string(width) + " pixels)");
  return {(height - tile_size) / stride + 1, (width - tile_size) / stride + 1};
}

HsvRange hsv_range(const std::array<int, 3>& lower, const std::array<int, 3>& upper) {
  HsvRange r{};
  for (int c = 0; c < 3; ++c) {
    r.lo[c] = lower[c];
    r.hi[c] = upper[c];
  }
  return r;
}

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

}  // namespace hf
