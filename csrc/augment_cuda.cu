// augment_cuda.cu — CUDA twin of augment: one thread per output pixel (blockIdx.z = tile of the
// launch), the same geometry and conversions as the CPU twin (augment.h). The per-tile parameters
// travel by value in the kernel's parameter buffer, a launch's worth at a time.

#include "augment.h"
#include "cuda_check.cuh"

namespace hf {
namespace {

// Tiles per launch (99 today): their parameters and the kernel's other arguments fit the 4 KB
// parameter buffer that every toolkit, driver and architecture accepts (CUDA 12.1+ allows 32 KB on
// Volta+; not needed, 99 tiles of 64² already fill a GPU). By value, nothing is allocated or copied:
// a cudaMemcpyAsync from the caller's pageable memory may wait for the stream, and it cannot be
// captured in a CUDA graph.
constexpr int64_t kLaunchParamBytes = 4096;
// augment_kernel's arguments other than the tiles: a, i_begin, y_begin, out.
constexpr int64_t kOtherArgBytes = sizeof(AugmentArgs) + 2 * sizeof(int64_t) + sizeof(void*);
constexpr int64_t kTilesPerLaunch = (kLaunchParamBytes - kOtherArgBytes) / sizeof(TileParams);
static_assert(kTilesPerLaunch >= 64, "TileParams or AugmentArgs grew: too few tiles per launch to fill a GPU");

struct LaunchTiles {
  TileParams p[kTilesPerLaunch];
};

// Reads: a warp is 32 neighbouring output pixels of one row. rot90 k = 0, 2 read them from one
// source row (coalesced); k = 1, 3 transpose, so they come from 32 source rows, one 32-byte sector
// each (the block's 8 warps read neighbouring columns, so L1 serves part of it). Not yet timed on a
// GPU: benchmark with rot90 fixed at 0 and at 1 before changing this kernel (e.g. a shared-memory
// transpose).
template <class OutT>
__global__ void augment_kernel(AugmentArgs a, __grid_constant__ const LaunchTiles tiles, int64_t i_begin,
                               int64_t y_begin, OutT* out) {
  const int64_t t = a.tile;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t y = y_begin + static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  if (x >= t || y >= t) return;
  const TileParams p = tiles.p[blockIdx.z];
  const int64_t i = i_begin + blockIdx.z;
  int64_t row, col;
  dihedral_source(p.k, p.flip, t, y, x, row, col);
  float rgb[3];
  if (p.rotate) {
    sample_rotated(a.region, p, t, row, col, rgb);
  } else {
    const uint8_t* px = a.region.data + reflect_index(p.y0 + row, a.region.height) * a.region.row_stride +
                        3 * reflect_index(p.x0 + col, a.region.width);
    for (int ch = 0; ch < 3; ++ch) rgb[ch] = px[ch];
  }
  for (int ch = 0; ch < 3; ++ch)
    out[out_index(a.layout, t, i, ch, y, x)] = convert_value<OutT>(rgb[ch], a.mean[ch], a.std[ch]);
}

template <class OutT>
void launch(const AugmentArgs& a, cudaStream_t stream) {
  const dim3 block(32, 8);
  // grid.y is limited to 65535 blocks: tiles taller than that many block rows go in row chunks.
  const int64_t rows_per_launch = kMaxGridYZ * block.y;
  LaunchTiles tiles{};
  for (int64_t i = 0; i < a.n; i += kTilesPerLaunch) {
    const int64_t count = hf_min(kTilesPerLaunch, a.n - i);
    for (int64_t k = 0; k < count; ++k) tiles.p[k] = a.params[i + k];
    for (int64_t y = 0; y < a.tile; y += rows_per_launch) {
      const int64_t rows = hf_min(rows_per_launch, a.tile - y);
      const dim3 grid(static_cast<unsigned>((a.tile + block.x - 1) / block.x),
                      static_cast<unsigned>((rows + block.y - 1) / block.y), static_cast<unsigned>(count));
      augment_kernel<OutT><<<grid, block, 0, stream>>>(a, tiles, i, y, static_cast<OutT*>(a.out));
      CHECK_CUDA(cudaGetLastError());
    }
  }
}

}  // namespace

void augment_cuda(const AugmentArgs& a, StreamHandle stream_handle) {
  if (a.n == 0) return;
  DeviceGuard guard(a.region.device);
  const cudaStream_t stream = as_stream(stream_handle);
  switch (a.out_type) {
    case OutType::U8: launch<uint8_t>(a, stream); break;
    case OutType::F16: launch<uint16_t>(a, stream); break;
    case OutType::F32: launch<float>(a, stream); break;
  }
}

}  // namespace hf
