// AVX2 + FMA kernels; semantics are those of kernels_scalar.cc (see kernel.h).
//
// A 64-byte quad of a (tile, block) record is read as two 32-byte halves ("units" of 8 columns,
// one ymm lane per column, 4 codes per lane in the low nibbles and 4 in the high nibbles).
// Integer dot: vpmaddubsw (u8 lut_u values x s8 codes) gives int16 pair sums, the low- and
// high-nibble pairs of one quad are added in int16 (<= 2 * 2 * 24 * 128, no overflow), and
// vpmaddwd with ones widens each lane's 4 pairs into its int32 column sum.
// The kernels are templated on R rows (x U units) sharing every loaded and unpacked weight vector.
#include "kernel.h"
#include "kernel_loops.h"

#if defined(__AVX2__) && defined(__FMA__)

#include <immintrin.h>

#include <cstring>

#define QP_UNROLL _Pragma("GCC unroll 16")

namespace qpasses {
namespace {

constexpr int kUnit = 8;  // columns per ymm

// Decode streams the weights from DRAM. A tile's records are contiguous and the next tile follows,
// so fetching a fixed distance ahead (16 records) keeps enough lines in flight.
constexpr int kPrefetch = 16 * kTileBytes;

inline void prefetch_ahead(const uint8_t* rec) {
  QP_UNROLL for (int l = 0; l < 4; ++l)
    _mm_prefetch(reinterpret_cast<const char*>(rec + kPrefetch + 64 * l), _MM_HINT_T0);
}

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 8 zshift values (one unit), as int32.
inline __m256i load_zshift(const int8_t* z) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(z)));
}

// Unit g is half g%2 of tile g/2. Its codes in block b: 32 bytes at this offset in each quad.
inline const uint8_t* unit_codes(const PackedWeights& w, int64_t g, int64_t b) {
  return w.codes.data + ((g >> 1) * w.nb + b) * kTileBytes + (g & 1) * 32;
}

// Index of its first column in the per-(tile, block) scale / zshift arrays.
inline int64_t unit_col(const PackedWeights& w, int64_t g, int64_t b) {
  return ((g >> 1) * w.nb + b) * kTile + (g & 1) * kUnit;
}

// Store the 8 columns of unit g that exist (N need not be a multiple of 16).
inline void store_unit(const PackedWeights& w, int64_t g, float* dst, __m256 v) {
  const int64_t left = w.N - g * kUnit;
  if (left >= kUnit) {
    _mm256_storeu_ps(dst, v);
  } else if (left > 0) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_maskstore_ps(dst, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left)), lane), v);
  }
}

