#include "cpu/isa.h"

#include <ATen/Version.h>

#include <string>

namespace zenattn::cpu {

// at::get_cpu_capability() names what ATen's own kernels use here (it honours the
// ATEN_CPU_CAPABILITY environment variable), so ours follow the same choice.
namespace {

// Whether this CPU runs the instructions a kernel build was compiled with (CMakeLists.txt's
// ZEN_ISA_FLAGS_*). ATEN_CPU_CAPABILITY=avx512 makes at::get_cpu_capability() say AVX512 even on a
// CPU without it (seen on an AVX2-only AMD EPYC VM, torch 2.13), where the AVX512 kernels would die
// of an illegal instruction: the capability asked for is capped by this check.
bool cpu_runs(Isa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  if (isa == Isa::AVX2) return avx2;
  if (isa == Isa::AVX512)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
  return true;  // elsewhere only DEFAULT is built, or ATen's word is all there is
}

}  // namespace

Isa runtime_isa() {
  static const Isa isa = [] {
    const std::string cap = at::get_cpu_capability();
#if defined(ZENATTN_HAVE_ISA_AVX512)
    if (cap.find("AVX512") != std::string::npos && cpu_runs(Isa::AVX512)) return Isa::AVX512;
#endif
#if defined(ZENATTN_HAVE_ISA_AVX2)
    if ((cap.find("AVX2") != std::string::npos || cap.find("AVX512") != std::string::npos) && cpu_runs(Isa::AVX2))
      return Isa::AVX2;
#endif
    return Isa::DEFAULT;
  }();
  return isa;
}

const char* kernel_isa() {
  switch (runtime_isa()) {
    case Isa::AVX512: return "AVX512";
    case Isa::AVX2: return "AVX2";
    default: return "DEFAULT";
  }
}

}  // namespace zenattn::cpu
