// bindings.h — what the *_py.cpp files declare for module.cpp and for each other: one bind_<op>(m) per
// *_py.cpp (module.cpp calls each), and the binding helpers more than one *_py.cpp uses (bindings.cpp,
// jpeg_decode_py.cpp). A new op declares its bind_<op> here; nothing is declared by hand in a .cpp.
//
// The checks in the bindings protect memory only (dtype, shape, strides, device, aliasing, bounds):
// argument values that are merely wrong (HSV bounds, mean/std, …) are checked once, in histofast/ops.py.
#pragma once
#include <array>
#include <cstdint>
#include <utility>

#include "py_array.h"
#include "white_ratio.h"
#ifdef HISTOFAST_WITH_JPEG
#include "jpeg_decode.h"
#endif

namespace hf {

// Each defined in <name>_py.cpp.
void bind_rgb_to_hsv(pybind11::module_& m);
void bind_white_ratio(pybind11::module_& m);  // white_ratio, white_counts, white_ratio_from_counts, grid_shape
void bind_augment(pybind11::module_& m);
void bind_resample(pybind11::module_& m);
#ifdef HISTOFAST_WITH_JPEG  // built only where CMake found the libjpeg headers
void bind_jpeg_decode(pybind11::module_& m);                   // host only: strict libjpeg-turbo into a band
void bind_decode_jpegs_counting_white(pybind11::module_& m);  // host only: decode + white_counts per tile
#endif
void bind_build_info(pybind11::module_& m);  // build_info, cuda_compiled, cuda_device_count, cuda_driver_version

// (rows, cols) of whole tiles over a height×width region; raises ArgumentError where there are none (tile_size or
// stride not positive, the tile larger than the region): white_ratio's and augment's bounds. bindings.cpp.
std::pair<int64_t, int64_t> grid_shape(int64_t height, int64_t width, int64_t tile_size, int64_t stride);

// The inclusive HSV range [lower, upper] as the kernels take it (ops.check_hsv_bounds checked it: any values
// are safe for the kernels, which only compare with them). bindings.cpp.
HsvRange hsv_range(const std::array<int, 3>& lower, const std::array<int, 3>& upper);

// white_counts' arguments, checked (part: host uint8 image; counts: writable C-contiguous int64 2-D; cell
// positive; x, y >= 0), for white_counts and decode_jpegs_counting_white. bindings.cpp.
WhiteCountsArgs white_counts_args(const View& part, pybind11::array counts, int64_t x, int64_t y, int64_t cell,
                                  const std::array<int, 3>& lower, const std::array<int, 3>& upper);

#ifdef HISTOFAST_WITH_JPEG
// The JPEGTables stream, colour source and DCT scale both JPEG bindings take (jpeg_decode_py.cpp): tables is
// empty for None.
struct JpegInput {
  pybind11::buffer_info tables;
  JpegSource source;
  int scale;

  JpegInput(const pybind11::object& tables_obj, int source_value, int scale_value);
  JpegDecodeArgs args(const pybind11::buffer_info& data, Pixels<uint8_t> out, int64_t x, int64_t y) const;
};
#endif

}  // namespace hf
