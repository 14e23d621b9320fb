// Operands for the brgemm tile products (blas::brgemm): bf16 VNNI pairs, and transposes.
// Shared by the attention launcher (whole K/V/Q/dO per head) and kernels (P and dS per tile).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace zenattn::cpu::vnni {
// Internal linkage: the per-ISA kernel files include this too, each compiled with its own
// instruction set; shared (COMDAT) copies could let the linker hand an AVX-512 build of a helper
// to the DEFAULT or AVX2 kernels.
namespace {

inline uint32_t load_pair(const c10::BFloat16* p) {
  uint32_t u;
  std::memcpy(&u, p, sizeof(u));
  return u;
}

// bf16(f) (round to nearest even, as c10::BFloat16) in the upper 16 bits; NaN stays NaN.
inline uint32_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? (u | 0x00400000u) : u + 0x7FFFu + ((u >> 16) & 1u);
}

// The 16 bits of x as bf16 (a float is rounded).
inline uint32_t bf16_pattern(c10::BFloat16 x) { return x.x; }
inline uint32_t bf16_pattern(float x) { return bf16_bits(x) >> 16; }

// rows x cols matrix x (row stride ld; bf16, or float rounded to bf16 on the way) as a product's B
// operand: element (r, c) at out[(r / 2) * 2 * ld_out + 2 * c + r % 2], with a zero row added when
// rows is odd.
template <typename T>
void pack_row_pairs(const T* x, int64_t ld, int64_t rows, int64_t cols, c10::BFloat16* out, int64_t ld_out) {
  for (int64_t r = 0; r < rows; r += 2) {
    const T* a = x + r * ld;
    const T* b = x + (r + 1) * ld;
    auto* o = reinterpret_cast<uint32_t*>(out + r * ld_out);
    if (r + 1 < rows) {
      for (int64_t c = 0; c < cols; ++c) o[c] = bf16_pattern(a[c]) | (bf16_pattern(b[c]) << 16);
    } else {
      for (int64_t c = 0; c < cols; ++c) o[c] = bf16_pattern(a[c]);
    }
  }
}

// x^T for a rows x cols matrix x (row stride ld, cols even) as a product's B operand: element
// (c, r) of x^T at out[(c / 2) * 2 * rows + 2 * r + c % 2], i.e. x's column pairs transposed.
inline void pack_col_pairs(const c10::BFloat16* x, int64_t ld, int64_t rows, int64_t cols, c10::BFloat16* out) {
  constexpr int64_t kBlock = 64;  // rows per pass, so the reads of a block stay in cache
  auto* o = reinterpret_cast<uint32_t*>(out);
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = r0 + kBlock < rows ? r0 + kBlock : rows;
    for (int64_t j = 0; j < cols / 2; ++j)
      for (int64_t r = r0; r < r1; ++r) o[j * rows + r] = load_pair(x + r * ld + 2 * j);
  }
}

// x^T for a rows x cols matrix x (row stride ld): out (cols x rows_out) row-major, converted to
// Out, zeros in columns rows .. rows_out.
template <typename In, typename Out>
void transpose(const In* x, int64_t ld, int64_t rows, int64_t cols, Out* out, int64_t rows_out) {
  constexpr int64_t kBlock = 64;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = r0 + kBlock < rows ? r0 + kBlock : rows;
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t r = r0; r < r1; ++r) out[c * rows_out + r] = Out(x[r * ld + c]);
  }
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = rows; r < rows_out; ++r) out[c * rows_out + r] = Out(0.0f);
}

}  // namespace
}  // namespace zenattn::cpu::vnni
