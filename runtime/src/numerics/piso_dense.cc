// PiSO with a dense H, one row at a time: the compiler's scale search (qpasses.numerics.piso),
// not an ONNX Runtime op. The same algorithm as piso.optimal_scales, in one pass per row:
//
//   q_j changes only where w_j / s crosses a midpoint of the grid, at s = w_j / mid. Sweeping s
//   down from +inf through these events, with b = H w:
//     α += δ b_i,   β += δ (2 (Hq)_i + δ H_ii),   Hq += δ H[i, :]
//   and between consecutive events E(s) = s² β − 2 s α is a parabola whose minimum, clipped into
//   the interval (shrunk by EPS at both ends, as in Python), is that interval's optimum.
//
// Events are ordered by t descending, ties by (element, transition) ascending: the order of the
// Python path's stable sort. Float64 throughout, no FMA contraction (-ffp-contract=off), so the
// result does not depend on the instruction set. Rows are split across `threads` threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "parallel.h"

namespace {

constexpr double kEps = 1e-6;

struct Event {  // 16 bytes: the sort moves little
  double t;
  int64_t key;  // element * width + transition (the k-th move away from 0): Python's layout, the tie-break
};

void solve_rows(int64_t begin, int64_t end, int64_t d, const double* w, const double* b, const double* h,
                const double* grid, int64_t g, double* s_out, double* e_out) {
  int64_t zero = 0;
  while (zero < g && grid[zero] != 0.0) ++zero;
  const int64_t width = std::max(g - 1 - zero, zero);
  std::vector<double> up(static_cast<size_t>(width)), down(static_cast<size_t>(width));  // δ of the k-th move
  for (int64_t k = zero; k < g - 1; ++k) up[k - zero] = grid[k + 1] - grid[k];
  for (int64_t k = zero - 1; k >= 0; --k) down[zero - 1 - k] = grid[k] - grid[k + 1];
  std::vector<Event> events;
  events.reserve(static_cast<size_t>(d * width));
  std::vector<double> hq(static_cast<size_t>(d));
  for (int64_t r = begin; r < end; ++r) {
    const double* wr = w + r * d;
    const double* br = b + r * d;
    events.clear();
    for (int64_t j = 0; j < d; ++j) {
      const double x = wr[j];
      if (x > 0) {
        for (int64_t k = zero; k < g - 1; ++k) {
          const double mid = (grid[k] + grid[k + 1]) / 2;
          events.push_back({x / mid, j * width + (k - zero)});
        }
      } else if (x < 0) {
        for (int64_t k = zero - 1; k >= 0; --k) {
          const double mid = (grid[k + 1] + grid[k]) / 2;
          events.push_back({x / mid, j * width + (zero - 1 - k)});
        }
      }
    }
    std::sort(events.begin(), events.end(),
              [](const Event& a, const Event& c) { return a.t > c.t || (a.t == c.t && a.key < c.key); });
    std::fill(hq.begin(), hq.end(), 0.0);
    double alpha = 0, beta = 0, best_e = std::numeric_limits<double>::infinity(), best_s = 1.0;
    const size_t n = events.size();
    for (size_t m = 0; m < n; ++m) {
      const Event& ev = events[m];
      const int64_t i = ev.key / width;
      const double dl = (wr[i] > 0 ? up : down)[static_cast<size_t>(ev.key % width)];
      const double* hi_row = h + i * d;
      alpha += dl * br[i];
      beta += dl * (2 * hq[i] + dl * hi_row[i]);
      for (int64_t j = 0; j < d; ++j) hq[j] += dl * hi_row[j];
      const double top = ev.t * (1 - kEps);
      const double bottom = (m + 1 < n ? events[m + 1].t : 0.0) * (1 + kEps);
      if (!(beta > 0 && top > bottom)) continue;
      const double s = std::min(std::max(alpha / std::max(beta, 1e-300), bottom), top);
      const double e = s * s * beta - 2 * s * alpha;
      if (e < best_e) {
        best_e = e;
        best_s = s;
      }
    }
    const bool empty = !std::isfinite(best_e);
    s_out[r] = empty ? 1.0 : best_s;
    e_out[r] = empty ? 0.0 : best_e;
  }
}

}  // namespace

// Rows w [rows, d], b = w H [rows, d], H [d, d] (row-major float64), the ascending grid [g] holding
// 0 -> the optimal scale s [rows] and its E(s) [rows] (s = 1, E = 0 for an all-zero row).
extern "C" __attribute__((visibility("default"))) void qpasses_piso_dense(
    int64_t rows, int64_t d, const double* w, const double* b, const double* h, const double* grid, int64_t g,
    int64_t threads, double* s_out, double* e_out) {
  qpasses_numerics::parallel_rows(rows, threads, [=](int64_t begin, int64_t end) {
    solve_rows(begin, end, d, w, b, h, grid, g, s_out, e_out);
  });
}
