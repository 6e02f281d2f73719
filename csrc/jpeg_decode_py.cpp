// jpeg_decode_py.cpp — Python binding of jpeg_decode: the buffer and destination checks, then the
// strict decoder with the GIL released (the slide's thread pool decodes tiles in parallel).
#include <string>
#include <vector>

#include "jpeg_decode.h"
#include "py_array.h"
#include "white_ratio.h"

namespace py = pybind11;

namespace hf {

// white_counts' argument checks, defined in white_ratio_py.cpp: the fused loop below counts as it does.
WhiteCountsArgs white_counts_args(const View& part, py::array counts, int64_t x, int64_t y, int64_t cell,
                                  const std::array<int, 3>& lower, const std::array<int, 3>& upper);

namespace {

// The bytes and colour source both bindings share, checked once: the tables stream is empty for None.
struct JpegInput {
  py::buffer_info tables;
  JpegSource source;

  JpegInput(const py::object& tables_obj, int source_value) {
    if (source_value != static_cast<int>(JpegSource::Header) && source_value != static_cast<int>(JpegSource::Rgb))
      throw ArgumentError("source=" + std::to_string(source_value) + ": expected 0 (as the markers say) or 2 (RGB)");
    source = static_cast<JpegSource>(source_value);
    if (!tables_obj.is_none()) tables = tables_obj.cast<py::buffer>().request();
  }

  JpegDecodeArgs args(const py::buffer_info& data, Pixels<uint8_t> out, int64_t x, int64_t y) const {
    return {static_cast<const uint8_t*>(data.ptr), static_cast<size_t>(data.size * data.itemsize),
            static_cast<const uint8_t*>(tables.ptr), static_cast<size_t>(tables.size * tables.itemsize), source, out,
            x, y};
  }
};

void jpeg_decode(py::buffer data, py::object tables, int source, py::object out_obj, int64_t x, int64_t y) {
  const JpegInput input(tables, source);
  if (x < 0 || y < 0) throw ArgumentError("x, y: must be >= 0");
  const py::buffer_info bytes = data.request();
  const View out_view = view_of(out_obj, "out", true);
  if (out_view.device != -1) throw ArgumentError("out: must be in host memory, got " + device_name(out_view.device));
  const JpegDecodeArgs a = input.args(bytes, image_of<uint8_t>(out_view, "out"), x, y);
  py::gil_scoped_release nogil;
  jpeg_decode_cpu(a);
}

// The scan's fused loop: each tile decoded into `scratch` and its white pixels counted while in cache,
// the whole list with the GIL released once. places: int64 (n, 4) of the tiles' (x, y, w, h), view pixels.
void jpeg_count_white(py::list datas, py::object tables, int source, py::object scratch_obj, HostArray<int64_t> places,
                      py::array counts, int64_t cell, std::array<int, 3> lower, std::array<int, 3> upper) {
  const JpegInput input(tables, source);
  const int64_t n = static_cast<int64_t>(datas.size());
  require_shape(places, "places", {n, 4});
  const View scratch_view = view_of(scratch_obj, "scratch", true);
  if (scratch_view.device != -1) throw ArgumentError("scratch: must be in host memory");
  const Pixels<uint8_t> scratch = image_of<uint8_t>(scratch_view, "scratch");
  std::vector<py::buffer_info> bytes;
  bytes.reserve(n);
  for (const py::handle d : datas) bytes.push_back(d.cast<py::buffer>().request());
  WhiteCountsArgs count = white_counts_args(scratch_view, counts, 0, 0, cell, lower, upper);
  const auto p = places.unchecked<2>();
  for (int64_t i = 0; i < n; ++i)
    if (p(i, 2) < 1 || p(i, 3) < 1 || p(i, 2) > scratch.width || p(i, 3) > scratch.height || p(i, 0) < 0 || p(i, 1) < 0)
      throw ArgumentError("places[" + std::to_string(i) + "]: (w, h) must fit the scratch tile, (x, y) >= 0");
  py::gil_scoped_release nogil;
  for (int64_t i = 0; i < n; ++i) {
    const Pixels<uint8_t> part{scratch.data, p(i, 3), p(i, 2), scratch.row_stride, -1};
    jpeg_decode_cpu(input.args(bytes[i], part, 0, 0));
    count.part = {part.data, part.height, part.width, part.row_stride, -1};
    count.x = p(i, 0);
    count.y = p(i, 1);
    white_counts_cpu(count);
  }
}

}  // namespace

void bind_jpeg_decode(py::module_& m) {
  using namespace pybind11::literals;
  m.def("jpeg_decode", &jpeg_decode, "data"_a, "tables"_a, "source"_a, "out"_a, "x"_a = 0, "y"_a = 0,
        "Decode a JPEG strictly (any libjpeg warning raises) into `out` (H, W, 3 uint8, rows may be strided):\n"
        "pixels [y, y + H) × [x, x + W) of the image. `tables`: a JPEGTables stream or None; `source`: 0 to\n"
        "read the colour space from the markers, 2 for RGB stored without a colour transform.");
  m.def("jpeg_count_white", &jpeg_count_white, "datas"_a, "tables"_a, "source"_a, "scratch"_a, "places"_a,
        "counts"_a, "cell"_a, "lower"_a, "upper"_a,
        "Decode each JPEG of `datas` strictly into `scratch` and add its white pixels, at places[i] = (x, y, w, h)\n"
        "of the view, to the int64 cell `counts` (as white_counts); one call, the GIL released throughout.");
}

}  // namespace hf
