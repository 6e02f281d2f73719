// jpeg_decode_py.cpp — Python binding of jpeg_decode: the buffer and destination checks, then the
// strict decoder with the GIL released (the slide's thread pool decodes tiles in parallel); and JpegInput,
// the tables and colour source it shares with decode_jpegs_counting_white_py.cpp (bindings.h).
#include <string>

#include "bindings.h"

namespace py = pybind11;

namespace hf {

JpegInput::JpegInput(const py::object& tables_obj, int source_value, int scale_value) {
  if (source_value != static_cast<int>(JpegSource::Header) && source_value != static_cast<int>(JpegSource::Rgb))
    throw ArgumentError("source=" + std::to_string(source_value) + ": expected 0 (as the markers say) or 2 (RGB)");
  source = static_cast<JpegSource>(source_value);
  if (scale_value != 1 && scale_value != 2 && scale_value != 4 && scale_value != 8)
    throw ArgumentError("scale=" + std::to_string(scale_value) + ": expected 1, 2, 4 or 8");
  scale = scale_value;
  if (!tables_obj.is_none()) tables = tables_obj.cast<py::buffer>().request();
}

JpegDecodeArgs JpegInput::args(const py::buffer_info& data, Pixels<uint8_t> out, int64_t x, int64_t y) const {
  return {static_cast<const uint8_t*>(data.ptr), static_cast<size_t>(data.size * data.itemsize),
          static_cast<const uint8_t*>(tables.ptr), static_cast<size_t>(tables.size * tables.itemsize), source, out,
          x, y, scale};
}

namespace {

void jpeg_decode(py::buffer data, py::object tables, int source, py::object out_obj, int64_t x, int64_t y, int scale) {
  const JpegInput input(tables, source, scale);
  if (x < 0 || y < 0) throw ArgumentError("x, y: must be >= 0");
  const py::buffer_info bytes = data.request();
  const View out_view = view_of(out_obj, "out", true);
  if (out_view.device != -1) throw ArgumentError("out: must be in host memory, got " + device_name(out_view.device));
  const JpegDecodeArgs a = input.args(bytes, image_of<uint8_t>(out_view, "out"), x, y);
  py::gil_scoped_release nogil;
  jpeg_decode_cpu(a);
}

}  // namespace

void bind_jpeg_decode(py::module_& m) {
  using namespace pybind11::literals;
  m.def("jpeg_decode", &jpeg_decode, "data"_a, "tables"_a, "source"_a, "out"_a, "x"_a = 0, "y"_a = 0, "scale"_a = 1,
        "Decode a JPEG strictly (any libjpeg warning raises) into `out` (H, W, 3 uint8, rows may be strided):\n"
        "pixels [y, y + H) × [x, x + W) of the image. `tables`: a JPEGTables stream or None; `source`: 0 to\n"
        "read the colour space from the markers, 2 for RGB stored without a colour transform; `scale`: 1, 2, 4\n"
        "or 8, the image decoded at 1/scale by libjpeg's DCT scaling (x, y, H, W in its pixels).");
}

}  // namespace hf
