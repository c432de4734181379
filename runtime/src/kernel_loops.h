// Loop skeletons shared by the SIMD kernel files. Internal linkage on purpose: each ISA file
// compiles its own copy with its own target flags, so the linker can never hand one ISA's
// instructions to another ISA's caller.
#pragma once

#include <type_traits>

#include "kernel.h"

namespace qpasses {
namespace {

// INT4 weights store code = value + 8, so lut_u is the identity and the kernels skip the lookup.
inline bool identity_lut(const PackedWeights& w) {
  for (int c = 0; c < 16; ++c)
    if (w.lut_u[c] != c) return false;
  return true;
}

// For every tile in [t0, t1): rows [m0, m1) in groups of 4, then the 1..3 row tail, as
// fn(std::integral_constant<int, R>, m, t) so the row kernel gets R at compile time.
template <typename F>
inline void for_row_groups(int64_t m0, int64_t m1, int64_t t0, int64_t t1, F&& fn) {
  for (int64_t t = t0; t < t1; ++t) {
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) fn(std::integral_constant<int, 4>{}, m, t);
    switch (m1 - m) {
      case 3: fn(std::integral_constant<int, 3>{}, m, t); break;
      case 2: fn(std::integral_constant<int, 2>{}, m, t); break;
      case 1: fn(std::integral_constant<int, 1>{}, m, t); break;
      default: break;
    }
  }
}

}  // namespace
}  // namespace qpasses
