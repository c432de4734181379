// Float activation rows -> what the kernels read (ActRows): optional random signs and block
// Hadamard rotation, then the integer codes and scales of the activation format, or the padded
// float rows for the float path. Every step is one correctly rounded float32 operation in a fixed
// order, so the numpy reference (qpasses.runtime.reference) reproduces codes and scales bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "kernel.h"

namespace qpasses {

enum class ActFormat { kFloat, kInt8, kInt4, kMXFP4 };

struct ActConfig {
  int64_t K = 0;
  ActFormat format = ActFormat::kFloat;
  bool per_token = false;   // one scale per row (act_block 0) instead of per 32-block
  int64_t hadamard = 0;     // 0 or a power of two dividing K
  int64_t split = 0;        // weight blocks shorter than 32 (INT4 block 16): each gets its own 32-slot
};

// x <- (x * d) then blockdiag(H_b / sqrt(b)) for b = hadamard (Sylvester order; butterflies with
// stride 1, 2, 4, ..., then one multiply by float(1/sqrt(b))). d may be null.
void rotate_row(float* x, int64_t K, const float* d, int64_t hadamard);

// Allocate `rows` for M rows of K in the layout the packed weights expect (nb blocks of 32).
void shape_rows(ActRows& rows, int64_t M, int64_t nb, ActFormat format);

// Fill row m of `rows` from the rotated float row x (K values), with isa's quantization steps.
void quantize_row(const Isa& isa, const ActConfig& cfg, const float* x, ActRows& rows, int64_t m);

}  // namespace qpasses
