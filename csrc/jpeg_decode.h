// jpeg_decode.h — strict baseline/progressive JPEG decoding (libjpeg-turbo) of one stored slide tile
// straight into a part of a larger image with its own row pitch (a band of the level), at full size or at
// 1/2, 1/4 or 1/8 by libjpeg's DCT scaling (scale_num / scale_denom: a reduced inverse DCT per 8×8 block; every
// coefficient is still Huffman-decoded, so it saves the inverse DCT, upsampling and colour conversion only:
// 1.1–1.8× a full decode, about 10× a full decode and histofast's resampling; benchmarks/dct_scaled.py).
//
// Strict as OpenSlide's decoder (openslide-decode-jpeg.c): every libjpeg warning ("Corrupt JPEG data:
// premature end of data segment", a bad Huffman code, ...) is an error. Stricter in one place: the data
// are read on to the EOI marker, so entropy data that ends early ("extraneous bytes before marker") is an
// error too (OpenSlide stops after the last scanline). Corruption that decodes without any warning still
// gives garbage: no decoder can tell it. Host memory only: decoding on a GPU is nvImageCodec's job (histofast.io).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "array.h"

namespace hf {

// How the stored samples are to be read, as tifffile's jpeg_decode_colorspace decides per TIFF page.
enum class JpegSource : int {
  Header = 0,  // as the JPEG markers say (JFIF / Adobe); 3 components default to YCbCr
  Rgb = 2,     // stored as RGB without a colour transform (Aperio's RGB JPEG tiles)
};

struct JpegDecodeArgs {
  const uint8_t* data;  // the tile's JPEG bytes
  size_t size;
  const uint8_t* tables;  // the page's JPEGTables (abbreviated table stream) or nullptr
  size_t tables_size;
  JpegSource source;
  Pixels<uint8_t> out;  // written: out.height × out.width RGB pixels
  int64_t x, y;         // ... taken from the decoded tile from pixel (x, y)
  int scale;            // decoded at 1/scale (1, 2, 4 or 8): a W × H tile gives ceil(W/scale) × ceil(H/scale)
                        // pixels (jpeg_calc_output_dimensions); out, x and y are in those pixels
};

// Raises ArgumentError naming libjpeg's message when the data are corrupt or not an 8-bit
// 3-component JPEG at least (y + out.height) × (x + out.width) pixels large once decoded at 1/scale.
void jpeg_decode_cpu(const JpegDecodeArgs& args);

// The libjpeg this was compiled against, e.g. "libjpeg-turbo 2.1.5" (for build_info()).
std::string jpeg_library();

}  // namespace hf
