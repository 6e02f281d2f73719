// rgb_to_hsv_cuda.cu — CUDA twin of rgb_to_hsv: one thread per pixel, tables in shared memory.
#include "cuda_check.cuh"
#include "hsv.h"
#include "rgb_to_hsv.h"

namespace hf {
namespace {

__global__ void rgb_to_hsv_kernel(Pixels<const uint8_t> rgb, Pixels<uint8_t> hsv, int64_t y_begin) {
  __shared__ int32_t sdiv[256], hdiv[256];
  fill_hsv_tables(sdiv, hdiv);
  __syncthreads();
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t y = y_begin + static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  if (x >= rgb.width || y >= rgb.height) return;
  const uint8_t* src = rgb.data + y * rgb.row_stride + 3 * x;
  uint8_t* dst = hsv.data + y * hsv.row_stride + 3 * x;
  const Hsv p = rgb_to_hsv_px(src[0], src[1], src[2], sdiv, hdiv);
  dst[0] = static_cast<uint8_t>(p.h);
  dst[1] = static_cast<uint8_t>(p.s);
  dst[2] = static_cast<uint8_t>(p.v);
}

}  // namespace

void rgb_to_hsv_cuda(Pixels<const uint8_t> rgb, Pixels<uint8_t> hsv, StreamHandle stream) {
  DeviceGuard guard(rgb.device);
  const dim3 block(32, 8);
  const int64_t rows_per_launch = kMaxGridYZ * block.y;
  for (int64_t y = 0; y < rgb.height; y += rows_per_launch) {
    const int64_t rows = hf_min(rows_per_launch, rgb.height - y);
    const dim3 grid(static_cast<unsigned>((rgb.width + block.x - 1) / block.x),
                    static_cast<unsigned>((rows + block.y - 1) / block.y));
    rgb_to_hsv_kernel<<<grid, block, 0, as_stream(stream)>>>(rgb, hsv, y);
    CHECK_CUDA(cudaGetLastError());
  }
}

}  // namespace hf
