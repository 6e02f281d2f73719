// cuda_check.cuh — CUDA helpers for the *_cuda.cu twins: CHECK_CUDA (raises with file and line),
// a device guard, and a stream-ordered scratch buffer.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

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

// Scratch memory allocated and freed in the order of `stream` (no device-wide synchronisation).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer(size_t n, cudaStream_t stream) : stream_(stream) {
    CHECK_CUDA(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), n * sizeof(T), stream));
  }
  ~DeviceBuffer() { cudaFreeAsync(ptr_, stream_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
};

// Grid dimensions y and z are limited to 65535 blocks; launchers loop over chunks of this many.
constexpr int64_t kMaxGridYZ = 65535;

}  // namespace hf
