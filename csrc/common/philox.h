// Counter-based random numbers for attention dropout: Philox4x32-10 (Salmon et al., "Parallel
// random numbers: as easy as 1, 2, 3", SC 2011). The keep/drop decision for score (bh, i, j) is a
// pure function of (seed, bh, i, j), so the forward and the backward draw the same mask in any
// block order and on any thread count. Plain C++ (host and device), no torch.
#pragma once

#include <cstdint>

#if !defined(__CUDACC__) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#endif

#if defined(__CUDACC__)
#define ZENATTN_HD __host__ __device__ __forceinline__
#else
#define ZENATTN_HD inline
#endif

// The CPU kernels include this from files compiled once per instruction set (DEFAULT, AVX2,
// AVX512), and DropoutRng::keep_flags differs between them. An inline namespace named after the
// build's vector code gives each its own symbols (still spelled zenattn::DropoutRng): otherwise the
// linker could keep one build's copy of an inline function for all of them (an ODR violation: the
// AVX-512 copy on a CPU without AVX-512, or the scalar one everywhere).
#if !defined(__CUDACC__) && defined(__AVX512F__)
#define ZENATTN_PHILOX_NS philox_avx512
#elif !defined(__CUDACC__) && defined(__AVX2__)
#define ZENATTN_PHILOX_NS philox_avx2
#else
#define ZENATTN_PHILOX_NS philox_scalar
#endif

namespace zenattn {
inline namespace ZENATTN_PHILOX_NS {

struct Philox4 {
  uint32_t v[4];
};

// Four 32-bit words for counter (c0, c1, c2, c3) under the 64-bit key.
ZENATTN_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;   // round multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;   // key schedule (Weyl) increments
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kM0) * c0, p1 = uint64_t(kM1) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Dropout for attention score (bh, i, j), bh = b * heads + h: one Philox call covers the four
// keys j = 4t .. 4t+3 of a row. A score is kept when its uniform draw u in [0, 1) is >= p.
struct DropoutRng {
  uint64_t seed;
  uint32_t threshold;  // keep iff (word >> 8) >= threshold, threshold = ceil(p * 2^24)

  ZENATTN_HD static uint32_t threshold_for(double p) {
    const double t = p * 16777216.0;
    const uint32_t f = uint32_t(t);
    return double(f) < t ? f + 1 : f;
  }

  // Counter word 3: the high bits of key block t, row i and head bh folded together.
  ZENATTN_HD static uint32_t high_word(uint64_t bh, uint64_t i, uint64_t t) {
    return uint32_t((bh >> 32) ^ ((i >> 32) << 12) ^ ((t >> 32) << 24));
  }

  // Keep flags for keys 4t .. 4t+3 of row i of head bh, as bits 0..3.
  ZENATTN_HD uint32_t keep4(uint64_t bh, uint64_t i, uint64_t t) const {
    const Philox4 r = philox4x32_10(uint32_t(t), uint32_t(i), uint32_t(bh), high_word(bh, i, t), seed);
    uint32_t bits = 0;
    for (int w = 0; w < 4; ++w) bits |= uint32_t((r.v[w] >> 8) >= threshold) << w;
    return bits;
  }

#if !defined(__CUDA_ARCH__)
  // keep[c] = 1 if score (bh, i, j0 + c) is kept, for c < n (Flag: any arithmetic type). On the CPU,
  // keep4 of 16 (AVX-512) or 8 (AVX2) key blocks at once, the Philox streams in vector lanes: the
  // 32x32 -> 64-bit products as even/odd-lane _mm*_mul_epu32. Elsewhere one keep4 per key block.
  template <typename Flag>
  void keep_flags(uint64_t bh, uint64_t i, int64_t j0, int64_t n, Flag* keep) const {
    int64_t t = j0 >> 2;
    const int64_t t_end = (j0 + n + 3) >> 2;
#if defined(__AVX512F__) || defined(__AVX2__)
    for (; t < t_end; t += kLanes) {
      uint32_t masks[4];  // bit l of masks[w]: key 4 (t + l) + w is kept
      keep_masks(bh, i, t, masks);
      const int64_t base = t * 4 - j0;  // index in keep of key 4 t
      if (base >= 0 && base + 4 * kLanes <= n) {  // the whole batch inside: no bounds checks
        for (int l = 0; l < kLanes; ++l)
          for (int w = 0; w < 4; ++w) keep[base + 4 * l + w] = Flag((masks[w] >> l) & 1u);
        continue;
      }
      for (int l = 0; l < kLanes; ++l)
        for (int w = 0; w < 4; ++w) {
          const int64_t c = base + 4 * l + w;
          if (c >= 0 && c < n) keep[c] = Flag((masks[w] >> l) & 1u);
        }
    }
#endif
    for (; t < t_end; ++t) {
      const uint32_t bits = keep4(bh, i, uint64_t(t));
      for (int w = 0; w < 4; ++w) {
        const int64_t c = t * 4 + w - j0;
        if (c >= 0 && c < n) keep[c] = Flag((bits >> w) & 1u);
      }
    }
  }

