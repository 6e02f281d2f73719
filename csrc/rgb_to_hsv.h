// rgb_to_hsv.h — op: uint8 H×W×3 RGB → uint8 H×W×3 HSV in OpenCV's 8-bit convention.
#pragma once
#include "array.h"

namespace hf {

void rgb_to_hsv_cpu(Pixels<const uint8_t> rgb, Pixels<uint8_t> hsv);
void rgb_to_hsv_cuda(Pixels<const uint8_t> rgb, Pixels<uint8_t> hsv, StreamHandle stream);

}  // namespace hf
