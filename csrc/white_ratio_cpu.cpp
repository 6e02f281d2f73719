// white_ratio_cpu.cpp — CPU twin of white_ratio: a white mask per row (AVX2 when the CPU has it and
// the hue bounds are open, exact scalar HSV otherwise), per-cell counts in parallel strips of rows,
// then each tile in O(1) from the prefix sums of the cells.
#include "white_ratio.h"
#include "cpu.h"

#include <algorithm>
#include <memory>
#include <vector>

namespace hf {
namespace {

const HsvTables& tables() {
  static const HsvTables t = make_hsv_tables();
  return t;
}

// mask[i] = 1 when pixel i's HSV is inside the range; any bounds.
void white_mask_scalar(const uint8_t* px, int64_t n, const HsvRange& range, uint8_t* mask) {
  const HsvTables& t = tables();
  for (int64_t i = 0; i < n; ++i, px += 3) {
    mask[i] = hsv_in_range(rgb_to_hsv_px(px[0], px[1], px[2], t.sdiv, t.hdiv), range);
  }
}

#ifdef HF_HAVE_AVX2_PATH
// With the hue open, the test needs only V = max and D = max - min: at fixed V, S grows with D, so
// S ∈ [s_lo, s_hi] and V ∈ [v_lo, v_hi] ⟺ D ∈ [d_lo[V], d_hi[V]]. An empty interval is (255, 0).
// The 256-entry tables are looked up with pshufb, one 16-entry chunk per high nibble of V that can
// hold a white pixel (4 chunks for the default V ≥ 200).
struct SvTables {
  alignas(16) uint8_t d_lo[256];
  alignas(16) uint8_t d_hi[256];
  int first_chunk, last_chunk;  // chunks outside stay empty
};

SvTables make_sv_tables(const HsvRange& r) {
  SvTables t{};
  t.first_chunk = 16;
  t.last_chunk = -1;
  for (int v = 0; v < 256; ++v) {
    int lo = 255, hi = 0;  // empty
    bool found = false;
    if (v >= r.lo[2] && v <= r.hi[2]) {
      const int32_t sdiv = hsv_sdiv(v);
      for (int d = 0; d <= v; ++d) {
        const int32_t s = hsv_saturation(d, sdiv);
        if (s >= r.lo[1] && s <= r.hi[1]) {
          if (!found) lo = d;
          found = true;
          hi = d;
        }
      }
    }
    if (found) {
      if (t.first_chunk > v / 16) t.first_chunk = v / 16;
      t.last_chunk = v / 16;
    }
    t.d_lo[v] = static_cast<uint8_t>(lo);
    t.d_hi[v] = static_cast<uint8_t>(hi);
  }
  return t;
}

// pshufb masks that gather channel ch of 16 interleaved pixels from the 3 × 16 bytes that hold them.
struct DeinterleaveMasks {
  alignas(32) uint8_t m[3][3][32];  // [channel][part][byte], same for both 128-bit lanes
  DeinterleaveMasks() {
    for (int ch = 0; ch < 3; ++ch)
      for (int part = 0; part < 3; ++part)
        for (int j = 0; j < 32; ++j) {
          const int src = 3 * (j % 16) + ch - 16 * part;
          m[ch][part][j] = src >= 0 && src < 16 ? static_cast<uint8_t>(src) : 0x80;
        }
  }
};

__attribute__((target("avx2"))) inline __m256i load_lanes(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
}

// kCount false: writes mask[i] for i < n rounded down to 32; true: adds the white pixels among them to
// *count instead (no mask written or read back). Returns how many pixels it did.
template <bool kCount>
__attribute__((target("avx2"))) int64_t white_avx2(const uint8_t* px, int64_t n, const SvTables& t, uint8_t* mask,
                                                   int64_t* count) {
  static const DeinterleaveMasks dm;
  __m256i shuf[3][3];
  for (int ch = 0; ch < 3; ++ch)
    for (int part = 0; part < 3; ++part)
      shuf[ch][part] = _mm256_load_si256(reinterpret_cast<const __m256i*>(dm.m[ch][part]));
  __m256i lo_tab[16], hi_tab[16];
  for (int k = t.first_chunk; k <= t.last_chunk; ++k) {
    lo_tab[k] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(t.d_lo + 16 * k)));
    hi_tab[k] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(t.d_hi + 16 * k)));
  }
  const __m256i nibble = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
  __m256i total = _mm256_setzero_si256();  // kCount: white pixels, 4 × 64-bit lanes
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const uint8_t* p = px + 3 * i;  // lane 0: pixels i..i+15, lane 1: pixels i+16..i+31
    const __m256i a = load_lanes(p, p + 48), b = load_lanes(p + 16, p + 64), c = load_lanes(p + 32, p + 80);
    __m256i ch[3];
    for (int k = 0; k < 3; ++k)
      ch[k] = _mm256_or_si256(_mm256_or_si256(_mm256_shuffle_epi8(a, shuf[k][0]), _mm256_shuffle_epi8(b, shuf[k][1])),
                              _mm256_shuffle_epi8(c, shuf[k][2]));
    const __m256i v = _mm256_max_epu8(_mm256_max_epu8(ch[0], ch[1]), ch[2]);
    const __m256i d = _mm256_sub_epi8(v, _mm256_min_epu8(_mm256_min_epu8(ch[0], ch[1]), ch[2]));
    const __m256i v_hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
    const __m256i v_lo = _mm256_and_si256(v, nibble);
    __m256i d_lo = _mm256_set1_epi8(-1), d_hi = _mm256_setzero_si256();
    for (int k = t.first_chunk; k <= t.last_chunk; ++k) {
      const __m256i in_chunk = _mm256_cmpeq_epi8(v_hi, _mm256_set1_epi8(static_cast<char>(k)));
      d_lo = _mm256_blendv_epi8(d_lo, _mm256_shuffle_epi8(lo_tab[k], v_lo), in_chunk);
      d_hi = _mm256_blendv_epi8(d_hi, _mm256_shuffle_epi8(hi_tab[k], v_lo), in_chunk);
    }
    const __m256i ge = _mm256_cmpeq_epi8(_mm256_max_epu8(d, d_lo), d);
    const __m256i le = _mm256_cmpeq_epi8(_mm256_min_epu8(d, d_hi), d);
    const __m256i white = _mm256_and_si256(_mm256_and_si256(ge, le), one);
    if constexpr (kCount) {
      total = _mm256_add_epi64(total, _mm256_sad_epu8(white, _mm256_setzero_si256()));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(mask + i), white);
    }
  }
  if constexpr (kCount) {
    alignas(32) int64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), total);
    *count += lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
  return i;
}
#endif

