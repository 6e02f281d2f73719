// jpeg_decode_cpu.cpp — strict libjpeg-turbo decoding of one tile into a pitched destination.
//
// libjpeg reports errors by calling error_exit, which must not return: the standard setjmp/longjmp
// pattern is used, so the function that calls setjmp keeps only trivially destructible locals, and
// the message is copied out before the C++ exception is thrown outside it.
#include "jpeg_decode.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <vector>

#include <jpeglib.h>

namespace hf {
namespace {

struct StrictErrors {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void on_error(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<StrictErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// Level -1 is a warning (corrupt data that libjpeg would paper over): an error here. Trace
// messages (level >= 0) are ignored.
void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) on_error(cinfo);
}

// Decodes into `out` or returns false with errors->message set. Only POD locals: see the top comment.
bool decode(const JpegDecodeArgs& a, jpeg_decompress_struct* cinfo, StrictErrors* errors, uint8_t* scratch,
            size_t scratch_size) {
  if (setjmp(errors->jump)) return false;
  jpeg_create_decompress(cinfo);
  if (a.tables != nullptr && a.tables_size > 0) {  // the tables-only stream first, then the tile
    jpeg_mem_src(cinfo, a.tables, static_cast<unsigned long>(a.tables_size));
    jpeg_read_header(cinfo, FALSE);
  }
  jpeg_mem_src(cinfo, a.data, static_cast<unsigned long>(a.size));
  if (jpeg_read_header(cinfo, TRUE) != JPEG_HEADER_OK) {
    std::snprintf(errors->message, sizeof errors->message, "no image in the JPEG data");
    return false;
  }
  if (cinfo->num_components != 3) {
    std::snprintf(errors->message, sizeof errors->message, "%d components, expected 3", cinfo->num_components);
    return false;
  }
  if (a.source == JpegSource::Rgb) cinfo->jpeg_color_space = JCS_RGB;
  cinfo->out_color_space = JCS_RGB;
  cinfo->scale_num = 1;  // 1/1 (libjpeg's default) or the reduced inverse DCT of 1/2, 1/4, 1/8
  cinfo->scale_denom = static_cast<unsigned int>(a.scale);
  jpeg_start_decompress(cinfo);
  const int64_t width = cinfo->output_width, height = cinfo->output_height;
  if (cinfo->output_components != 3 || a.x + a.out.width > width || a.y + a.out.height > height) {
    char at[32] = "";
    if (a.scale != 1) std::snprintf(at, sizeof at, " at 1/%d", a.scale);
    std::snprintf(errors->message, sizeof errors->message,
                  "decoded %lld×%lld pixels%s, the tile needs %lld×%lld", static_cast<long long>(width),
                  static_cast<long long>(height), at, static_cast<long long>(a.x + a.out.width),
                  static_cast<long long>(a.y + a.out.height));
    jpeg_abort_decompress(cinfo);
    return false;
  }
  if (static_cast<size_t>(3 * width) > scratch_size) {
    std::snprintf(errors->message, sizeof errors->message, "tile %lld pixels wide", static_cast<long long>(width));
    jpeg_abort_decompress(cinfo);
    return false;
  }
  // Whole rows decode straight into the destination; others through one scratch row.
  const bool direct = a.x == 0 && a.out.width == width;
  const int64_t last = a.y + a.out.height;  // rows below are decoded (to check the data) and dropped
  while (cinfo->output_scanline < height) {
    const int64_t row = cinfo->output_scanline;
    const bool wanted = row >= a.y && row < last;
    JSAMPROW target = wanted && direct ? a.out.data + (row - a.y) * a.out.row_stride : scratch;
    jpeg_read_scanlines(cinfo, &target, 1);
    if (wanted && !direct) std::memcpy(a.out.data + (row - a.y) * a.out.row_stride, scratch + 3 * a.x, 3 * a.out.width);
  }
  // Read on to the EOI marker: corrupt entropy data that resynchronised often ends early, and libjpeg
  // then warns of "extraneous bytes before marker 0xd9". OpenSlide never reads this far (the one place
  // where histofast is stricter): a valid encoder leaves nothing there.
  jpeg_finish_decompress(cinfo);
  return true;
}

}  // namespace

#define HF_TEXT(x) #x
#define HF_VERSION_TEXT(x) HF_TEXT(x)

std::string jpeg_library() {
#ifdef LIBJPEG_TURBO_VERSION
  return "libjpeg-turbo " HF_VERSION_TEXT(LIBJPEG_TURBO_VERSION);
#else
  return "libjpeg " + std::to_string(JPEG_LIB_VERSION);
#endif
}

void jpeg_decode_cpu(const JpegDecodeArgs& a) {
  jpeg_decompress_struct cinfo;
  std::memset(&cinfo, 0, sizeof cinfo);  // destroying a struct that create never reached is then a no-op
  StrictErrors errors;
  cinfo.err = jpeg_std_error(&errors.mgr);
  errors.mgr.error_exit = on_error;
  errors.mgr.emit_message = on_message;
  errors.message[0] = '\0';
  thread_local std::vector<uint8_t> scratch(3 * 65536);
  const bool ok = decode(a, &cinfo, &errors, scratch.data(), scratch.size());
  jpeg_destroy_decompress(&cinfo);
  if (!ok) throw ArgumentError(std::string("libjpeg: ") + errors.message);
}

}  // namespace hf
