// Reading and checking op inputs (ORT values) into what the kernels use.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernel.h"

#define QPASSES_STR2(x) #x
#define QPASSES_STR(x) QPASSES_STR2(x)

namespace qpasses {

// A bad input or attribute; the message becomes the ORT status text (after the node's name).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct WeightSpec {
  bool mxfp4 = true;
  int64_t K = 0, N = 0, block_size = 32;
};

struct WeightInputs {
  Ort::ConstValue B{nullptr}, S{nullptr}, zp{nullptr};  // S: E (MXFP4) or scales (INT4)
};

// Check shapes and dtypes against the spec (naming the offending input) and pack.
PackedWeights pack_weights(const WeightSpec& spec, const WeightInputs& in);

// R is packed in panels of kPanel columns, [ceil(N / kPanel)][rank][kPanel] (zero padded), so the
// epilogue of a column range streams one contiguous block per panel instead of rank strided rows.
constexpr int64_t kPanel = 64;

// The low-rank branch: T = x L (rank values per row), then Y += T R; L [K, rank] as given, R packed
// (kPanel), both in the type they came in: float32, or fp16 bits (L16, R16; half the bytes a decoded
// token streams).
struct LowRank {
  int64_t K = 0, N = 0, rank = 0;
  std::vector<float> L, R;
  std::vector<uint16_t> L16, R16;
};

// L [K, r] and R [r, N], both float32 or both float16.
LowRank make_lowrank(int64_t K, int64_t N, const Ort::ConstValue& L, const Ort::ConstValue& R);

// A's shape, checked: float32, rank >= 1, last dim K.
std::vector<int64_t> checked_input_shape(const Ort::ConstValue& A, int64_t K);
int64_t count_rows(const std::vector<int64_t>& shape);

// A float32 vector input of exactly n values (bias, D).
const float* vector_input(const Ort::ConstValue& v, int64_t n, const char* name);

}  // namespace qpasses
