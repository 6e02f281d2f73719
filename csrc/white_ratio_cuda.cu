// white_ratio_cuda.cu — CUDA twin of white_ratio: one thread per pixel of the tiled area adds its
// white bit to its cell (lanes of a warp that share a cell add once), row then column prefix sums
// over the cells, then one thread per tile.
#include "cuda_check.cuh"
#include "white_ratio.h"

namespace hf {
namespace {

using Count = unsigned long long;  // atomicAdd's 64-bit type; read back as int64_t (never negative)

// counts: (cells_y + 1) × (cells_x + 1), zeroed; cell (cy, cx) accumulates at [cy + 1][cx + 1].
__global__ void count_cells_kernel(Pixels<const uint8_t> img, HsvRange range, CellGrid g, int64_t y_begin,
                                   Count* counts) {
  __shared__ int32_t sdiv[256], hdiv[256];
  fill_hsv_tables(sdiv, hdiv);
  __syncthreads();
  const int64_t width = g.cells_x * g.cell_w, height = g.cells_y * g.cell_h;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t y = y_begin + static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  const bool inside = x < width && y < height;
  bool white = false;
  long long cell = -1;
  if (inside) {
    const uint8_t* px = img.data + y * img.row_stride + 3 * x;
    white = hsv_in_range(rgb_to_hsv_px(px[0], px[1], px[2], sdiv, hdiv), range);
    cell = (y / g.cell_h + 1) * (g.cells_x + 1) + x / g.cell_w + 1;
  }
  // blockDim.x == 32: a warp is 32 neighbouring pixels of one row, usually in one cell.
  const unsigned peers = __match_any_sync(0xffffffffu, cell);
  const unsigned whites = __ballot_sync(0xffffffffu, white) & peers;
  if (inside && whites && static_cast<int>(threadIdx.x) == __ffs(peers) - 1)
    atomicAdd(&counts[cell], static_cast<Count>(__popc(whites)));
}

__global__ void prefix_rows_kernel(Count* p, int64_t rows, int64_t pitch) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x + 1;
  if (r > rows) return;
  Count* row = p + r * pitch;
  for (int64_t c = 1; c < pitch; ++c) row[c] += row[c - 1];
}

__global__ void prefix_cols_kernel(Count* p, int64_t rows, int64_t pitch) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x + 1;
  if (c >= pitch) return;
  for (int64_t r = 1; r <= rows; ++r) p[r * pitch + c] += p[(r - 1) * pitch + c];
}

__global__ void tile_ratio_kernel(const int64_t* prefix, CellGrid g, int64_t tile, int64_t stride, float* out) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= g.rows * g.cols) return;
  out[k] = tile_ratio(prefix, g, tile, stride, k / g.cols, k % g.cols, 0);
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

void white_ratio_cuda(const WhiteRatioArgs& a, float* out, StreamHandle stream_handle) {
  DeviceGuard guard(a.region.device);
  const cudaStream_t stream = as_stream(stream_handle);
  const CellGrid g = make_cell_grid(a, 1);
  const int64_t pitch = g.cells_x + 1, height = g.cells_y * g.cell_h;
  DeviceBuffer<Count> counts((g.cells_y + 1) * pitch, stream);
  CHECK_CUDA(cudaMemsetAsync(counts.get(), 0, (g.cells_y + 1) * pitch * sizeof(Count), stream));

  const dim3 block(32, 8);
  const int64_t rows_per_launch = kMaxGridYZ * block.y;
  for (int64_t y = 0; y < height; y += rows_per_launch) {
    const dim3 grid(blocks_for(g.cells_x * g.cell_w, block.x), blocks_for(hf_min(rows_per_launch, height - y), block.y));
    count_cells_kernel<<<grid, block, 0, stream>>>(a.region, a.range, g, y, counts.get());
    CHECK_CUDA(cudaGetLastError());
  }
  prefix_rows_kernel<<<blocks_for(g.cells_y, 128), 128, 0, stream>>>(counts.get(), g.cells_y, pitch);
  prefix_cols_kernel<<<blocks_for(g.cells_x, 128), 128, 0, stream>>>(counts.get(), g.cells_y, pitch);
  tile_ratio_kernel<<<blocks_for(g.rows * g.cols, 128), 128, 0, stream>>>(
      reinterpret_cast<const int64_t*>(counts.get()), g, a.tile, a.stride, out);
  CHECK_CUDA(cudaGetLastError());
}

}  // namespace hf
