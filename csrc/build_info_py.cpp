// build_info_py.cpp — Python bindings of build_info, cuda_compiled, cuda_device_count and
// cuda_driver_version: how this extension was built and what CUDA it sees (queries in device_cuda.cu).
#include "bindings.h"  // jpeg_decode.h where HISTOFAST_WITH_JPEG

#ifdef HISTOFAST_WITH_CUDA
#include "device.h"
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace hf {
namespace {

py::dict build_info() {
  py::dict d;
#ifdef HISTOFAST_WITH_CUDA
  d["cuda_compiled"] = true;
  d["cuda_archs"] = HISTOFAST_CUDA_ARCHS;
  d["cuda_runtime_version"] = cuda_runtime_version();
#else
  d["cuda_compiled"] = false;
  d["cuda_archs"] = "";
  d["cuda_runtime_version"] = -1;
#endif
#ifdef _OPENMP
  d["openmp"] = true;
  d["cpu_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["cpu_threads"] = 1;
#endif
#if defined(__x86_64__) && defined(__GNUC__)
  d["avx2"] = static_cast<bool>(__builtin_cpu_supports("avx2"));
#else
  d["avx2"] = false;
#endif
  // Which decoder the fast path uses for JPEG tiles: the strict one in _C (built only where CMake found
  // the libjpeg headers; jpeg_decode_py.cpp, decode_jpegs_counting_white_py.cpp), else imagecodecs' (histofast/ops.py decides by the same bindings).
#ifdef HISTOFAST_WITH_JPEG
  d["jpeg_strict"] = true;
  d["jpeg"] = jpeg_library() + " in _C (strict: every libjpeg warning is an error)";
#else
  d["jpeg_strict"] = false;
  d["jpeg"] = "imagecodecs (not strict: _C was built without the libjpeg headers)";
#endif
  d["compiler"] = __VERSION__;
  return d;
}

}  // namespace

void bind_build_info(py::module_& m) {
  m.def("build_info", &build_info,
        "How this extension was built: CUDA, architectures, OpenMP, AVX2, the JPEG decoder of the fast path.");
#ifdef HISTOFAST_WITH_CUDA
  m.def("cuda_compiled", [] { return true; });
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices visible (0 without a driver).");
  m.def("cuda_driver_version", &cuda_driver_version);
#else
  m.def("cuda_compiled", [] { return false; });
  m.def("cuda_device_count", [] { return 0; }, "CUDA devices visible (0: built without CUDA).");
  m.def("cuda_driver_version", [] { return 0; });
#endif
}

}  // namespace hf