// Rows [m, m+R) x units [g, g+U) of the integer GEMM. Ident: lut_u is the identity (INT4), no lookup.
template <int R, int U, bool Ident>
void int_block(const PackedWeights& w, const ActRows& a, int64_t m, int64_t g, float* y, int64_t ldy) {
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.lut_u)));
  const __m256i base = _mm256_set1_epi32(w.base_offset);
  const bool zs = w.zshift.size != 0;
  const int8_t* q[R];
  const float* sa[R];
  const int32_t* qsum[R];
  QP_UNROLL for (int r = 0; r < R; ++r) {
    q[r] = a.q.data() + (m + r) * a.K32;
    sa[r] = a.sa.data() + (m + r) * a.nb;
    qsum[r] = a.qsum.data() + (m + r) * a.nb;
  }
  __m256 acc[R][U];
  QP_UNROLL for (int r = 0; r < R; ++r)
    QP_UNROLL for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_ps();

  for (int64_t b = 0; b < w.nb; ++b) {
    if (U == 2) prefetch_ahead(unit_codes(w, g, b));  // whole records: the decode stream
    __m256i isum[R][U];  // starts at -offset * qsum (the identity's correction)
    QP_UNROLL for (int u = 0; u < U; ++u) {
      const __m256i off = zs ? _mm256_add_epi32(base, load_zshift(w.zshift.data + unit_col(w, g + u, b))) : base;
      QP_UNROLL for (int r = 0; r < R; ++r)
        isum[r][u] = zs ? _mm256_mullo_epi32(off, _mm256_set1_epi32(-qsum[r][b]))
                        : _mm256_set1_epi32(-w.base_offset * qsum[r][b]);
    }
    QP_UNROLL for (int l = 0; l < 4; ++l) {
      QP_UNROLL for (int u = 0; u < U; ++u) {
        const __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(unit_codes(w, g + u, b) + 64 * l));
        __m256i wlo = _mm256_and_si256(x, nib), whi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
        if (!Ident) {
          wlo = _mm256_shuffle_epi8(lut, wlo);
          whi = _mm256_shuffle_epi8(lut, whi);
        }
        QP_UNROLL for (int r = 0; r < R; ++r) {
          const int8_t* qb = q[r] + b * kBlock + 4 * l;
          const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(wlo, _mm256_set1_epi32(load4(qb))),
                                             _mm256_maddubs_epi16(whi, _mm256_set1_epi32(load4(qb + 16))));
          isum[r][u] = _mm256_add_epi32(isum[r][u], _mm256_madd_epi16(p, ones));
        }
      }
    }
    QP_UNROLL for (int u = 0; u < U; ++u) {
      const __m256 scale = _mm256_load_ps(w.scale.data + unit_col(w, g + u, b));
      QP_UNROLL for (int r = 0; r < R; ++r) {
        const __m256 s = _mm256_mul_ps(scale, _mm256_set1_ps(sa[r][b]));
        acc[r][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][u]), s, acc[r][u]);
      }
    }
  }
  QP_UNROLL for (int u = 0; u < U; ++u)
    QP_UNROLL for (int r = 0; r < R; ++r) store_unit(w, g + u, y + (m + r) * ldy + (g + u) * kUnit, acc[r][u]);
}

// Rows [m, m+R) x unit g of the float GEMM.
template <int R>
void float_block(const PackedWeights& w, const ActRows& a, int64_t m, int64_t g, float* y, int64_t ldy) {
  constexpr int P = R >= 4 ? 1 : R >= 2 ? 2 : 4;  // partial sums per row: >= 4 FMA chains
  const __m256 lut_lo = _mm256_loadu_ps(w.lut_f), lut_hi = _mm256_loadu_ps(w.lut_f + 8);
  const bool zs = w.zshift.size != 0;
  const float* x[R];
  const float* asum[R];
  __m256 acc[R];
  QP_UNROLL for (int r = 0; r < R; ++r) {
    x[r] = a.a.data() + (m + r) * a.K32;
    asum[r] = a.asum.data() + (m + r) * a.nb;
    acc[r] = _mm256_setzero_ps();
  }

  for (int64_t b = 0; b < w.nb; ++b) {
    __m256 part[R][P];
    QP_UNROLL for (int r = 0; r < R; ++r)
      QP_UNROLL for (int p = 0; p < P; ++p) part[r][p] = _mm256_setzero_ps();
    QP_UNROLL for (int l = 0; l < 4; ++l) {
      const __m256i quad = _mm256_load_si256(reinterpret_cast<const __m256i*>(unit_codes(w, g, b) + 64 * l));
      // Nibble n of each lane is the code of element 4l+n/2 (+16 if n is odd). vpermps reads the
      // low 3 index bits; bit 3 (shifted to the sign bit) picks the lut half with vblendvps.
      QP_UNROLL for (int n = 0; n < 8; ++n) {
        const int e = (n & 1) * 16 + 4 * l + n / 2;
        const __m256i idx = _mm256_srli_epi32(quad, 4 * n);
        const __m256 wv =
            _mm256_blendv_ps(_mm256_permutevar8x32_ps(lut_lo, idx), _mm256_permutevar8x32_ps(lut_hi, idx),
                             _mm256_castsi256_ps(_mm256_slli_epi32(quad, 28 - 4 * n)));
        QP_UNROLL for (int r = 0; r < R; ++r) {
          __m256& s = part[r][(l * 8 + n) % P];
          s = _mm256_fmadd_ps(wv, _mm256_set1_ps(x[r][b * kBlock + e]), s);
        }
      }
    }
    const int64_t col = unit_col(w, g, b);
    const __m256 scale = _mm256_load_ps(w.scale.data + col);
    const __m256 z = zs ? _mm256_cvtepi32_ps(load_zshift(w.zshift.data + col)) : _mm256_setzero_ps();
    QP_UNROLL for (int r = 0; r < R; ++r) {
      __m256 s = part[r][0];
      QP_UNROLL for (int p = 1; p < P; ++p) s = _mm256_add_ps(s, part[r][p]);
      if (zs) s = _mm256_fnmadd_ps(z, _mm256_set1_ps(asum[r][b]), s);
      acc[r] = _mm256_fmadd_ps(scale, s, acc[r]);
    }
  }
  QP_UNROLL for (int r = 0; r < R; ++r) store_unit(w, g, y + (m + r) * ldy + g * kUnit, acc[r]);
}

