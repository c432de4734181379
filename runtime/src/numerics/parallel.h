// Rows split over std::threads, for the compiler's native numerics (libqpasses_numerics.so).
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace qpasses_numerics {

// Calls body(begin, end) on `threads` contiguous row ranges (fewer when rows are few), in parallel.
template <typename Body>
void parallel_rows(int64_t rows, int64_t threads, Body body) {
  threads = std::max<int64_t>(1, std::min<int64_t>(threads, rows / 64 + 1));
  if (threads == 1) {
    body(int64_t{0}, rows);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (rows + threads - 1) / threads;
  for (int64_t k = 0; k < threads; ++k) {
    const int64_t begin = k * per, end = std::min(rows, begin + per);
    if (begin < end) pool.emplace_back(body, begin, end);
  }
  for (auto& t : pool) t.join();
}

}  // namespace qpasses_numerics