 private:
#if defined(__AVX512F__)
  using VecU32 = __m512i;
  static constexpr int kLanes = 16;
  static VecU32 splat(uint32_t x) { return _mm512_set1_epi32(int(x)); }
  static VecU32 vxor(VecU32 a, VecU32 b) { return _mm512_xor_si512(a, b); }
  // High and low 32 bits of a * m, lane by lane.
  static void mul_hi_lo(VecU32 a, uint32_t m, VecU32& hi, VecU32& lo) {
    const VecU32 mv = splat(m);
    const VecU32 even = _mm512_mul_epu32(a, mv);                        // a[2q] * m in qword q
    const VecU32 odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), mv);  // a[2q+1] * m
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    lo = _mm512_mullo_epi32(a, mv);
  }
  static uint32_t at_least(VecU32 w, uint32_t threshold) {
    return _mm512_cmpge_epu32_mask(_mm512_srli_epi32(w, 8), splat(threshold));
  }
  static VecU32 lane_index() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static VecU32 add(VecU32 a, VecU32 b) { return _mm512_add_epi32(a, b); }
#elif defined(__AVX2__)
  using VecU32 = __m256i;
  static constexpr int kLanes = 8;
  static VecU32 splat(uint32_t x) { return _mm256_set1_epi32(int(x)); }
  static VecU32 vxor(VecU32 a, VecU32 b) { return _mm256_xor_si256(a, b); }
  static void mul_hi_lo(VecU32 a, uint32_t m, VecU32& hi, VecU32& lo) {
    const VecU32 mv = splat(m);
    const VecU32 even = _mm256_mul_epu32(a, mv);
    const VecU32 odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), mv);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_mullo_epi32(a, mv);
  }
  static uint32_t at_least(VecU32 w, uint32_t threshold) {
    // unsigned a >= b  <=>  max(a, b) == a
    const VecU32 a = _mm256_srli_epi32(w, 8);
    const VecU32 ge = _mm256_cmpeq_epi32(_mm256_max_epu32(a, splat(threshold)), a);
    return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(ge)));
  }
  static VecU32 lane_index() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static VecU32 add(VecU32 a, VecU32 b) { return _mm256_add_epi32(a, b); }
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
  // masks[w] bit l: the keep flag of word w of keep4(bh, i, t + l), for the kLanes lanes l.
  void keep_masks(uint64_t bh, uint64_t i, int64_t t, uint32_t (&masks)[4]) const {
    constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
    VecU32 c0 = add(splat(uint32_t(t)), lane_index());
    VecU32 c1 = splat(uint32_t(i)), c2 = splat(uint32_t(bh));
    // the high word depends on t >> 32 only: one value unless the lanes cross a 2^32 boundary
    const uint64_t t_last = uint64_t(t) + kLanes - 1;
    if ((uint64_t(t) >> 32) != (t_last >> 32)) {  // never in practice; keep the lanes exact anyway
      keep_masks_scalar(bh, i, t, masks);
      return;
    }
    VecU32 c3 = splat(high_word(bh, i, uint64_t(t)));
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      VecU32 hi0, lo0, hi1, lo1;
      mul_hi_lo(c0, kM0, hi0, lo0);
      mul_hi_lo(c2, kM1, hi1, lo1);
      c0 = vxor(vxor(hi1, c1), splat(k0));
      c2 = vxor(vxor(hi0, c3), splat(k1));
      c1 = lo1;
      c3 = lo0;
      k0 += kW0;
      k1 += kW1;
    }
    masks[0] = at_least(c0, threshold);
    masks[1] = at_least(c1, threshold);
    masks[2] = at_least(c2, threshold);
    masks[3] = at_least(c3, threshold);
  }
  void keep_masks_scalar(uint64_t bh, uint64_t i, int64_t t, uint32_t (&masks)[4]) const {
    masks[0] = masks[1] = masks[2] = masks[3] = 0;
    for (int l = 0; l < kLanes; ++l) {
      const uint32_t bits = keep4(bh, i, uint64_t(t) + l);
      for (int w = 0; w < 4; ++w) masks[w] |= ((bits >> w) & 1u) << l;
    }
  }
#endif
#endif
};

}  // inline namespace ZENATTN_PHILOX_NS
}  // namespace zenattn

#undef ZENATTN_PHILOX_NS
