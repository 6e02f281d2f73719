// module.cpp — the extension module histofast._C: its docstring, the C++ → Python exception
// translation, and one bind_*(m) call per *_py.cpp. Python's door is histofast/ops.py.
//
// A new op <op> needs four files — <op>.h (args + both entry points), <op>_cpu.cpp, <op>_cuda.cu
// and <op>_py.cpp (memory checks, dispatch, `void bind_<op>(pybind11::module_& m)`) — plus its
// bind_<op> declaration in bindings.h (never declared by hand here) and its call in the list below.
// CMakeLists.txt globs csrc/*.cpp and *.cu (leaving out the *jpeg*.cpp files without libjpeg).
#include "bindings.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "histofast's compiled kernels. Use histofast.ops; these functions write into `out`.";
  // ArgumentError → histofast.HistofastError (a ValueError); DtypeError → TypeError.
  // Leaked on purpose: a static py::object would be released after the interpreter is gone.
  static PyObject* histofast_error =
      py::object(py::module_::import("histofast.errors").attr("HistofastError")).release().ptr();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const hf::ArgumentError& e) {
      PyErr_SetString(histofast_error, e.what());
    } catch (const hf::DtypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  hf::bind_rgb_to_hsv(m);
  hf::bind_white_ratio(m);
  hf::bind_augment(m);
  hf::bind_resample(m);
#ifdef HISTOFAST_WITH_JPEG  // CMake found the libjpeg headers: without them ops.py decodes through imagecodecs
  hf::bind_jpeg_decode(m);
  hf::bind_decode_jpegs_counting_white(m);
#endif
  hf::bind_build_info(m);
}
