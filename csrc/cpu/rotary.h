// Rotary position embedding on the CPU: the parameter struct shared by the launcher (rotary.cpp)
// and the kernel (rotary_kernels.cpp, compiled once per instruction set), and the launcher API that
// csrc/bindings.cpp exposes to Python.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace zenattn::cpu {

// y = rotary(x) over x (B, H, L, D), D even, in the rotate-half layout: with h = D / 2 and
// (c, s) the row of cos / sin for position l,
//   forward:  y[i] = x[i] c[i] - x[i+h] s[i]       y[i+h] = x[i+h] c[i+h] + x[i] s[i+h]
//   backward: y[i] = x[i] c[i] + x[i+h] s[i+h]     y[i+h] = x[i+h] c[i+h] - x[i] s[i]
// (the backward is the forward's transpose: the gradient with respect to x). x and y have type
// `dtype` and strides in elements with a unit last stride; cos and sin are (L, D) contiguous in the
// opmath type (float, or double for double), which the arithmetic runs in.
struct RotaryParams {
  at::ScalarType dtype;
  bool backward;
  int64_t B, H, L, D;
  const void* x;
  int64_t x_sb, x_sh, x_sl;
  void* y;
  int64_t y_sb, y_sh, y_sl;
  const void* cos;
  const void* sin;
};

#define ZENATTN_DECLARE_ROTARY_KERNELS(ISA)         \
  namespace ISA {                                   \
  void rotary_kernel(const RotaryParams& p);        \
  }
ZENATTN_DECLARE_ROTARY_KERNELS(DEFAULT)
ZENATTN_DECLARE_ROTARY_KERNELS(AVX2)
ZENATTN_DECLARE_ROTARY_KERNELS(AVX512)
#undef ZENATTN_DECLARE_ROTARY_KERNELS

// Launcher (inputs checked at the pybind11 boundary): x (B, H, L, D) of a float type with any
// strides (a last stride other than 1 is made contiguous first); cos, sin (L, D) of any float
// type. Returns y shaped and typed like x, laid out (B, L, H, D) in memory where heads_inner(x)
// (csrc/cpu/attention.h), so the attention after it gets its output in that layout too; else
// contiguous.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool backward);

}  // namespace zenattn::cpu
