// augment_cpu.cpp — CPU twin of augment: tiles in parallel; integer transforms are a pure gather
// (byte offsets per output row and column) through a per-channel lookup table; rotated tiles sample
// bilinearly per pixel. Output columns go in blocks so the transposing rotations stay in cache.
#include "augment.h"
#include "cpu.h"

#include <vector>

namespace hf {
namespace {

constexpr int64_t kBlock = 64;  // output columns per block: 64 source rows × one cache line each

template <class OutT>
void augment_tiles(const AugmentArgs& a) {
  const Pixels<const uint8_t>& img = a.region;
  const int64_t t = a.tile;
  OutT* out = static_cast<OutT*>(a.out);
  OutT lut[3][256];  // the integer path's conversions, made by the same function the GPU calls
  for (int ch = 0; ch < 3; ++ch)
    for (int v = 0; v < 256; ++v) lut[ch][v] = convert_value<OutT>(static_cast<float>(v), a.mean[ch], a.std[ch]);

#pragma omp parallel if (a.n > 1) num_threads(team_size(a.threads))  // one tile: a team costs more than it
  {
    std::vector<int64_t> off_y(t), off_x(t);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < a.n; ++i) {
      const TileParams& p = a.params[i];
      if (p.rotate) {
        for (int64_t y = 0; y < t; ++y)
          for (int64_t x = 0; x < t; ++x) {
            int64_t row, col;
            dihedral_source(p.k, p.flip, t, y, x, row, col);
            float rgb[3];
            sample_rotated(img, p, t, row, col, rgb);
            for (int ch = 0; ch < 3; ++ch)
              out[out_index(a.layout, t, i, ch, y, x)] = convert_value<OutT>(rgb[ch], a.mean[ch], a.std[ch]);
          }
        continue;
      }
      // Every dihedral map sends (y, x) to a source whose row depends on one of y, x and whose column
      // on the other, so the source byte offset is off_y[y] + off_x[x].
      const bool transposed = p.k % 2 == 1;
      for (int64_t j = 0; j < t; ++j) {
        int64_t row_of_y, col_of_y, row_of_x, col_of_x;
        dihedral_source(p.k, p.flip, t, j, 0, row_of_y, col_of_y);
        dihedral_source(p.k, p.flip, t, 0, j, row_of_x, col_of_x);
        const int64_t row_off = reflect_index(p.y0 + (transposed ? row_of_x : row_of_y), img.height) * img.row_stride;
        const int64_t col_off = 3 * reflect_index(p.x0 + (transposed ? col_of_y : col_of_x), img.width);
        (transposed ? off_x : off_y)[j] = row_off;
        (transposed ? off_y : off_x)[j] = col_off;
      }
      // Column blocks keep a transposed tile's source columns in cache; other tiles read and write
      // whole rows, which streams better.
      const int64_t block = transposed ? kBlock : t;
      for (int64_t x0 = 0; x0 < t; x0 += block) {
        const int64_t x1 = x0 + block < t ? x0 + block : t;
        for (int64_t y = 0; y < t; ++y) {
          const uint8_t* src = img.data + off_y[y];
          if (a.layout == Layout::NCHW) {
            OutT* o0 = out + out_index(Layout::NCHW, t, i, 0, y, 0);
            OutT* o1 = o0 + t * t;
            OutT* o2 = o1 + t * t;
            for (int64_t x = x0; x < x1; ++x) {
              const uint8_t* px = src + off_x[x];
              o0[x] = lut[0][px[0]];
              o1[x] = lut[1][px[1]];
              o2[x] = lut[2][px[2]];
            }
          } else {
            OutT* o = out + out_index(Layout::NHWC, t, i, 0, y, 0);
            for (int64_t x = x0; x < x1; ++x) {
              const uint8_t* px = src + off_x[x];
              o[3 * x] = lut[0][px[0]];
              o[3 * x + 1] = lut[1][px[1]];
              o[3 * x + 2] = lut[2][px[2]];
            }
          }
        }
      }
    }
  }
}

}  // namespace

void augment_cpu(const AugmentArgs& a) {
  switch (a.out_type) {
    case OutType::U8: augment_tiles<uint8_t>(a); break;
    case OutType::F16: augment_tiles<uint16_t>(a); break;
    case OutType::F32: augment_tiles<float>(a); break;
  }
}

}  // namespace hf
