// bfloat16 operands for the bf16 tile products (blas::gemm_bf16): VNNI pairs and transposes.
// Shared by the attention launcher (whole K/V/Q/dO per head) and kernels (P and dS per tile).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace zenattn::cpu::vnni {

inline uint32_t load_pair(const c10::BFloat16* p) {
  uint32_t u;
  std::memcpy(&u, p, sizeof(u));
  return u;
}

// rows x cols matrix x (row stride ld) as a product's B operand: element (r, c) at
// out[(r / 2) * 2 * ld_out + 2 * c + r % 2], with a zero row added when rows is odd.
inline void pack_row_pairs(const c10::BFloat16* x, int64_t ld, int64_t rows, int64_t cols, c10::BFloat16* out,
                           int64_t ld_out) {
  for (int64_t r = 0; r < rows; r += 2) {
    const auto* a = reinterpret_cast<const uint16_t*>(x + r * ld);
    const auto* b = reinterpret_cast<const uint16_t*>(x + (r + 1) * ld);
    auto* o = reinterpret_cast<uint32_t*>(out + r * ld_out);
    if (r + 1 < rows) {
      for (int64_t c = 0; c < cols; ++c) o[c] = uint32_t(a[c]) | (uint32_t(b[c]) << 16);
    } else {
      for (int64_t c = 0; c < cols; ++c) o[c] = uint32_t(a[c]);
    }
  }
}

// bf16(f) (round to nearest even, as c10::BFloat16) in the upper 16 bits; NaN stays NaN.
inline uint32_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? (u | 0x00400000u) : u + 0x7FFFu + ((u >> 16) & 1u);
}

// pack_row_pairs of the float matrix x rounded to bf16, in one pass.
inline void round_row_pairs(const float* x, int64_t ld, int64_t rows, int64_t cols, c10::BFloat16* out,
                            int64_t ld_out) {
  for (int64_t r = 0; r < rows; r += 2) {
    const float* a = x + r * ld;
    const float* b = x + (r + 1) * ld;
    auto* o = reinterpret_cast<uint32_t*>(out + r * ld_out);
    if (r + 1 < rows) {
      for (int64_t c = 0; c < cols; ++c) o[c] = (bf16_bits(a[c]) >> 16) | (bf16_bits(b[c]) & 0xFFFF0000u);
    } else {
      for (int64_t c = 0; c < cols; ++c) o[c] = bf16_bits(a[c]) >> 16;
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

}  // namespace zenattn::cpu::vnni