enum Kind { kIntLut, kIntIdent, kFloat };

// Rows [m, m+R) x tile t. Integer decode (R < 4) reads whole records, one sequential stream;
// otherwise the two halves are done one after the other (registers: R accumulator sets).
template <Kind kind, int R>
inline void tile_rows(const PackedWeights& w, const ActRows& a, int64_t m, int64_t t, float* y, int64_t ldy) {
  if constexpr (kind != kFloat && R < 4) {
    int_block<R, 2, kind == kIntIdent>(w, a, m, 2 * t, y, ldy);
  } else {
    for (int64_t g = 2 * t; g < 2 * t + 2; ++g) {
      if constexpr (kind == kFloat)
        float_block<R>(w, a, m, g, y, ldy);
      else
        int_block<R, 1, kind == kIntIdent>(w, a, m, g, y, ldy);
    }
  }
}

// Loop order: tile, row group of 4 (then the 1..3 row tail), block (inside the block kernels).
template <Kind kind>
void gemm(const PackedWeights& w, const ActRows& a, int64_t m0, int64_t m1, int64_t t0, int64_t t1, float* y,
          int64_t ldy) {
  for_row_groups(m0, m1, t0, t1, [&](auto r, int64_t m, int64_t t) {
    tile_rows<kind, decltype(r)::value>(w, a, m, t, y, ldy);
  });
}

void gemm_int(const PackedWeights& w, const ActRows& a, int64_t m0, int64_t m1, int64_t t0, int64_t t1, float* y,
              int64_t ldy) {
  (identity_lut(w) ? gemm<kIntIdent> : gemm<kIntLut>)(w, a, m0, m1, t0, t1, y, ldy);
}

