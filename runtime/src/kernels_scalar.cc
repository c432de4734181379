// Portable reference kernels: the semantics every SIMD path must reproduce (see kernel.h).
#include <algorithm>
#include <cmath>

#include "kernel.h"

namespace qpasses {
namespace {

// Unpack the code of element e (0..31) of column c from a 256-byte (tile, block) record.
inline int code_at(const uint8_t* rec, int c, int e) {
  const int half = e >> 4, quad = (e & 15) >> 2, j = e & 3;
  const uint8_t byte = rec[quad * 64 + c * 4 + j];
  return half ? byte >> 4 : byte & 15;
}

void gemm_int(const PackedWeights& w, const ActRows& a, int64_t m0, int64_t m1, int64_t t0, int64_t t1,
              float* y, int64_t ldy) {
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* q = a.q.data() + m * a.K32;
    const float* sa = a.sa.data() + m * a.nb;
    const int32_t* qsum = a.qsum.data() + m * a.nb;
    for (int64_t t = t0; t < t1; ++t) {
      float acc[kTile] = {};
      for (int64_t b = 0; b < w.nb; ++b) {
        const int64_t rb = t * w.nb + b;
        const uint8_t* rec = w.codes.data + rb * kTileBytes;
        for (int c = 0; c < kTile; ++c) {
          int32_t isum = 0;
          for (int e = 0; e < kBlock; ++e) isum += int32_t(w.lut_u[code_at(rec, c, e)]) * q[b * kBlock + e];
          const int offset = w.base_offset + (w.zshift.size ? w.zshift.data[rb * kTile + c] : 0);
          isum -= offset * qsum[b];
          acc[c] += w.scale.data[rb * kTile + c] * sa[b] * float(isum);
        }
      }
      for (int c = 0; c < kTile && t * kTile + c < w.N; ++c) y[m * ldy + t * kTile + c] = acc[c];
    }
  }
}

void gemm_float(const PackedWeights& w, const ActRows& a, int64_t m0, int64_t m1, int64_t t0, int64_t t1,
                float* y, int64_t ldy) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* x = a.a.data() + m * a.K32;
    const float* asum = a.asum.data() + m * a.nb;
    for (int64_t t = t0; t < t1; ++t) {
      float acc[kTile] = {};
      for (int64_t b = 0; b < w.nb; ++b) {
        const int64_t rb = t * w.nb + b;
        const uint8_t* rec = w.codes.data + rb * kTileBytes;
        for (int c = 0; c < kTile; ++c) {
          float s = 0.f;
          for (int e = 0; e < kBlock; ++e) s += w.lut_f[code_at(rec, c, e)] * x[b * kBlock + e];
          if (w.zshift.size) s -= float(w.zshift.data[rb * kTile + c]) * asum[b];
          acc[c] += w.scale.data[rb * kTile + c] * s;
        }
      }
      for (int c = 0; c < kTile && t * kTile + c < w.N; ++c) y[m * ldy + t * kTile + c] = acc[c];
    }
  }
}

inline float value(float r) { return r; }
inline float value(uint16_t r) { return half_to_float(r); }

template <typename T>
void epilogue_t(float* y, const float* bias, const float* t, const T* R, int64_t rank, int64_t ldr, int64_t n0,
                int64_t n1, bool /*split: the reference sums in order*/) {
  for (int64_t n = n0; n < n1; ++n) {
    float s = bias ? bias[n] : 0.f;
    for (int64_t r = 0; r < rank; ++r) s += t[r] * value(R[r * ldr + n]);
    y[n] += s;
  }
}

float abs_max(const float* x, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

void quant_int(const float* x, int64_t n, float inv, float qmax, int8_t* q) {
  for (int64_t i = 0; i < n; ++i) q[i] = int8_t(std::min(qmax, std::max(-qmax - 1.f, std::nearbyint(x[i] * inv))));
}

void quant_mx(const float* x, int64_t n, float inv, int8_t* q) {
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]) * inv;
    const float step = a < 2.f ? 0.5f : (a < 4.f ? 1.f : 2.f);  // E2M1 spacing: round half to even, saturate at 6
    const float m = std::min(std::nearbyint(a * (1.f / step)) * step, 6.f);
    q[i] = int8_t((x[i] < 0 ? -2.f : 2.f) * m);  // 2 * E2M1 value, exact in int8
  }
}

const Isa kScalar = {"scalar", gemm_int, gemm_float, epilogue_t<float>, epilogue_t<uint16_t>, abs_max, quant_int,
                     quant_mx};

}  // namespace

const Isa* isa_scalar() { return &kScalar; }

}  // namespace qpasses
