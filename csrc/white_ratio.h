// white_ratio.h — op: the fraction of each grid tile's pixels whose HSV lies in [lower, upper].
// One pass over the region counts white pixels per cell of side gcd(tile, stride); every tile's
// count is then O(1) from the 2-D prefix sums of the cell counts, whatever the overlap.
#pragma once
#include "array.h"
#include "hsv.h"

namespace hf {

struct WhiteRatioArgs {
  Pixels<const uint8_t> region;
  int64_t tile, stride;  // level pixels
  HsvRange range;
  int threads;  // CPU: OpenMP threads (0: OpenMP's default)
};

// Tiles (rows × cols) and the cells that cover them. Cells are cell_w wide and cell_h tall, with
// cell_w = gcd(tile, stride) and cell_h a divisor of it (the CPU splits rows finer to have enough
// strips for its threads). The prefix array is (cells_y + 1) × (cells_x + 1) with a zero first row
// and column.
struct CellGrid {
  int64_t rows, cols;
  int64_t cell_w, cell_h;
  int64_t cells_x, cells_y;
};

inline int64_t gcd64(int64_t a, int64_t b) {
  while (b) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// min_strips: split cell rows (by halving cell_h) until there are at least this many, if possible.
inline CellGrid make_cell_grid(const WhiteRatioArgs& a, int64_t min_strips) {
  CellGrid g{};
  g.rows = (a.region.height - a.tile) / a.stride + 1;
  g.cols = (a.region.width - a.tile) / a.stride + 1;
  g.cell_w = gcd64(a.tile, a.stride);
  const int64_t covered_h = (g.rows - 1) * a.stride + a.tile;
  g.cell_h = g.cell_w;
  while (covered_h / g.cell_h < min_strips && g.cell_h % 2 == 0) g.cell_h /= 2;
  g.cells_x = ((g.cols - 1) * a.stride + a.tile) / g.cell_w;
  g.cells_y = covered_h / g.cell_h;
  return g;
}

// White fraction of tile (i, j) from the prefix sums; identical arithmetic on both twins and in
// white_ratio_from_counts. The prefix array may start at cell row first_cell_row (0: the grid's first);
// it must hold the cell rows of tile row i.
HF_HD float tile_ratio(const int64_t* prefix, const CellGrid& g, int64_t tile, int64_t stride,
                       int64_t i, int64_t j, int64_t first_cell_row) {
  const int64_t pitch = g.cells_x + 1;
  const int64_t y0 = i * stride / g.cell_h - first_cell_row, y1 = (i * stride + tile) / g.cell_h - first_cell_row;
  const int64_t x0 = j * stride / g.cell_w, x1 = (j * stride + tile) / g.cell_w;
  const int64_t count = prefix[y1 * pitch + x1] - prefix[y0 * pitch + x1] -
                        prefix[y1 * pitch + x0] + prefix[y0 * pitch + x0];
  return static_cast<float>(static_cast<double>(count) / static_cast<double>(tile * tile));
}

// out: float32 rows × cols, C-contiguous, on the region's device.
void white_ratio_cpu(const WhiteRatioArgs& args, float* out);
void white_ratio_cuda(const WhiteRatioArgs& args, float* out, StreamHandle stream);

// white_counts: the fused scan's half of the op (host only). A decoder thread, having just filled `part`
// (the view pixels at (x, y)), adds its white pixels to `counts`, int64 cells_y × cells_x cells of side
// `cell` (= gcd(tile, stride)) over the whole view; the grid's ratios then come from the counts as
// white_ratio's do, so the pixels are never read a second time.
struct WhiteCountsArgs {
  Pixels<const uint8_t> part;
  int64_t x, y;  // view pixels
  int64_t* counts;
  int64_t cells_x, cells_y, cell;
  HsvRange range;
};
void white_counts_cpu(const WhiteCountsArgs& args);

// white_ratio_from_counts: white_ratio of tile rows [row0, row0 + rows) from white_counts' cell counts, by
// the prefix sums and tile_ratio above, so the values equal white_ratio's bit for bit. cell must divide tile
// and stride (ops.py checks it) for them to be the grid's tiles; the binding checks that every tile lies
// inside the counts.
struct CountsRatioArgs {
  const int64_t* counts;  // cells_y × cells_x, C-contiguous
  int64_t cells_y, cells_x, cell;
  int64_t tile, stride;  // the grid, pixels
  int64_t row0, rows, cols;
};
// out: float32 rows × cols, C-contiguous, host.
void white_ratio_from_counts_cpu(const CountsRatioArgs& args, float* out);

}  // namespace hf
