#include "activations.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qpasses {
namespace {

// floor(log2 |amax|) - 2 clamped to [-127, 127], read from the float bits (the MXFP4 floor rule).
inline int mx_exponent(float amax) {
  uint32_t bits;
  std::memcpy(&bits, &amax, 4);
  const int e = int((bits >> 23) & 0xFF) - 127 - 2;
  return std::min(127, std::max(-127, e));
}

inline float pow2(int e) { return std::ldexp(1.0f, e); }

// Codes and scale of one activation block x[0:n] (the rest of q stays 0).
void quantize_block(const Isa& isa, ActFormat format, const float* x, int64_t n, int8_t* q, float* scale) {
  const float amax = isa.abs_max(x, n);
  if (format == ActFormat::kMXFP4) {
    const int e = mx_exponent(amax);
    isa.quant_mx(x, n, pow2(-e), q);
    *scale = pow2(e) * 0.5f;  // q holds twice the E2M1 value
    return;
  }
  const float qmax = format == ActFormat::kInt8 ? 127.f : 7.f;
  isa.quant_int(x, n, amax > 0 ? qmax / amax : 0.f, qmax, q);
  *scale = amax / qmax;
}

}  // namespace

void rotate_row(float* x, int64_t K, const float* d, int64_t hadamard) {
  if (d)
    for (int64_t k = 0; k < K; ++k) x[k] *= d[k];
  if (hadamard <= 1) return;
  const float norm = float(1.0 / std::sqrt(double(hadamard)));
  for (int64_t base = 0; base < K; base += hadamard) {
    float* v = x + base;
    for (int64_t h = 1; h < hadamard; h *= 2)
      for (int64_t i = 0; i < hadamard; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const float a = v[j], b = v[j + h];
          v[j] = a + b;
          v[j + h] = a - b;
        }
    for (int64_t j = 0; j < hadamard; ++j) v[j] *= norm;
  }
}

void shape_rows(ActRows& rows, int64_t M, int64_t nb, ActFormat format) {
  rows.M = M;
  rows.nb = nb;
  rows.K32 = nb * kBlock;
  const size_t n = size_t(M * rows.K32), blocks = size_t(M * nb);
  if (format == ActFormat::kFloat) {
    rows.a.assign(n, 0.f);
    rows.asum.assign(blocks, 0.f);
  } else {
    rows.q.assign(n, 0);
    rows.sa.assign(blocks, 0.f);
    rows.qsum.assign(blocks, 0);
  }
}

void quantize_row(const Isa& isa, const ActConfig& cfg, const float* x, ActRows& rows, int64_t m) {
  const int64_t K = cfg.K, nb = rows.nb, slot = cfg.split ? cfg.split : kBlock;
  // Slot b of the packed layout holds x[b*slot, b*slot + slot) (slot = 32, or the short INT4 block).
  if (cfg.format == ActFormat::kFloat) {
    float* a = rows.a.data() + m * rows.K32;
    float* asum = rows.asum.data() + m * nb;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t n = std::min(slot, K - b * slot);
      float s = 0.f;
      for (int64_t i = 0; i < n; ++i) s += (a[b * kBlock + i] = x[b * slot + i]);
      asum[b] = s;
    }
    return;
  }
  // Quantization blocks: 32 values (or the whole row); codes land in the row's own staging buffer.
  thread_local std::vector<int8_t> codes;
  thread_local std::vector<float> scales;
  const int64_t qblock = cfg.per_token ? K : kBlock, nq = (K + qblock - 1) / qblock;
  codes.assign(size_t(nq * qblock), 0);
  scales.assign(size_t(nq), 0.f);
  for (int64_t g = 0; g < nq; ++g) {
    const int64_t n = std::min(qblock, K - g * qblock);
    quantize_block(isa, cfg.format, x + g * qblock, n, codes.data() + g * qblock, scales.data() + g);
  }
  int8_t* q = rows.q.data() + m * rows.K32;
  float* sa = rows.sa.data() + m * nb;
  int32_t* qsum = rows.qsum.data() + m * nb;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t n = std::min(slot, K - b * slot);
    int32_t s = 0;
    for (int64_t i = 0; i < n; ++i) s += (q[b * kBlock + i] = codes[size_t(b * slot + i)]);
    qsum[b] = s;
    sa[b] = scales[size_t(b * slot / qblock)];
  }
}

}  // namespace qpasses
