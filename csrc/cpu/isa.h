// Which instruction set's CPU kernels run here. Kernel files (*_kernels.cpp) are compiled once per
// instruction set into zenattn::cpu::<ISA> (see CMakeLists.txt); launchers switch on runtime_isa().
#pragma once

namespace zenattn::cpu {

enum class Isa { DEFAULT, AVX2, AVX512 };

// Follows at::get_cpu_capability(), which honours ATEN_CPU_CAPABILITY=default|avx2|avx512, capped at
// what this CPU runs (an AVX512 request on an AVX2-only CPU runs the AVX2 kernels).
Isa runtime_isa();

// "DEFAULT", "AVX2" or "AVX512".
const char* kernel_isa();

}  // namespace zenattn::cpu

// Call ISA::fn(args...) for the instruction set chosen at run time.
#if defined(ZENATTN_HAVE_ISA_AVX512)
#define ZENATTN_ISA_CASE_AVX512(fn, ...) \
  case ::zenattn::cpu::Isa::AVX512: return AVX512::fn(__VA_ARGS__);
#else
#define ZENATTN_ISA_CASE_AVX512(fn, ...)
#endif
#if defined(ZENATTN_HAVE_ISA_AVX2)
#define ZENATTN_ISA_CASE_AVX2(fn, ...) \
  case ::zenattn::cpu::Isa::AVX2: return AVX2::fn(__VA_ARGS__);
#else
#define ZENATTN_ISA_CASE_AVX2(fn, ...)
#endif
#define ZENATTN_ISA_DISPATCH(fn, ...)                   \
  switch (::zenattn::cpu::runtime_isa()) {              \
    ZENATTN_ISA_CASE_AVX512(fn, __VA_ARGS__)            \
    ZENATTN_ISA_CASE_AVX2(fn, __VA_ARGS__)              \
    default: return DEFAULT::fn(__VA_ARGS__);           \
  }
