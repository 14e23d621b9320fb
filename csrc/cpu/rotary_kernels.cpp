// Rotary position embedding kernel for the CPU (the math is in cpu/rotary.h). One pass: each row
// of x is read once and each row of y written once, so the op runs at memory speed, against the
// five or so passes of the same formula in eager torch ops (cat of the negated halves, two
// products, a sum; more in the backward). Rows are split over threads with at::parallel_for; the
// inner loop is in the opmath type, plain enough for the compiler to vectorize. This file is
// compiled once per instruction set (CMakeLists.txt), so everything lives in zenattn::cpu::<ISA>.
#include "cpu/rotary.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace zenattn::cpu {
namespace CPU_CAPABILITY {
namespace {

// One row of D = 2h elements. sa and sb are the sines x's other half is multiplied by: forward
// (-s[i], +s[i+h]), backward (+s[i+h], -s[i]) (see cpu/rotary.h).
template <typename T, typename A, bool kBackward>
inline void rotary_row(const T* __restrict x, T* __restrict y, const A* __restrict c, const A* __restrict s,
                       int64_t h) {
  for (int64_t i = 0; i < h; ++i) {
    const A x1 = static_cast<A>(x[i]), x2 = static_cast<A>(x[i + h]);
    const A sa = kBackward ? s[i + h] : -s[i];
    const A sb = kBackward ? -s[i] : s[i + h];
    y[i] = static_cast<T>(x1 * c[i] + x2 * sa);
    y[i + h] = static_cast<T>(x2 * c[i + h] + x1 * sb);
  }
}

template <typename T, bool kBackward>
void rotary_rows(const RotaryParams& p) {
  using A = at::opmath_type<T>;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const A* cos = static_cast<const A*>(p.cos);
  const A* sin = static_cast<const A*>(p.sin);
  const int64_t rows = p.B * p.H * p.L, h = p.D / 2;
  // About 16K elements a task: small calls stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(p.D, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t l = r % p.L, bh = r / p.L, hd = bh % p.H, b = bh / p.H;
      rotary_row<T, A, kBackward>(x + b * p.x_sb + hd * p.x_sh + l * p.x_sl, y + b * p.y_sb + hd * p.y_sh + l * p.y_sl,
                                  cos + l * p.D, sin + l * p.D, h);
    }
  });
}

}  // namespace

void rotary_kernel(const RotaryParams& p) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "zenattn_rotary", [&] {
    if (p.backward)
      rotary_rows<scalar_t, true>(p);
    else
      rotary_rows<scalar_t, false>(p);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace zenattn::cpu
