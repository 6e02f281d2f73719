// device.h — the CUDA runtime queries the bindings need (py_array.cpp, build_info_py.cpp); defined in
// device_cuda.cu, compiled only with CUDA.
#pragma once

namespace hf {

int cuda_device_count();                 // 0 where there is no driver or no device
int cuda_runtime_version();              // e.g. 13000
int cuda_driver_version();               // 0 where there is no driver
int cuda_pointer_device(const void* p);  // device ordinal of device memory, -1 otherwise

}  // namespace hf
