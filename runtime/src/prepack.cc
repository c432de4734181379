#include "prepack.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

namespace qpasses {

template <typename T>
Aligned<T>::Aligned(size_t n) : size(n) {
  if (n == 0) return;
  const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
  data = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (!data) throw std::bad_alloc();
  std::memset(data, 0, bytes);
}

template <typename T>
Aligned<T>& Aligned<T>::operator=(Aligned&& o) noexcept {
  if (this != &o) {
    std::free(data);
    data = o.data;
    size = o.size;
    o.data = nullptr;
    o.size = 0;
  }
  return *this;
}

template <typename T>
Aligned<T>::~Aligned() { std::free(data); }

template struct Aligned<uint8_t>;
template struct Aligned<int8_t>;
template struct Aligned<float>;

namespace {

// 2 * E2M1 value of each code (code 8 is -0).
constexpr int kTwiceE2M1[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

PackedWeights allocate(int64_t K, int64_t N, int64_t nb, bool zshift) {
  PackedWeights w;
  w.K = K;
  w.N = N;
  w.nb = nb;
  w.ntiles = (N + kTile - 1) / kTile;
  w.codes = Aligned<uint8_t>(size_t(w.ntiles * nb * kTileBytes));
  w.scale = Aligned<float>(size_t(w.ntiles * nb * kTile));
  if (zshift) w.zshift = Aligned<int8_t>(size_t(w.ntiles * nb * kTile));
  return w;
}

// Put the 4-bit code of element e (0..31) of packed block b, column n, into its record.
inline void place(PackedWeights& w, int64_t n, int64_t b, int e, uint8_t code) {
  const int64_t t = n / kTile, c = n % kTile;
  uint8_t* rec = w.codes.data + (t * w.nb + b) * kTileBytes;
  const int half = e >> 4, quad = (e & 15) >> 2, j = e & 3;
  rec[quad * 64 + c * 4 + j] |= uint8_t(code << (4 * half));
}

inline float& scale_at(PackedWeights& w, int64_t n, int64_t b) {
  return w.scale.data[((n / kTile) * w.nb + b) * kTile + n % kTile];
}

}  // namespace

std::string check_e8m0(const uint8_t* E, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (E[i] == 255) return "E holds the E8M0 code 255 (NaN) at flat index " + std::to_string(i);
  return "";
}

PackedWeights pack_mxfp4(int64_t K, int64_t N, const uint8_t* B, const uint8_t* E) {
  const int64_t nb = (K + kBlock - 1) / kBlock;
  PackedWeights w = allocate(K, N, nb, false);
  w.base_offset = 12;
  for (int c = 0; c < 16; ++c) {
    w.lut_u[c] = uint8_t(kTwiceE2M1[c] + 12);
    w.lut_f[c] = float(kTwiceE2M1[c]);
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* src = B + (n * nb + b) * 16;
      for (int e = 0; e < kBlock && b * kBlock + e < K; ++e)
        place(w, n, b, e, (src[e / 2] >> (4 * (e & 1))) & 15);
      scale_at(w, n, b) = std::ldexp(1.0f, int(E[n * nb + b]) - 128);
    }
  return w;
}

PackedWeights pack_int4(int64_t K, int64_t N, int64_t block_size, const uint8_t* B, const float* scales,
                        const uint8_t* zero_points) {
  const int64_t nbw = (K + block_size - 1) / block_size;  // weight blocks per column
  const int64_t row_bytes = (block_size + 1) / 2;
  const bool split16 = block_size < kBlock;
  const int64_t nb = split16 ? nbw : (K + kBlock - 1) / kBlock;
  PackedWeights w = allocate(K, N, nb, zero_points != nullptr);
  w.base_offset = 8;
  for (int c = 0; c < 16; ++c) {
    w.lut_u[c] = uint8_t(c);
    w.lut_f[c] = float(c - 8);
  }
  const int64_t zp_row = (nbw + 1) / 2;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t bw = k / block_size, i = k % block_size;
      const uint8_t code = (B[(n * nbw + bw) * row_bytes + i / 2] >> (4 * (i & 1))) & 15;
      if (split16)
        place(w, n, bw, int(i), code);
      else
        place(w, n, k / kBlock, int(k % kBlock), code);
    }
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t bw = split16 ? b : b * kBlock / block_size;
      scale_at(w, n, b) = scales[n * nbw + bw];
      if (zero_points) {
        const int zp = (zero_points[n * zp_row + bw / 2] >> (4 * (bw & 1))) & 15;
        w.zshift.data[((n / kTile) * nb + b) * kTile + n % kTile] = int8_t(zp - 8);
      }
    }
  }
  return w;
}

}  // namespace qpasses
