// AVX-512 (F/BW/VL/DQ) + VNNI kernels; semantics are those of kernels_scalar.cc (see kernel.h).
//
// One zmm lane per column: a 64-byte quad holds 4 consecutive codes of each of the 16 columns of a
// tile (low nibbles) and 4 more (high nibbles), so a u8 x s8 vpdpbusd against 4 broadcast
// activation bytes adds 4 products into each column's int32 sum with no horizontal reduction.
// The kernels are templated on the number of rows R (1..4) that share every loaded and unpacked
// weight vector: prefill reuses each one for 4 rows.
#include "kernel.h"
#include "kernel_loops.h"

#if defined(__AVX512F__) && defined(__AVX512VNNI__)

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on _mm512_undefined_* (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <immintrin.h>

#include <cstring>

#define QP_UNROLL _Pragma("GCC unroll 16")

namespace qpasses {
namespace {

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

// The 16 zshift values of a (tile, block) record, as int32.
inline __m512i load_zshift(const int8_t* z) {
  return _mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(z)));
}

// Columns of tile t that exist (N need not be a multiple of 16).
inline __mmask16 column_mask(const PackedWeights& w, int64_t t) {
  const int64_t left = w.N - t * kTile;
  return left >= kTile ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// Rows [m, m+R) x tile t of the integer GEMM. Ident: lut_u is the identity (INT4), skip the lookup.
template <int R, bool Ident>
void int_rows(const PackedWeights& w, const ActRows& a, int64_t m, int64_t t, float* y, int64_t ldy) {
  // Few rows: split each column sum into a low-nibble and a high-nibble chain so that vpdpbusd
  // latency overlaps; 4 rows give 4 independent chains already.
  constexpr int S = R < 4 ? 2 : 1;
  const int64_t nb = w.nb;
  const uint8_t* codes = w.codes.data + t * nb * kTileBytes;  // the tile's records, block by block
  const float* scale = w.scale.data + t * nb * kTile;
  const int8_t* zshift = w.zshift.size ? w.zshift.data + t * nb * kTile : nullptr;
  const __m512i nib = _mm512_set1_epi8(0x0F);
  const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.lut_u)));
  const __m512i base = _mm512_set1_epi32(w.base_offset);
  const int8_t* q[R];
  const float* sa[R];
  const int32_t* qsum[R];
  __m512 acc[R];
  QP_UNROLL for (int r = 0; r < R; ++r) {
    q[r] = a.q.data() + (m + r) * a.K32;
    sa[r] = a.sa.data() + (m + r) * a.nb;
    qsum[r] = a.qsum.data() + (m + r) * a.nb;
    acc[r] = _mm512_setzero_ps();
  }

  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* rec = codes + b * kTileBytes;
    if (R < 4) prefetch_ahead(rec);
    // Start each sum at -offset * qsum so the identity's correction costs no extra instruction.
    __m512i isum[R][S];
    const __m512i off = zshift ? _mm512_add_epi32(base, load_zshift(zshift + b * kTile)) : base;
    QP_UNROLL for (int r = 0; r < R; ++r) {
      isum[r][0] = zshift ? _mm512_mullo_epi32(off, _mm512_set1_epi32(-qsum[r][b]))
                          : _mm512_set1_epi32(-w.base_offset * qsum[r][b]);
      if (S == 2) isum[r][1] = _mm512_setzero_si512();
    }
    QP_UNROLL for (int l = 0; l < 4; ++l) {
      const __m512i x = _mm512_load_si512(rec + 64 * l);
      __m512i wlo = _mm512_and_si512(x, nib), whi = _mm512_and_si512(_mm512_srli_epi16(x, 4), nib);
      if (!Ident) {
        wlo = _mm512_shuffle_epi8(lut, wlo);
        whi = _mm512_shuffle_epi8(lut, whi);
      }
      QP_UNROLL for (int r = 0; r < R; ++r) {
        const int8_t* qb = q[r] + b * kBlock + 4 * l;
        isum[r][0] = _mm512_dpbusd_epi32(isum[r][0], wlo, _mm512_set1_epi32(load4(qb)));
        isum[r][S - 1] = _mm512_dpbusd_epi32(isum[r][S - 1], whi, _mm512_set1_epi32(load4(qb + 16)));
      }
    }
    const __m512 sc = _mm512_load_ps(scale + b * kTile);
    QP_UNROLL for (int r = 0; r < R; ++r) {
      const __m512i s = S == 2 ? _mm512_add_epi32(isum[r][0], isum[r][1]) : isum[r][0];
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(sc, _mm512_set1_ps(sa[r][b])), acc[r]);
    }
  }
  const __mmask16 k = column_mask(w, t);
  QP_UNROLL for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(y + (m + r) * ldy + t * kTile, k, acc[r]);
}