// The white mask of a row of pixels: AVX2 when the CPU has it and the hue bounds are open.
class RowMask {
 public:
  explicit RowMask(const HsvRange& range) : range_(range) {
    // H of an 8-bit image is always in [0, 179]: bounds that hold it all leave only the S/V test.
#ifdef HF_HAVE_AVX2_PATH
    simd_ = range.lo[0] <= 0 && range.hi[0] >= 179 && cpu_has_avx2();
    if (simd_) sv_ = make_sv_tables(range);
#endif
  }
  void operator()(const uint8_t* row, int64_t n, uint8_t* mask) const {
    int64_t done = 0;
#ifdef HF_HAVE_AVX2_PATH
    if (simd_) done = white_avx2<false>(row, n, sv_, mask, nullptr);
#endif
    white_mask_scalar(row + 3 * done, n - done, range_, mask + done);
  }
  // White pixels among n; `mask` (n bytes) is scratch for the scalar tail.
  int64_t count(const uint8_t* row, int64_t n, uint8_t* mask) const {
    int64_t done = 0, white = 0;
#ifdef HF_HAVE_AVX2_PATH
    if (simd_) done = white_avx2<true>(row, n, sv_, nullptr, &white);
#endif
    white_mask_scalar(row + 3 * done, n - done, range_, mask);
    for (int64_t i = 0; i < n - done; ++i) white += mask[i];
    return white;
  }

 private:
  HsvRange range_;
#ifdef HF_HAVE_AVX2_PATH
  bool simd_ = false;
  SvTables sv_{};
#endif
};

}  // namespace

void white_ratio_cpu(const WhiteRatioArgs& a, float* out) {
  const int threads = team_size(a.threads);
  const CellGrid g = make_cell_grid(a, 4 * threads);
  const int64_t width = g.cells_x * g.cell_w, pitch = g.cells_x + 1;
  std::vector<int64_t> prefix((g.cells_y + 1) * pitch, 0);
  const RowMask row_mask(a.range);

#pragma omp parallel num_threads(threads)
  {
    std::vector<uint8_t> mask(width);
#pragma omp for schedule(static)
    for (int64_t cy = 0; cy < g.cells_y; ++cy) {
      int64_t* counts = prefix.data() + (cy + 1) * pitch + 1;
      for (int64_t y = cy * g.cell_h; y < (cy + 1) * g.cell_h; ++y) {
        row_mask(a.region.data + y * a.region.row_stride, width, mask.data());
        const uint8_t* m = mask.data();
        for (int64_t cx = 0; cx < g.cells_x; ++cx, m += g.cell_w) {
          uint32_t sum = 0;
          for (int64_t x = 0; x < g.cell_w; ++x) sum += m[x];
          counts[cx] += sum;
        }
      }
      for (int64_t cx = 1; cx < g.cells_x; ++cx) counts[cx] += counts[cx - 1];  // row prefix
    }
  }
  for (int64_t cy = 1; cy <= g.cells_y; ++cy) {  // column prefix
    int64_t* row = prefix.data() + cy * pitch;
    const int64_t* above = row - pitch;
    for (int64_t cx = 1; cx < pitch; ++cx) row[cx] += above[cx];
  }
  for (int64_t i = 0; i < g.rows; ++i)
    for (int64_t j = 0; j < g.cols; ++j)
      out[i * g.cols + j] = tile_ratio(prefix.data(), g, a.tile, a.stride, i, j, 0);
}

