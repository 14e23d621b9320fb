// Rotary position embedding launcher for the CPU: allocate the output in x's layout, bring cos and
// sin to the opmath type, run the kernel for this machine's instruction set.
#include "cpu/rotary.h"
#include "cpu/attention.h"
#include "cpu/isa.h"

#include <ATen/OpMathType.h>

namespace zenattn::cpu {
namespace {

void run(const RotaryParams& p) { ZENATTN_ISA_DISPATCH(rotary_kernel, p) }

}  // namespace

at::Tensor rotary(const at::Tensor& x_in, const at::Tensor& cos, const at::Tensor& sin, bool backward) {
  const at::Tensor x = x_in.size(3) > 1 && x_in.stride(3) != 1 ? x_in.contiguous() : x_in;
  const int64_t B = x.size(0), H = x.size(1), L = x.size(2), D = x.size(3);
  at::Tensor y = heads_inner(x_in) ? at::empty({B, L, H, D}, x.options()).transpose(1, 2)
                                : at::empty({B, H, L, D}, x.options());
  if (y.numel() == 0) return y;
  const auto opmath = at::toOpMathType(x.scalar_type());
  const at::Tensor c = cos.to(opmath).contiguous(), s = sin.to(opmath).contiguous();
  RotaryParams p{};
  p.dtype = x.scalar_type();
  p.backward = backward;
  p.B = B, p.H = H, p.L = L, p.D = D;
  p.x = x.data_ptr(), p.x_sb = x.stride(0), p.x_sh = x.stride(1), p.x_sl = x.stride(2);
  p.y = y.data_ptr(), p.y_sb = y.stride(0), p.y_sh = y.stride(1), p.y_sl = y.stride(2);
  p.cos = c.data_ptr(), p.sin = s.data_ptr();
  run(p);
  return y;
}

}  // namespace zenattn::cpu
