// Operands for the brgemm tile products (blas::brgemm): bf16 VNNI pairs, and transposes. Used by
// the attention kernel file, once per instruction set: the launchers' packs (whole K/V per head,
// attention_pack) and the kernels' tiles (Q^T and dO^T per query block, P and dS per tile).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

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

// ---- transposes ---------------------------------------------------------------------------------
// Blocks of 32-bit elements transposed in registers (AVX-512: 16 x 16, AVX2: 8 x 8); the edges that
// do not fill a block, and the DEFAULT build, go element by element.

#if defined(CPU_CAPABILITY_AVX512)
constexpr int64_t kBlock32 = 16;

// r[i] holds row i of a 16 x 16 block of 32-bit elements; afterwards r[i] holds column i.
inline void transpose_block32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: pairs of rows interleaved
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m512i u[16];  // u[4g + k], lane L: column 4L + k of rows 4g .. 4g + 3
  for (int g = 0; g < 4; ++g) {
    u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int k = 0; k < 4; ++k) {  // the 4 x 4 lanes of u[k], u[4 + k], u[8 + k], u[12 + k], transposed
    const __m512i v0 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x44), v1 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xEE);
    r[k] = _mm512_shuffle_i32x4(v0, v2, 0x88), r[4 + k] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + k] = _mm512_shuffle_i32x4(v1, v3, 0x88), r[12 + k] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// One 16 x 16 block: x (row stride ld) -> out (row stride ld_out) transposed. 32-bit elements as
// they are; bfloat16 widened and narrowed around the 32-bit transpose; float to bfloat16 rounded
// to nearest even (as bf16_bits) after it.
template <typename In, typename Out>
inline void transpose_block(const In* x, int64_t ld, Out* out, int64_t ld_out) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) {
    if constexpr (sizeof(In) == 4) {
      r[i] = _mm512_loadu_si512(x + i * ld);
    } else {
      r[i] = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i * ld)));
    }
  }
  transpose_block32(r);
  for (int i = 0; i < 16; ++i) {
    if constexpr (sizeof(Out) == 4) {
      _mm512_storeu_si512(out + i * ld_out, r[i]);
    } else {
      __m512i bits = r[i];
      if constexpr (sizeof(In) == 4) {  // float -> bf16: + 0x7FFF + lsb, NaN kept quiet
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF)),
                                                      _mm512_set1_epi32(0x7F800000));
        bits = _mm512_srli_epi32(_mm512_mask_or_epi32(rounded, nan, bits, _mm512_set1_epi32(0x00400000)), 16);
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * ld_out), _mm512_cvtepi32_epi16(bits));
    }
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int64_t kBlock32 = 8;

template <typename In, typename Out>
inline void transpose_block(const In* x, int64_t ld, Out* out, int64_t ld_out) {
  static_assert(sizeof(In) == 4 && sizeof(Out) == 4, "AVX2 blocks move 32-bit elements");
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(reinterpret_cast<const float*>(x + i * ld));
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 2; ++g) {  // u[4g + k], lane L: column 4L + k of rows 4g .. 4g + 3
    u[4 * g] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    _mm256_storeu_ps(reinterpret_cast<float*>(out + k * ld_out), _mm256_permute2f128_ps(u[k], u[4 + k], 0x20));
    _mm256_storeu_ps(reinterpret_cast<float*>(out + (4 + k) * ld_out), _mm256_permute2f128_ps(u[k], u[4 + k], 0x31));
  }
}
#endif

template <typename In, typename Out>
constexpr bool has_block_transpose() {
#if defined(CPU_CAPABILITY_AVX512)
  return true;
#elif defined(CPU_CAPABILITY_AVX2)
  return sizeof(In) == 4 && sizeof(Out) == 4;
#else
  return false;
#endif
}

inline void convert_to(float x, float& out) { out = x; }
inline void convert_to(float x, c10::BFloat16& out) { out.x = static_cast<uint16_t>(bf16_bits(x) >> 16); }
inline void convert_to(c10::BFloat16 x, c10::BFloat16& out) { out = x; }
inline void convert_to(uint32_t x, uint32_t& out) { out = x; }

// x^T for a rows x cols matrix x (row stride ld): out (cols x rows_out) row-major, converted to
// Out (float -> bfloat16 rounds to nearest even), zeros in columns rows .. rows_out.
template <typename In, typename Out>
void transpose(const In* x, int64_t ld, int64_t rows, int64_t cols, Out* out, int64_t rows_out) {
  int64_t rows_done = 0, cols_done = 0;  // the corner done by whole blocks
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (has_block_transpose<In, Out>()) {
    rows_done = rows - rows % kBlock32, cols_done = cols - cols % kBlock32;
    for (int64_t r0 = 0; r0 < rows_done; r0 += kBlock32)
      for (int64_t c0 = 0; c0 < cols_done; c0 += kBlock32)
        transpose_block(x + r0 * ld + c0, ld, out + c0 * rows_out + r0, rows_out);
  }
#endif
  const auto one = [&](int64_t r, int64_t c) { convert_to(x[r * ld + c], out[c * rows_out + r]); };
  for (int64_t c = cols_done; c < cols; ++c)
    for (int64_t r = 0; r < rows_done; ++r) one(r, c);
  constexpr int64_t kRows = 64;  // rows per pass, so the reads of a block stay in cache
  for (int64_t r0 = rows_done; r0 < rows; r0 += kRows) {
    const int64_t r1 = r0 + kRows < rows ? r0 + kRows : rows;
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t r = r0; r < r1; ++r) one(r, c);
  }
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = rows; r < rows_out; ++r) out[c * rows_out + r] = Out(0.0f);
}

// x^T for a rows x cols matrix x (row stride ld, cols even) as a product's B operand: element
// (c, r) of x^T at out[(c / 2) * 2 * rows + 2 * r + c % 2], i.e. x's column pairs transposed.
inline void pack_col_pairs(const c10::BFloat16* x, int64_t ld, int64_t rows, int64_t cols, c10::BFloat16* out) {
  auto* o = reinterpret_cast<uint32_t*>(out);
  if (ld % 2 == 0 && reinterpret_cast<uintptr_t>(x) % alignof(uint32_t) == 0) {  // pairs as 32-bit elements
    return transpose(reinterpret_cast<const uint32_t*>(x), ld / 2, rows, cols / 2, o, rows);
  }
  for (int64_t j = 0; j < cols / 2; ++j)
    for (int64_t r = 0; r < rows; ++r) o[j * rows + r] = load_pair(x + r * ld + 2 * j);
}

}  // namespace
}  // namespace zenattn::cpu::vnni
