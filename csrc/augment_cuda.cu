// augment_cuda.cu — CUDA twin of augment: one thread per output pixel (blockIdx.z = tile), the same
// geometry and conversions as the CPU twin (augment.h), per-tile parameters copied to the device.

#include "augment.h"
#include "cuda_check.cuh"

namespace hf {
namespace {

template <class OutT>
__global__ void augment_kernel(AugmentArgs a, const TileParams* params, int64_t i_begin, int64_t y_begin,
                               OutT* out) {
  const int64_t t = a.tile;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t y = y_begin + static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  const int64_t i = i_begin + blockIdx.z;
  if (x >= t || y >= t) return;
  const TileParams p = params[i];
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
void launch(const AugmentArgs& a, const TileParams* params, cudaStream_t stream) {
  const dim3 block(32, 8);
  // grid.y is limited to 65535 blocks: tiles taller than that many block rows go in row chunks.
  const int64_t rows_per_launch = kMaxGridYZ * block.y;
  for (int64_t i = 0; i < a.n; i += kMaxGridYZ) {
    for (int64_t y = 0; y < a.tile; y += rows_per_launch) {
      const int64_t rows = hf_min(rows_per_launch, a.tile - y);
      const dim3 grid(static_cast<unsigned>((a.tile + block.x - 1) / block.x),
                      static_cast<unsigned>((rows + block.y - 1) / block.y),
                      static_cast<unsigned>(hf_min(kMaxGridYZ, a.n - i)));
      augment_kernel<OutT><<<grid, block, 0, stream>>>(a, params, i, y, static_cast<OutT*>(a.out));
      CHECK_CUDA(cudaGetLastError());
    }
  }
}

}  // namespace

void augment_cuda(const AugmentArgs& a, StreamHandle stream_handle) {
  if (a.n == 0) return;
  DeviceGuard guard(a.region.device);
  const cudaStream_t stream = as_stream(stream_handle);
  DeviceBuffer<TileParams> params(a.n, stream);
  // From pageable memory: returns once the host copy is staged, so a.params may go right after.
  CHECK_CUDA(cudaMemcpyAsync(params.get(), a.params, a.n * sizeof(TileParams), cudaMemcpyHostToDevice, stream));
  switch (a.out_type) {
    case OutType::U8: launch<uint8_t>(a, params.get(), stream); break;
    case OutType::F16: launch<uint16_t>(a, params.get(), stream); break;
    case OutType::F32: launch<float>(a, params.get(), stream); break;
  }
}

}  // namespace hf
