// GPTQ's inner loop over one block of columns (qpasses.numerics.gptq), rows in parallel: the torch
// loop runs one column at a time over every row, this runs one row at a time over the block's
// columns, the same operations in the same order on each element (no FMA contraction), so the two
// give the same bits. For each column j of the block, every row r:
//   q = nearest(w[r, j] / s[r]) · s[r]        (nearest: the grid value, a tie at a midpoint going down)
//   e = (w[r, j] − q) / U[j, j];   w[r, j:] −= e · U[j, j:];   out[r, j] = q;   err[r, j] = e
#include <cstdint>
#include <vector>

#include "parallel.h"

// w [rows, c] (updated in place), U [c, c] (the block of H⁻¹'s upper Cholesky factor), s [rows],
// the ascending grid [g] -> out [rows, c] (quantized columns), err [rows, c] (scaled errors).
extern "C" __attribute__((visibility("default"))) void qpasses_gptq_block(
    int64_t rows, int64_t c, double* w, const double* u, const double* s, const double* grid, int64_t g,
    int64_t threads, double* out, double* err) {
  std::vector<double> mids(static_cast<size_t>(g - 1));
  for (int64_t k = 0; k + 1 < g; ++k) mids[k] = (grid[k + 1] + grid[k]) / 2;
  qpasses_numerics::parallel_rows(rows, threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double* wr = w + r * c;
      const double sr = s[r];
      for (int64_t j = 0; j < c; ++j) {
        const double x = wr[j];
        const double y = x / sr;
        int64_t k = 0;
        while (k < g - 1 && mids[k] < y) ++k;
        const double q = grid[k] * sr;
        const double e = (x - q) / u[j * c + j];
        for (int64_t l = j; l < c; ++l) wr[l] -= e * u[j * c + l];
        out[r * c + j] = q;
        err[r * c + j] = e;
      }
    }
  });
}