// Rows [m, m+R) x tile t of the float GEMM.
template <int R>
void float_rows(const PackedWeights& w, const ActRows& a, int64_t m, int64_t t, float* y, int64_t ldy) {
  constexpr int P = R >= 4 ? 2 : 4;  // partial sums per row: >= 8 FMA chains in flight
  const int64_t nb = w.nb;
  const uint8_t* codes = w.codes.data + t * nb * kTileBytes;
  const float* scale = w.scale.data + t * nb * kTile;
  const int8_t* zshift = w.zshift.size ? w.zshift.data + t * nb * kTile : nullptr;
  const __m512 lut = _mm512_loadu_ps(w.lut_f);
  const float* x[R];
  const float* asum[R];
  __m512 acc[R];
  QP_UNROLL for (int r = 0; r < R; ++r) {
    x[r] = a.a.data() + (m + r) * a.K32;
    asum[r] = a.asum.data() + (m + r) * a.nb;
    acc[r] = _mm512_setzero_ps();
  }

  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* rec = codes + b * kTileBytes;
    if (R < 4) prefetch_ahead(rec);
    __m512 part[R][P];
    QP_UNROLL for (int r = 0; r < R; ++r)
      QP_UNROLL for (int p = 0; p < P; ++p) part[r][p] = _mm512_setzero_ps();
    QP_UNROLL for (int l = 0; l < 4; ++l) {
      const __m512i quad = _mm512_load_si512(rec + 64 * l);
      // Nibble n of each lane is the code of element 4l+n/2 (+16 if n is odd); vpermps reads only
      // the low 4 index bits, so a shift selects the code without masking.
      QP_UNROLL for (int n = 0; n < 8; ++n) {
        const int e = (n & 1) * 16 + 4 * l + n / 2;
        const __m512 wv = _mm512_permutexvar_ps(_mm512_srli_epi32(quad, 4 * n), lut);
        QP_UNROLL for (int r = 0; r < R; ++r) {
          __m512& s = part[r][(l * 8 + n) % P];
          s = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[r][b * kBlock + e]), s);
        }
      }
    }
    const __m512 sc = _mm512_load_ps(scale + b * kTile);
    const __m512 z = zshift ? _mm512_cvtepi32_ps(load_zshift(zshift + b * kTile)) : _mm512_setzero_ps();
    QP_UNROLL for (int r = 0; r < R; ++r) {
      __m512 s = part[r][0];
      QP_UNROLL for (int p = 1; p < P; ++p) s = _mm512_add_ps(s, part[r][p]);
      if (zshift) s = _mm512_fnmadd_ps(z, _mm512_set1_ps(asum[r][b]), s);
      acc[r] = _mm512_fmadd_ps(sc, s, acc[r]);
    }
  }
  const __mmask16 k = column_mask(w, t);
  QP_UNROLL for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(y + (m + r) * ldy + t * kTile, k, acc[r]);
}

enum Kind { kIntLut, kIntIdent, kFloat };

template <Kind kind, int R>
inline void rows(const PackedWeights& w, const ActRows& a, int64_t m, int64_t t, float* y, int64_t ldy) {
  if constexpr (kind == kFloat)
    float_rows<R>(w, a, m, t, y, ldy);
  else
    int_rows<R, kind == kIntIdent>(w, a, m, t, y, ldy);
}

// Loop order: tile, row group of 4 (then the 1..3 row tail), block (inside the row kernels). One
// tile at a time keeps the weight stream sequential, which matters more at decode than pairing
// tiles for extra dependency chains.
template <Kind kind>
void gemm(const PackedWeights& w, const ActRows& a, int64_t m0, int64_t m1, int64_t t0, int64_t t1, float* y,
          int64_t ldy) {
  for_row_groups(m0, m1, t0, t1, [&](auto r, int64_t m, int64_t t) {
    rows<kind, decltype(r)::value>(w, a, m, t, y, ldy);
  });
}

void gemm_int(const PackedWeights& w, const ActRows& a, int64_t m0, int64_t m1, int64_t t0, int64_t t1, float* y,
              int64_t ldy) {
  (identity_lut(w) ? gemm<kIntIdent> : gemm<kIntLut>)(w, a, m0, m1, t0, t1, y, ldy);
}

