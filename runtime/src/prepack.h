// Weights in their on-disk form (the op inputs) -> the kernels' packed layout (kernel.h).
#pragma once

#include <cstdint>
#include <string>

#include "kernel.h"

namespace qpasses {

// B uint8 [N, ceil(K/32), 16]; E uint8 [N, ceil(K/32)] E8M0 codes (255 is rejected).
// Weight = e2m1(code) * 2^(E-127) = (2*e2m1(code)) * 2^(E-128): lut_u = 2*e2m1 + 12, scale 2^(E-128).
PackedWeights pack_mxfp4(int64_t K, int64_t N, const uint8_t* B, const uint8_t* E);

// B uint8 [N, ceil(K/bs), ceil(bs/2)] as com.microsoft.MatMulNBits (bits 4), scales float [N, ceil(K/bs)],
// zero_points uint8 [N, ceil(ceil(K/bs)/2)] packed nibbles or null (= 8). Weight = scale * (code - zp).
// bs = 16 packs each 16-block into its own zero-padded 32-block ("split16", so nb = ceil(K/16));
// the activations must then be laid out the same way (see activations.h).
PackedWeights pack_int4(int64_t K, int64_t N, int64_t block_size, const uint8_t* B, const float* scales,
                        const uint8_t* zero_points);

// An error message if a weight input cannot be packed (e.g. an E8M0 code 255), else "".
std::string check_e8m0(const uint8_t* E, int64_t count);

}  // namespace qpasses
