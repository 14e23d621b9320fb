#include "cpu/isa.h"

#include <ATen/Version.h>

#include <string>

namespace zenattn::cpu {

// at::get_cpu_capability() names what ATen's own kernels use here (it honours the
// ATEN_CPU_CAPABILITY environment variable), so ours follow the same choice.
Isa runtime_isa() {
  static const Isa isa = [] {
    const std::string cap = at::get_cpu_capability();
#if defined(ZENATTN_HAVE_ISA_AVX512)
    if (cap.find("AVX512") != std::string::npos) return Isa::AVX512;
#endif
#if defined(ZENATTN_HAVE_ISA_AVX2)
    if (cap.find("AVX2") != std::string::npos || cap.find("AVX512") != std::string::npos)
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