// 16 values of R, float32 or fp16 (vcvtph2ps is exact); masked: lanes past the mask read nothing.
inline __m512 load_r(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_r(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline __m512 load_r(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
inline __m512 load_r(const uint16_t* p, __mmask16 k) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }

template <typename T>
void epilogue(float* y, const float* bias, const float* t, const T* R, int64_t rank, int64_t ldr, int64_t n0,
              int64_t n1, bool split) {
  int64_t n = n0;
  for (; n + 64 <= n1; n += 64) {  // 4 independent FMA chains, one per 16 columns
    __m512 s[4];
    QP_UNROLL for (int v = 0; v < 4; ++v) s[v] = bias ? _mm512_loadu_ps(bias + n + 16 * v) : _mm512_setzero_ps();
    for (int64_t r = 0; r < rank; ++r) {
      const __m512 tr = _mm512_set1_ps(t[r]);
      QP_UNROLL for (int v = 0; v < 4; ++v) s[v] = _mm512_fmadd_ps(tr, load_r(R + r * ldr + n + 16 * v), s[v]);
    }
    QP_UNROLL for (int v = 0; v < 4; ++v)
      _mm512_storeu_ps(y + n + 16 * v, _mm512_add_ps(_mm512_loadu_ps(y + n + 16 * v), s[v]));
  }
  // 16 columns at a time (masked tail); split: 4 chains over r mod 4 (kernel.h).
  for (; n < n1; n += 16) {
    const __mmask16 k = n1 - n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n1 - n)) - 1);
    __m512 s[4] = {bias ? _mm512_maskz_loadu_ps(k, bias + n) : _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t r = 0;
    for (; split && r + 4 <= rank; r += 4)
      QP_UNROLL for (int v = 0; v < 4; ++v)
        s[v] = _mm512_fmadd_ps(_mm512_set1_ps(t[r + v]), load_r(R + (r + v) * ldr + n, k), s[v]);
    for (; r < rank; ++r) s[0] = _mm512_fmadd_ps(_mm512_set1_ps(t[r]), load_r(R + r * ldr + n, k), s[0]);
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
    _mm512_mask_storeu_ps(y + n, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, y + n), sum));
  }
}

// Activation quantization (kernel.h): the same float32 operations as the scalar path, 16 lanes at a time.
inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

float abs_max(const float* x, int64_t n) {
  __m512 m = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i)));
  return _mm512_reduce_max_ps(m);
}

void quant_int(const float* x, int64_t n, float inv, float qmax, int8_t* q) {
  const __m512 vinv = _mm512_set1_ps(inv), hi = _mm512_set1_ps(qmax), lo = _mm512_set1_ps(-qmax - 1.f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vinv),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm512_mask_cvtepi32_storeu_epi8(q + i, k, _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi)));
  }
}

void quant_mx(const float* x, int64_t n, float inv, int8_t* q) {
  const __m512 vinv = _mm512_set1_ps(inv), two = _mm512_set1_ps(2.f), four = _mm512_set1_ps(4.f);
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f), six = _mm512_set1_ps(6.f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    const __m512 a = _mm512_mul_ps(_mm512_abs_ps(v), vinv);
    const __mmask16 below2 = _mm512_cmp_ps_mask(a, two, _CMP_LT_OQ), below4 = _mm512_cmp_ps_mask(a, four, _CMP_LT_OQ);
    const __m512 step = _mm512_mask_blend_ps(below2, _mm512_mask_blend_ps(below4, two, one), half);
    const __m512 inv_step = _mm512_mask_blend_ps(below2, _mm512_mask_blend_ps(below4, half, one), two);
    const __m512 m = _mm512_min_ps(_mm512_mul_ps(_mm512_roundscale_ps(_mm512_mul_ps(a, inv_step),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), step), six);
    const __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 r = _mm512_mul_ps(m, _mm512_mask_blend_ps(neg, two, _mm512_set1_ps(-2.f)));
    _mm512_mask_cvtepi32_storeu_epi8(q + i, k, _mm512_cvtps_epi32(r));
  }
}

const Isa kAvx512 = {"avx512", gemm_int, gemm<kFloat>, epilogue<float>, epilogue<uint16_t>, abs_max, quant_int,
                     quant_mx};

}  // namespace

const Isa* isa_avx512() { return &kAvx512; }

}  // namespace qpasses

#else

namespace qpasses {
const Isa* isa_avx512() { return nullptr; }
}  // namespace qpasses

#endif
