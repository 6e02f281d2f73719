// resample_cuda.cu — CUDA twin of resample: one thread per element of the rows summed down (int16),
// then one thread per output pixel sums its taps across; the same integer formulas as the CPU twin
// (resample.h), so the results are identical.
#include "cuda_check.cuh"
#include "resample.h"

namespace hf {
namespace {

__global__ void down_kernel(Pixels<const uint8_t> in, Taps y, int64_t col0, int64_t width, int16_t* down) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // element of the row
  const int64_t v = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  if (i >= width || v >= y.n) return;
  const int32_t* w = y.weights + v * y.taps;
  const uint8_t* src = in.data + y.first[v] * in.row_stride + 3 * col0 + i;
  int32_t acc = 0;
  for (int64_t k = 0; k < y.taps; ++k) acc += w[k] * src[k * in.row_stride];
  down[v * width + i] = down_value(acc);
}

__global__ void across_kernel(const int16_t* down, Taps x, Taps y, int64_t col0, int64_t width, Pixels<uint8_t> out) {
  const int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t v = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  if (u >= x.n || v >= y.n) return;
  const int32_t* w = x.weights + u * x.taps;
  const int16_t* p = down + v * width + 3 * (x.first[u] - col0);
  for (int ch = 0; ch < 3; ++ch) {
    int32_t acc = 0;
    for (int64_t k = 0; k < x.taps; ++k) acc += w[k] * p[3 * k + ch];
    out.data[v * out.row_stride + 3 * u + ch] = across_value(acc);
  }
}

unsigned blocks_for(int64_t n, unsigned threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

// The tables copied to the device, one buffer per table, freed in stream order after the kernels. The host
// tables are pageable memory, so each copy has finished reading them when cudaMemcpyAsync returns.
struct DeviceTaps {
  DeviceBuffer<int64_t> first;
  DeviceBuffer<int32_t> weights;
  Taps taps;

  DeviceTaps(const Taps& t, cudaStream_t stream)
      : first(static_cast<size_t>(t.n), stream), weights(static_cast<size_t>(t.n * t.taps), stream), taps(t) {
    CHECK_CUDA(cudaMemcpyAsync(first.get(), t.first, t.n * sizeof(int64_t), cudaMemcpyHostToDevice, stream));
    CHECK_CUDA(cudaMemcpyAsync(weights.get(), t.weights, t.n * t.taps * sizeof(int32_t), cudaMemcpyHostToDevice,
                               stream));
    taps.first = first.get();
    taps.weights = weights.get();
  }
};

}  // namespace

void resample_cuda(const ResampleArgs& a, StreamHandle stream_handle) {
  DeviceGuard guard(a.in.device);
  const cudaStream_t stream = as_stream(stream_handle);
  const int64_t col0 = a.col0(), width = 3 * a.cols();
  const DeviceTaps x(a.x, stream), y(a.y, stream);
  DeviceBuffer<int16_t> down(static_cast<size_t>(a.y.n * width), stream);
  const dim3 block(32, 8);
  for (int64_t v = 0; v < a.y.n; v += kMaxGridYZ * block.y) {  // grid.y is at most kMaxGridYZ blocks
    const int64_t n = hf_min(kMaxGridYZ * block.y, a.y.n - v);
    Taps rows = y.taps;
    rows.first += v;
    rows.weights += v * rows.taps;
    rows.n = n;
    Pixels<uint8_t> out = a.out;
    out.data += v * out.row_stride;
    down_kernel<<<dim3(blocks_for(width, block.x), blocks_for(n, block.y)), block, 0, stream>>>(
        a.in, rows, col0, width, down.get() + v * width);
    CHECK_CUDA(cudaGetLastError());
    across_kernel<<<dim3(blocks_for(a.x.n, block.x), blocks_for(n, block.y)), block, 0, stream>>>(
        down.get() + v * width, x.taps, rows, col0, width, out);
    CHECK_CUDA(cudaGetLastError());
  }
}

}  // namespace hf
