// cuda_check.cuh — CUDA helpers for the *_cuda.cu twins: CHECK_CUDA (raises with file and line),
// a device guard, and a scratch buffer (stream-ordered where the device has memory pools).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "array.h"

#define CHECK_CUDA(expr) ::hf::check_cuda((expr), #expr, __FILE__, __LINE__)

namespace hf {

inline void check_cuda(cudaError_t err, const char* expr, const char* file, int line) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                             ") in " + expr + " at " + file + ":" + std::to_string(line));
}

inline cudaStream_t as_stream(StreamHandle h) { return reinterpret_cast<cudaStream_t>(h); }

// Makes `device` current for the scope and, only if it had to switch, restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CHECK_CUDA(cudaGetDevice(&previous_));
    switched_ = device != previous_;
    if (switched_) CHECK_CUDA(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    if (switched_ && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();  // leave no stale error
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// Whether `device` has stream-ordered memory pools (cudaMallocAsync); some vGPU, MIG and WSL setups
// do not. Asked once for every device, on first use (C++ initialises the static once, thread-safely).
inline bool memory_pools_supported(int device) {
  static const std::vector<bool> supported = [] {
    int n = 0;
    CHECK_CUDA(cudaGetDeviceCount(&n));
    std::vector<bool> s(n);
    for (int d = 0; d < n; ++d) {
      int v = 0;
      CHECK_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrMemoryPoolsSupported, d));
      s[d] = v != 0;
    }
    return s;
  }();
  return supported.at(device);
}

// Scratch memory on the current device for work queued on `stream`: allocated and freed in stream
// order (no synchronisation) where the device has memory pools; elsewhere cudaMalloc, and the
// destructor waits for the stream before cudaFree.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer(size_t n, cudaStream_t stream) : stream_(stream) {
    int device = 0;
    CHECK_CUDA(cudaGetDevice(&device));
    pooled_ = memory_pools_supported(device);
    void** p = reinterpret_cast<void**>(&ptr_);
    CHECK_CUDA(pooled_ ? cudaMallocAsync(p, n * sizeof(T), stream) : cudaMalloc(p, n * sizeof(T)));
  }
  ~DeviceBuffer() {
    cudaError_t err;
    if (pooled_) {
      err = cudaFreeAsync(ptr_, stream_);
    } else {
      const cudaError_t synced = cudaStreamSynchronize(stream_);  // queued work may still use the buffer
      err = cudaFree(ptr_);
      if (err == cudaSuccess) err = synced;
    }
    if (err != cudaSuccess) cudaGetLastError();  // a destructor cannot raise; leave no stale error behind
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
  bool pooled_ = true;
};

// Grid dimensions y and z are limited to 65535 blocks; launchers loop over chunks of this many.
constexpr int64_t kMaxGridYZ = 65535;

}  // namespace hf
