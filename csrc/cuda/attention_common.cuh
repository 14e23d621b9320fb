// Warp-level building blocks of the CUDA flash-attention kernels (sm_80+): tensor-core products
// (mma.sync m16n8k16, fp16/bf16 in, fp32 accumulate, through inline PTX), ldmatrix fragment loads,
// cp.async tile copies, and the score mask. Fragment layouts are those of the PTX ISA for
// mma.m16n8k16 ("Matrix fragments for mma.m16n8k16"): in a warp, lane = 4 * g + t holds
//   accumulator C (16x8, f32):  c0, c1 at (row g, cols 2t, 2t+1); c2, c3 at (row g + 8, same cols)
//   operand A (16x16, row-major): reg 0 = (g, 2t..2t+1), reg 1 = (g+8, 2t..), reg 2 = (g, 2t+8..),
//                                 reg 3 = (g+8, 2t+8..), two 16-bit elements per 32-bit register
//   operand B (16x8, "col"):      reg 0 = (rows 2t..2t+1, col g), reg 1 = (rows 2t+8..2t+9, col g)
// so two neighbouring C tiles (cols 0-7, 8-15) rounded to 16 bits are exactly one A operand: the
// probabilities P = softmax(S) feed the next product straight from registers (FlashAttention-2).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "attention_layout.h"
#include "attention_params.h"

namespace zenattn {
namespace cuda {
namespace attn {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = __builtin_huge_valf();

// Shared-memory tiles hold rows of D elements padded to D + 8: consecutive rows then start 16 bytes
// apart modulo 128, so the eight row addresses of an ldmatrix hit eight different bank groups.
template <int D>
constexpr int kRowStride = D + 8;

// ---- element types ------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);  // .x (low 16 bits) = lo
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// ---- tensor-core product -------------------------------------------------------------------------

// d (16x8 f32) += a (16x16) * b (16x8).
template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Two accumulator tiles (cols 0-7 and 8-15 of a 16x16 block) rounded to T: an A operand.
template <typename T>
__device__ __forceinline__ void to_operand_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const layout::AccPair src = layout::a_reg_from_acc(r);
    const float* tile = src.hi ? hi : lo;
    a[r] = pack2<T>(tile[src.first], tile[src.first + 1]);
  }
}

// ---- ldmatrix: fragments from a shared tile with rows of kRowStride<D> elements -------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// A operand: rows row0 .. row0+15 (m), cols col0 .. col0+15 (k) of a row-major tile.
template <int D, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int row0, int col0) {
  const layout::RowCol at = layout::lane_a(threadIdx.x & 31, row0, col0);
  ldmatrix_x4(a, tile + at.row * kRowStride<D> + at.col);
}

// B operands of two neighbouring n-tiles from a tile stored with n along its rows and k along its
// columns (keys x head dim for S = Q K^T): rows n0 .. n0+15 (b[0]: n0..n0+7, b[1]: n0+8..), cols k0 .. k0+15.
template <int D, typename T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[2][2], const T* tile, int n0, int k0) {
  const layout::RowCol at = layout::lane_b_nk(threadIdx.x & 31, n0, k0);
  uint32_t r[4];
  ldmatrix_x4(r, tile + at.row * kRowStride<D> + at.col);
  b[0][0] = r[0]; b[0][1] = r[1];
  b[1][0] = r[2]; b[1][1] = r[3];
}

// B operands of two neighbouring n-tiles from a tile stored with k along its rows and n along its
// columns (keys x head dim for O = P V): rows k0 .. k0+15, cols n0 .. n0+15 (b[0]: n0..n0+7, b[1]: n0+8..).
template <int D, typename T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[2][2], const T* tile, int k0, int n0) {
  const layout::RowCol at = layout::lane_b_kn(threadIdx.x & 31, k0, n0);
  uint32_t r[4];
  ldmatrix_x4_trans(r, tile + at.row * kRowStride<D> + at.col);
  b[0][0] = r[0]; b[0][1] = r[1];
  b[1][0] = r[2]; b[1][1] = r[3];
}

// ---- cp.async: global -> shared tiles ------------------------------------------------------------

// 16 bytes; when !valid, zeros (src-size 0 reads nothing), so padding rows never hold garbage.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Rows [0, ROWS) of a (rows, D) slab starting at `src` with `row_stride` (elements) into `tile`;
// rows at or past `rows_valid` are zero-filled. All threads of the block take part.
template <int D, int ROWS, typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t row_stride, int64_t rows_valid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < ROWS * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r < rows_valid;
    cp_async16(tile + r * kRowStride<D> + col, valid ? src + r * row_stride + col : src, valid);
  }
}

// Rows n0 .. n0 + ROWS - 1 of K and V (one batch and kv head: k, v point at its row 0) into buffer
// `buf` of the double-buffered tiles k_tiles, v_tiles ([2][ROWS][row] each). P: the params struct.
template <int D, int ROWS, typename T, typename P>
__device__ __forceinline__ void load_kv_tiles(T* k_tiles, T* v_tiles, int buf, const T* k, const T* v, const P& p,
                                              int64_t n0) {
  const int64_t at = int64_t(buf) * ROWS * kRowStride<D>;
  load_tile<D, ROWS>(k_tiles + at, k + n0 * p.k_st.n, p.k_st.n, p.s.len_k - n0);
  load_tile<D, ROWS>(v_tiles + at, v + n0 * p.v_st.n, p.v_st.n, p.s.len_k - n0);
}

// ---- the mask -------------------------------------------------------------------------------------

// Whether query i may attend key j (attention_params.h).
__device__ __forceinline__ bool allowed(const AttnShape& s, int64_t i, int64_t j) {
  const int64_t rel = i + s.offset - j;
  return j < s.len_k && i < s.len_q && (s.window_left < 0 || rel <= s.window_left) &&
         (s.window_right < 0 || rel >= -int64_t(s.window_right));
}

// [lo, hi): the keys any of queries m0 .. m0 + rows - 1 may attend.
__device__ __forceinline__ void key_range(const AttnShape& s, int64_t m0, int rows, int64_t& lo, int64_t& hi) {
  lo = s.window_left < 0 ? 0 : max(m0 + s.offset - s.window_left, int64_t(0));
  hi = s.window_right < 0 ? s.len_k : min(m0 + rows - 1 + s.offset + s.window_right + 1, s.len_k);
}

// [lo, hi): the queries that may attend any of keys n0 .. n0 + cols - 1.
__device__ __forceinline__ void query_range(const AttnShape& s, int64_t n0, int cols, int64_t& lo, int64_t& hi) {
  lo = s.window_right < 0 ? 0 : max(n0 - s.offset - s.window_right, int64_t(0));
  hi = s.window_left < 0 ? s.len_q : min(n0 + cols - 1 - s.offset + s.window_left + 1, s.len_q);
}

// Max and sum over the four lanes (t = 0..3) that share a row of an accumulator tile.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <typename T>
__device__ __forceinline__ void store2(T* dst, float a, float b) {
  *reinterpret_cast<uint32_t*>(dst) = pack2<T>(a, b);
}

// f(T{}) for the element type of `dtype` (kFloat16 / kBFloat16).
template <typename F>
cudaError_t dispatch_half(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

// Opt a kernel into `bytes` of dynamic shared memory (past the default 48 KiB), then launch it.
template <typename Kernel, typename Params>
cudaError_t launch_with_smem(Kernel kernel, dim3 grid, int bytes, cudaStream_t stream, const Params& p) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace attn
}  // namespace cuda
}  // namespace zenattn
