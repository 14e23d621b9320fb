// Which matrix element each lane of a warp addresses or holds in the attention kernels' tensor-core
// steps (mma.sync m16n8k16 and ldmatrix .x4, PTX ISA "Matrix fragments for mma.m16n8k16" and
// "ldmatrix"). Plain host/device arithmetic, no CUDA headers: the kernels (attention_common.cuh)
// use these, and tests/cuda_layout_check.cpp compiles them with g++ against an emulation of the
// two PTX instructions, so the index math is checked on machines without a GPU.
#pragma once

#if defined(__CUDACC__)
#define ZENATTN_LAYOUT_FN __host__ __device__ __forceinline__ constexpr
#else
#define ZENATTN_LAYOUT_FN inline constexpr
#endif

namespace zenattn {
namespace cuda {
namespace layout {

struct RowCol {
  int row, col;
};

// ldmatrix .x4: lane L supplies the address of one 8-element row: row L % 8 of matrix L / 8.
// A operand (16x16, m x k) from a row-major tile: matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15)
// in the order a0a1, a2a3, a4a5, a6a7 of the mma's A registers.
ZENATTN_LAYOUT_FN RowCol lane_a(int lane, int row0, int col0) {
  return {row0 + (lane & 7) + ((lane >> 3) & 1) * 8, col0 + (lane >> 4) * 8};
}

// B operands of two n-tiles (n 0-7 and 8-15) from a tile with n along its rows, k along its columns
// (K for S = Q K^T): registers {r0, r1} feed n-tile 0, {r2, r3} n-tile 1.
ZENATTN_LAYOUT_FN RowCol lane_b_nk(int lane, int n0, int k0) {
  return {n0 + (lane & 7) + (lane >> 4) * 8, k0 + ((lane >> 3) & 1) * 8};
}

// B operands of two n-tiles from a tile with k along its rows, n along its columns, loaded with
// ldmatrix .trans (V for O = P V): registers {r0, r1} feed n-tile 0, {r2, r3} n-tile 1.
ZENATTN_LAYOUT_FN RowCol lane_b_kn(int lane, int k0, int n0) {
  return {k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8};
}

// Accumulator element e (0..3) of lane: row g or g + 8, column 2t or 2t + 1 of the 16x8 tile.
ZENATTN_LAYOUT_FN RowCol acc_elem(int lane, int e) {
  return {(lane >> 2) + (e >> 1) * 8, 2 * (lane & 3) + (e & 1)};
}

// A register r (0..3) made from two accumulator tiles (cols 0-7 "lo", 8-15 "hi" of a 16x16 block):
// the pair of elements (first, first + 1) of tile `hi`.
struct AccPair {
  int hi, first;
};
ZENATTN_LAYOUT_FN AccPair a_reg_from_acc(int r) { return {r >> 1, (r & 1) * 2}; }

}  // namespace layout
}  // namespace cuda
}  // namespace zenattn
