// Flash-attention forward on CUDA (sm_80+), FlashAttention-2 style: one program of 4 warps per 64
// queries of one (batch, head), each warp owning 16 query rows. K and V stream through shared memory
// in 64-key tiles, double-buffered with cp.async so the next tile loads while this one computes.
// Per tile, in registers: S = Q K^T (mma.sync), the mask, the online softmax (running row max m and
// sum l, the output rescaled by exp(m_old - m_new)), and O += P V with P taken straight from S's
// accumulators. Scores stay in natural units until after the max is subtracted (exp2 of
// (s - m) * log2 e): folding log2 e into the scores first would round the max and the scores
// differently, which at |s| ~ 1e10 turns p = 1 into 0. Fully masked rows: output 0, LSE -inf.
// Included once per head dim by attention_fwd_hdim{64,128}.cu.
#pragma once

#include "attention_common.cuh"

namespace zenattn {
namespace cuda {
namespace attn {

constexpr int kFwdBlockM = 64;  // queries per program (16 per warp)
constexpr int kFwdBlockN = 64;  // keys per tile

template <int D>
constexpr int fwd_smem_bytes() {  // Q, then K and V twice (double buffer)
  return (kFwdBlockM + 4 * kFwdBlockN) * kRowStride<D> * 2;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(AttnFwdParams p) {
  static_assert(D % 16 == 0, "head dim must be a multiple of 16");
  constexpr int kNT = kFwdBlockN / 8;  // S accumulator tiles per warp (8 keys each)
  constexpr int kDT = D / 8;           // O accumulator tiles per warp (8 dims each)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* q_tile = reinterpret_cast<T*>(smem_raw);
  T* k_tiles = q_tile + kFwdBlockM * kRowStride<D>;   // [2][kFwdBlockN][row]
  T* v_tiles = k_tiles + 2 * kFwdBlockN * kRowStride<D>;

  const AttnShape& s = p.s;
  const int64_t b = blockIdx.z, h = blockIdx.y, m0 = int64_t(blockIdx.x) * kFwdBlockM;
  const int64_t hk = h / (s.heads_q / s.heads_kv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* q = static_cast<const T*>(p.q) + b * p.q_st.b + h * p.q_st.h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_st.b + hk * p.k_st.h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_st.b + hk * p.v_st.h;
  const int64_t row_base = (b * s.heads_q + h) * s.len_q;  // of out / lse (contiguous)

  // Output accumulators (16 x D per warp), running max and partial sum of rows g and g + 8.
  float o[kDT][4] = {};
  float m_run[2] = {-kInf, -kInf}, l_run[2] = {0.0f, 0.0f};

  int64_t lo, hi;
  key_range(s, m0, kFwdBlockM, lo, hi);
  const int64_t n_first = (lo / kFwdBlockN) * kFwdBlockN;

  // -- prologue: Q and the first K/V tile
  load_tile<D, kFwdBlockM>(q_tile, q + m0 * p.q_st.n, p.q_st.n, s.len_q - m0);
  if (n_first < hi) load_kv_tiles<D, kFwdBlockN>(k_tiles, v_tiles, 0, k, v, p, n_first);
  cp_async_commit();

  int buf = 0;
  for (int64_t n0 = n_first; n0 < hi; n0 += kFwdBlockN, buf ^= 1) {
    // -- prefetch the next tile into the other buffer (last read before the previous barrier)
    const int64_t n_next = n0 + kFwdBlockN;
    if (n_next < hi) load_kv_tiles<D, kFwdBlockN>(k_tiles, v_tiles, buf ^ 1, k, v, p, n_next);
    cp_async_commit();
    cp_async_wait<1>();  // everything but the prefetch just issued has landed
    __syncthreads();
    const T* kt = k_tiles + buf * kFwdBlockN * kRowStride<D>;
    const T* vt = v_tiles + buf * kFwdBlockN * kRowStride<D>;

    // -- S = Q K^T for this warp's 16 rows and the tile's 64 keys
    float sc[kNT][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      load_a<D>(a, q_tile, warp * 16, kk * 16);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bf[2][2];
        load_b_nk<D>(bf, kt, np * 16, kk * 16);
        mma<T>(sc[2 * np], a, bf[0]);
        mma<T>(sc[2 * np + 1], a, bf[1]);
      }
    }

    // -- mask, scale, and the online softmax of rows g (r = 0) and g + 8 (r = 1)
    float tile_max[2] = {-kInf, -kInf};
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const layout::RowCol at = layout::acc_elem(lane, e);
        const int64_t i = m0 + warp * 16 + at.row, j = n0 + nt * 8 + at.col;
        sc[nt][e] = allowed(s, i, j) ? sc[nt][e] * s.scale : -kInf;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], sc[nt][e]);
      }
    }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m_run[r], quad_max(tile_max[r]));
      m_use[r] = m_new == -kInf ? 0.0f : m_new;  // nothing allowed yet: exp(-inf - 0) = 0, no NaN
      alpha[r] = exp2f((m_run[r] - m_use[r]) * kLog2e);
      m_run[r] = m_new;
      l_run[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sc[nt][e] = exp2f((sc[nt][e] - m_use[e >> 1]) * kLog2e);
        l_run[e >> 1] += sc[nt][e];  // this lane's share; the quad's are summed at the end
      }
    }
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[dt][e] *= alpha[e >> 1];
    }

    // -- O += P V, P from the S accumulators (rounded to T)
#pragma unroll
    for (int kk = 0; kk < kFwdBlockN / 16; ++kk) {
      uint32_t a[4];
      to_operand_a<T>(a, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < kDT / 2; ++dp) {
        uint32_t bf[2][2];
        load_b_kn<D>(bf, vt, kk * 16, dp * 16);
        mma<T>(o[2 * dp], a, bf[0]);
        mma<T>(o[2 * dp + 1], a, bf[1]);
      }
    }
    __syncthreads();  // this buffer is refilled by the prefetch two tiles on
  }
  cp_async_wait<0>();

  // -- epilogue: O / l and the LSE; rows past len_q are not written
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // fully masked row: output 0
    const int64_t i = m0 + warp * 16 + g + r * 8;
    if (i >= s.len_q) continue;
    T* out_row = static_cast<T*>(p.out) + (row_base + i) * D;
    float* acc_row = p.out_acc ? p.out_acc + (row_base + i) * D : nullptr;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      const float x0 = o[dt][2 * r] * inv, x1 = o[dt][2 * r + 1] * inv;
      const int col = dt * 8 + 2 * t;
      store2<T>(out_row + col, x0, x1);
      if (acc_row) *reinterpret_cast<float2*>(acc_row + col) = make_float2(x0, x1);
    }
    if (t == 0) p.lse[row_base + i] = l > 0.0f ? m_run[r] + logf(l) : -kInf;
  }
}

template <int D>
cudaError_t launch_attention_fwd(const AttnFwdParams& p, cudaStream_t stream) {
  if (p.s.len_q == 0 || p.s.batch == 0 || p.s.heads_q == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((p.s.len_q + kFwdBlockM - 1) / kFwdBlockM),
                  static_cast<unsigned>(p.s.heads_q), static_cast<unsigned>(p.s.batch));
  return dispatch_half(p.s.dtype, [&](auto zero) {
    using T = decltype(zero);
    return launch_with_smem(attention_fwd_kernel<T, D>, grid, fwd_smem_bytes<D>(), stream, p);
  });
}

}  // namespace attn
}  // namespace cuda
}  // namespace zenattn