// 8 values of R, float32 or fp16 (vcvtph2ps is exact).
inline __m256 load_r(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_r(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline float value(float r) { return r; }
inline float value(uint16_t r) { return half_to_float(r); }

template <typename T>
void epilogue(float* y, const float* bias, const float* t, const T* R, int64_t rank, int64_t ldr, int64_t n0,
              int64_t n1, bool split) {
  int64_t n = n0;
  for (; n + 32 <= n1; n += 32) {  // 4 independent FMA chains, one per 8 columns
    __m256 s[4];
    QP_UNROLL for (int v = 0; v < 4; ++v) s[v] = bias ? _mm256_loadu_ps(bias + n + 8 * v) : _mm256_setzero_ps();
    for (int64_t r = 0; r < rank; ++r) {
      const __m256 tr = _mm256_set1_ps(t[r]);
      QP_UNROLL for (int v = 0; v < 4; ++v) s[v] = _mm256_fmadd_ps(tr, load_r(R + r * ldr + n + 8 * v), s[v]);
    }
    QP_UNROLL for (int v = 0; v < 4; ++v)
      _mm256_storeu_ps(y + n + 8 * v, _mm256_add_ps(_mm256_loadu_ps(y + n + 8 * v), s[v]));
  }
  // 8 columns at a time; split: 4 chains over r mod 4 (kernel.h).
  for (; n + 8 <= n1; n += 8) {
    __m256 s[4] = {bias ? _mm256_loadu_ps(bias + n) : _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    int64_t r = 0;
    for (; split && r + 4 <= rank; r += 4)
      QP_UNROLL for (int v = 0; v < 4; ++v)
        s[v] = _mm256_fmadd_ps(_mm256_set1_ps(t[r + v]), load_r(R + (r + v) * ldr + n), s[v]);
    for (; r < rank; ++r) s[0] = _mm256_fmadd_ps(_mm256_set1_ps(t[r]), load_r(R + r * ldr + n), s[0]);
    const __m256 sum = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
    _mm256_storeu_ps(y + n, _mm256_add_ps(_mm256_loadu_ps(y + n), sum));
  }
  for (; n < n1; ++n) {  // scalar tail
    float s = bias ? bias[n] : 0.f;
    for (int64_t r = 0; r < rank; ++r) s += t[r] * value(R[r * ldr + n]);
    y[n] += s;
  }
}

// Activation quantization (kernel.h): the same float32 operations as the scalar path, 8 lanes at a
// time; the tail goes through a zero-padded copy so every lane computes the same way.
inline __m256 load_tail(const float* x, int64_t left, float* pad) {
  if (left >= 8) return _mm256_loadu_ps(x);
  std::memset(pad, 0, 8 * sizeof(float));
  std::memcpy(pad, x, size_t(left) * sizeof(float));
  return _mm256_loadu_ps(pad);
}

inline void store_codes(__m256 r, int8_t* q, int64_t left) {
  alignas(32) int32_t v[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(v), _mm256_cvtps_epi32(r));
  for (int j = 0; j < 8 && j < left; ++j) q[j] = int8_t(v[j]);
}

inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), v); }

float abs_max(const float* x, int64_t n) {
  float pad[8];
  __m256 m = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) m = _mm256_max_ps(m, abs_ps(load_tail(x + i, n - i, pad)));
  alignas(32) float v[8];
  _mm256_store_ps(v, m);
  float r = 0.f;
  for (float f : v) r = r > f ? r : f;
  return r;
}

void quant_int(const float* x, int64_t n, float inv, float qmax, int8_t* q) {
  const __m256 vinv = _mm256_set1_ps(inv), hi = _mm256_set1_ps(qmax), lo = _mm256_set1_ps(-qmax - 1.f);
  float pad[8];
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 r = _mm256_round_ps(_mm256_mul_ps(load_tail(x + i, n - i, pad), vinv),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    store_codes(_mm256_min_ps(_mm256_max_ps(r, lo), hi), q + i, n - i);
  }
}

void quant_mx(const float* x, int64_t n, float inv, int8_t* q) {
  const __m256 vinv = _mm256_set1_ps(inv), two = _mm256_set1_ps(2.f), four = _mm256_set1_ps(4.f);
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), six = _mm256_set1_ps(6.f);
  float pad[8];
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 v = load_tail(x + i, n - i, pad);
    const __m256 a = _mm256_mul_ps(abs_ps(v), vinv);
    const __m256 below2 = _mm256_cmp_ps(a, two, _CMP_LT_OQ), below4 = _mm256_cmp_ps(a, four, _CMP_LT_OQ);
    const __m256 step = _mm256_blendv_ps(_mm256_blendv_ps(two, one, below4), half, below2);
    const __m256 inv_step = _mm256_blendv_ps(_mm256_blendv_ps(half, one, below4), two, below2);
    const __m256 m = _mm256_min_ps(_mm256_mul_ps(_mm256_round_ps(_mm256_mul_ps(a, inv_step),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), step), six);
    const __m256 sign = _mm256_blendv_ps(two, _mm256_set1_ps(-2.f), _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
    store_codes(_mm256_mul_ps(m, sign), q + i, n - i);
  }
}

const Isa kAvx2 = {"avx2", gemm_int, gemm<kFloat>, epilogue<float>, epilogue<uint16_t>, abs_max, quant_int, quant_mx};

}  // namespace

const Isa* isa_avx2() { return &kAvx2; }

}  // namespace qpasses

#else

namespace qpasses {
const Isa* isa_avx2() { return nullptr; }
}  // namespace qpasses

#endif
