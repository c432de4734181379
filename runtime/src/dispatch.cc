#include <cstdlib>
#include <cstring>

#include "kernel.h"

namespace qpasses {

const Isa* select_isa(std::string* error) {
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vnni") && isa_avx512() != nullptr;
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && isa_avx2() != nullptr;
  const char* want = std::getenv("QPASSES_ISA");
  if (!want || !*want) return has512 ? isa_avx512() : has2 ? isa_avx2() : isa_scalar();
  if (!std::strcmp(want, "scalar")) return isa_scalar();
  if (!std::strcmp(want, "avx2") && has2) return isa_avx2();
  if (!std::strcmp(want, "avx512") && has512) return isa_avx512();
  const bool known = !std::strcmp(want, "avx2") || !std::strcmp(want, "avx512");
  *error = known ? std::string("QPASSES_ISA=") + want + " but this CPU (or this build) cannot run it"
                 : std::string("QPASSES_ISA=") + want + " is not one of scalar, avx2, avx512";
  return nullptr;
}

}  // namespace qpasses
