// rgb_to_hsv_cpu.cpp — CPU twin of rgb_to_hsv: OpenCV's table-driven integer maths, rows in parallel.
#include "rgb_to_hsv.h"

#include "hsv.h"

namespace hf {

void rgb_to_hsv_cpu(Pixels<const uint8_t> rgb, Pixels<uint8_t> hsv) {
  static const HsvTables tables = make_hsv_tables();
#pragma omp parallel for schedule(static)
  for (int64_t y = 0; y < rgb.height; ++y) {
    const uint8_t* src = rgb.data + y * rgb.row_stride;
    uint8_t* dst = hsv.data + y * hsv.row_stride;
    for (int64_t x = 0; x < rgb.width; ++x, src += 3, dst += 3) {
      const Hsv p = rgb_to_hsv_px(src[0], src[1], src[2], tables.sdiv, tables.hdiv);
      dst[0] = static_cast<uint8_t>(p.h);
      dst[1] = static_cast<uint8_t>(p.s);
      dst[2] = static_cast<uint8_t>(p.v);
    }
  }
}

}  // namespace hf
