// The contract between the ORT glue (ops.cc) and the per-ISA matmul kernels.
//
// Every kernel works on K in blocks of 32 and on output columns in tiles of 16.
// Weights are prepacked once (prepack.cc) into one layout that all ISAs read:
//
//   codes  [ntiles][nb][4 quads][16 columns][4 bytes]   256 bytes per (tile, block)
//          byte j of column c in quad L: low nibble = code of element 4L+j of the block,
//                                        high nibble = code of element 16+4L+j.
//          So one 64-byte load holds 4 consecutive weights of 16 columns (low nibbles) and
//          4 more (high nibbles): a u8 x s8 dot over 4 bytes per 32-bit lane (vpdpbusd) gives
//          one partial sum per column with no horizontal reduction.
//   scale  [ntiles][nb][16] float   weight = scale * (lut_u[code] - offset)
//   zshift [ntiles][nb][16] int8    (INT4 with zero points only) offset = base_offset + zshift
//
// Identity used by the integer kernels (act codes q, act block scale sa, qsum = sum q):
//   sum_k w[k] a[k] = sum_b scale_b * sa_b * (sum_j lut_u[c_j] q_j - offset_b * qsum_b)
// and by the float kernels (a = the float activations, asum_b = sum of a over block b):
//   sum_k w[k] a[k] = sum_b scale_b * (sum_j lut_f[c_j] a_j - zshift_b * asum_b)
// with lut_f[c] = lut_u[c] - base_offset. Padding (K % 32, N % 16) holds code 0 against
// activation 0, and scale 0 in padded columns, so it contributes nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qpasses {

constexpr int kBlock = 32;
constexpr int kTile = 16;
constexpr int kTileBytes = kBlock / 2 * kTile;  // 256

// A float/byte buffer aligned to 64 bytes (zmm loads); size in elements.
template <typename T>
struct Aligned {
  T* data = nullptr;
  size_t size = 0;
  Aligned() = default;
  explicit Aligned(size_t n);
  Aligned(Aligned&& o) noexcept : data(o.data), size(o.size) { o.data = nullptr; o.size = 0; }
  Aligned& operator=(Aligned&& o) noexcept;
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  ~Aligned();
};

struct PackedWeights {
  int64_t K = 0, N = 0, nb = 0, ntiles = 0;
  Aligned<uint8_t> codes;   // ntiles * nb * 256
  Aligned<float> scale;     // ntiles * nb * 16
  Aligned<int8_t> zshift;   // empty, or ntiles * nb * 16
  uint8_t lut_u[16] = {};   // integer weight value + base_offset, in 0..24 (u8 operand of u8 x s8 dots;
                            // the AVX2 path sums two products in int16, so it must stay <= 63)
  float lut_f[16] = {};     // lut_u - base_offset
  int base_offset = 0;      // 12 for MXFP4 (lut_u = 2*e2m1 + 12), 8 for INT4 (lut_u = code)
};

// Activations of a group of rows, ready for the kernels (prepared by activations.cc).
// For row m, block b: q[m*K32 + 32b + j] int8 codes, sa[m*nb + b] scale, qsum[m*nb + b] = sum of the
// 32 codes; float path: a[m*K32 + k] (rotated, zero padded), asum[m*nb + b].
struct ActRows {
  int64_t M = 0, nb = 0, K32 = 0;  // K32 = nb * 32
  std::vector<int8_t> q;
  std::vector<float> sa;
  std::vector<int32_t> qsum;
  std::vector<float> a;
  std::vector<float> asum;
};

// Y[m, 16*t + c] for m in [m0, m1), t in [t0, t1); y points at row 0, column 0; ldy = row stride.
// Columns past N are not written. Kernels overwrite Y (the epilogue adds bias and low rank after).
using GemmFn = void (*)(const PackedWeights& w, const ActRows& a, int64_t m0, int64_t m1,
                        int64_t t0, int64_t t1, float* y, int64_t ldy);

// y[n] += bias[n] (if bias) + sum_r t[r] * R[r * ldr + n] (if rank > 0), n in [n0, n1). R is float32,
// or IEEE fp16 bits (epilogue_f16: converted exactly, so a token streams half the bytes). Each column
// sums over r in order, whatever its position, so an op fused along N computes every column as the
// unfused op does; split = true lets a SIMD path sum a long r loop in 4 partial sums instead (for
// t = x, R = L: x L has few columns and K terms, one FMA latency per term otherwise).
template <typename T>  // T: float, or uint16_t for fp16 bits
using EpilogueOf = void (*)(float* y, const float* bias, const float* t, const T* R, int64_t rank, int64_t ldr,
                            int64_t n0, int64_t n1, bool split);
using EpilogueFn = EpilogueOf<float>;
using EpilogueF16Fn = EpilogueOf<uint16_t>;

// IEEE binary16 bits -> float32, exact (subnormals, infinities and NaNs included).
inline float half_to_float(uint16_t h) {
  const uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, normalized
    float f = float(man) * 5.9604644775390625e-8f;
    __builtin_memcpy(&bits, &f, 4);
  } else {
    bits = (exp == 31 ? 0x7F800000u : (exp + 112) << 23) | (man << 13);
  }
  bits |= uint32_t(h & 0x8000) << 16;
  float out;
  __builtin_memcpy(&out, &bits, 4);
  return out;
}

// Activation quantization steps (activations.cc composes them). Each is exact elementwise float32
// arithmetic, so every ISA returns the scalar bits:
//   abs_max:   max_i |x[i]|
//   quant_int: q[i] = clamp(rint(x[i] * inv), -qmax - 1, qmax)
//   quant_mx:  q[i] = 2 * sign(x[i]) * E2M1_round(|x[i]| * inv)   (inv = 1/X, a power of two)
using AbsMaxFn = float (*)(const float* x, int64_t n);
using QuantIntFn = void (*)(const float* x, int64_t n, float inv, float qmax, int8_t* q);
using QuantMxFn = void (*)(const float* x, int64_t n, float inv, int8_t* q);

struct Isa {
  const char* name;
  GemmFn gemm_int;    // integer activations (act_bits 8 or 4)
  GemmFn gemm_float;  // float activations (act_bits 0)
  EpilogueFn epilogue;
  EpilogueF16Fn epilogue_f16;
  AbsMaxFn abs_max;
  QuantIntFn quant_int;
  QuantMxFn quant_mx;
};

// One per ISA translation unit; avx2/avx512 return nullptr when compiled without support.
const Isa* isa_scalar();
const Isa* isa_avx2();
const Isa* isa_avx512();

// The ISA to use: $QPASSES_ISA (scalar|avx2|avx512) if set, else the best the CPU supports.
// Sets error (and returns nullptr) for an unknown name or one the CPU cannot run.
const Isa* select_isa(std::string* error);

}  // namespace qpasses