void white_counts_cpu(const WhiteCountsArgs& a) {
  // This part's pixels lie in cells [cx0, cx1) × [cy0, cy1) of the grid; counted here, then added
  // atomically (parts of one cell are filled by different threads). Pixels past the last whole cell
  // belong to no tile and are not counted.
  const int64_t x_end = std::min(a.x + a.part.width, a.cells_x * a.cell);
  const int64_t y_end = std::min(a.y + a.part.height, a.cells_y * a.cell);
  if (x_end <= a.x || y_end <= a.y) return;
  const int64_t cx0 = a.x / a.cell, cx1 = (x_end - 1) / a.cell + 1;
  thread_local std::vector<uint8_t> mask;
  thread_local std::vector<int64_t> sums;
  mask.resize(x_end - a.x);
  sums.assign(cx1 - cx0, 0);
  // The S/V tables take ~30k steps to build: once per thread and range, not once per decoded tile.
  thread_local HsvRange last{{-1, -1, -1}, {-1, -1, -1}};
  thread_local std::unique_ptr<RowMask> row_mask;
  if (!row_mask || !std::equal(last.lo, last.lo + 3, a.range.lo) || !std::equal(last.hi, last.hi + 3, a.range.hi)) {
    row_mask = std::make_unique<RowMask>(a.range);
    last = a.range;
  }
  int64_t cy = a.y / a.cell;
  const bool wide = a.cell >= 64;  // count each cell's run directly; narrow cells: one mask per row, then sums
  for (int64_t y = a.y; y < y_end; ++y) {
    const uint8_t* row = a.part.data + (y - a.y) * a.part.row_stride;
    if (!wide) (*row_mask)(row, x_end - a.x, mask.data());
    for (int64_t cx = cx0; cx < cx1; ++cx) {
      const int64_t from = std::max(cx * a.cell, a.x) - a.x, to = std::min((cx + 1) * a.cell, x_end) - a.x;
      if (wide) {
        sums[cx - cx0] += row_mask->count(row + 3 * from, to - from, mask.data());
        continue;
      }
      uint32_t sum = 0;
      for (int64_t i = from; i < to; ++i) sum += mask[i];
      sums[cx - cx0] += sum;
    }
    if (y + 1 == y_end || (y + 1) % a.cell == 0) {  // the end of a cell row: flush it
      for (int64_t cx = cx0; cx < cx1; ++cx)
        __atomic_fetch_add(a.counts + cy * a.cells_x + cx, sums[cx - cx0], __ATOMIC_RELAXED);
      sums.assign(cx1 - cx0, 0);
      ++cy;
    }
  }
}

void white_ratio_from_counts_cpu(const CountsRatioArgs& a, float* out) {
  if (a.rows == 0 || a.cols == 0) return;
  // The cell rows these tile rows cover, [first, last); their prefix sums, with a zero first row and column.
  const int64_t first = a.row0 * a.stride / a.cell, last = ((a.row0 + a.rows - 1) * a.stride + a.tile) / a.cell;
  const CellGrid g{a.rows, a.cols, a.cell, a.cell, a.cells_x, last - first};
  const int64_t pitch = a.cells_x + 1;
  std::vector<int64_t> prefix((last - first + 1) * pitch, 0);
  for (int64_t cy = first; cy < last; ++cy) {
    const int64_t* counts = a.counts + cy * a.cells_x;
    int64_t* row = prefix.data() + (cy - first + 1) * pitch;
    const int64_t* above = row - pitch;
    int64_t sum = 0;
    for (int64_t cx = 0; cx < a.cells_x; ++cx) {
      sum += counts[cx];
      row[cx + 1] = above[cx + 1] + sum;
    }
  }
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j)
      out[i * a.cols + j] = tile_ratio(prefix.data(), g, a.tile, a.stride, a.row0 + i, j, first);
}

}  // namespace hf
