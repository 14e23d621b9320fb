// Counter-based random numbers for attention dropout: Philox4x32-10 (Salmon et al., "Parallel
// random numbers: as easy as 1, 2, 3", SC 2011). The keep/drop decision for score (bh, i, j) is a
// pure function of (seed, bh, i, j), so the forward and the backward draw the same mask in any
// block order and on any thread count. Plain C++ (host and device), no torch.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define ZENATTN_HD __host__ __device__ __forceinline__
#else
#define ZENATTN_HD inline
#endif

namespace zenattn {

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

  // Keep flags for keys 4t .. 4t+3 of row i of head bh, as bits 0..3.
  ZENATTN_HD uint32_t keep4(uint64_t bh, uint64_t i, uint64_t t) const {
    // Counter words: key block t, row i, head bh; the high bits of all three fold into the last.
    const uint32_t high = uint32_t((bh >> 32) ^ ((i >> 32) << 12) ^ ((t >> 32) << 24));
    const Philox4 r = philox4x32_10(uint32_t(t), uint32_t(i), uint32_t(bh), high, seed);
    uint32_t bits = 0;
    for (int w = 0; w < 4; ++w) bits |= uint32_t((r.v[w] >> 8) >= threshold) << w;
    return bits;
  }
};

}  // namespace zenattn
