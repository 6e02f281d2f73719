// decode_jpegs_counting_white_py.cpp — Python binding of the CPU scan's fused loop (host only, built with
// libjpeg only): each JPEG tile of a list decoded strictly (jpeg_decode_cpu) into a scratch tile and its white
// pixels added to the cell counts (white_counts_cpu) while it is in cache, the whole list with the GIL released.
#include <string>
#include <vector>

#include "bindings.h"

namespace py = pybind11;

namespace hf {
namespace {

// places: int64 (n, 4) of the tiles' (x, y, w, h), view pixels; (w, h) of the scratch tile are decoded and counted.
void decode_jpegs_counting_white(py::list datas, py::object tables, int source, py::object scratch_obj,
                                 HostArray<int64_t> places, py::array counts, int64_t cell, std::array<int, 3> lower,
                                 std::array<int, 3> upper, int scale) {
  const JpegInput input(tables, source, scale);
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

void bind_decode_jpegs_counting_white(py::module_& m) {
  using namespace pybind11::literals;
  m.def("decode_jpegs_counting_white", &decode_jpegs_counting_white, "datas"_a, "tables"_a, "source"_a, "scratch"_a,
        "places"_a, "counts"_a, "cell"_a, "lower"_a, "upper"_a, "scale"_a = 1,
        "Decode each JPEG of `datas` strictly (at 1/scale, as jpeg_decode) into `scratch` and add its white pixels,\n"
        "at places[i] = (x, y, w, h) of the view, to the int64 cell `counts` (as white_counts); one call, the GIL\n"
        "released throughout.");
}

}  // namespace hf
