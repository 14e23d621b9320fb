// Flash-attention backward on CUDA (sm_80+), FlashAttention-2 style, in two kernels that recompute
// the probabilities from Q, K and the saved LSE, with every product on tensor cores (mma.sync) and
// every operand taken from registers or ldmatrix, and no atomics (deterministic):
//
//   dQ kernel    one program per 64 queries of a (batch, head), in the forward's orientation:
//                S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - delta), dQ += dS K
//   dK/dV kernel one program per 64 keys of a (batch, kv head), transposed, so keys are the rows
//                (the mma's m) and P^T, dS^T land in the layout of an A operand:
//                S^T = K Q^T, P^T = exp(S^T - lse), dV += P^T dO, dP^T = V dO^T,
//                dS^T = P^T (dP^T - delta), dK += dS^T Q; over every query of the heads sharing the kv head
//
// with delta = rowsum(dO * O) - dlse precomputed by the launcher, and dQ, dK scaled by the softmax
// scale at the end. P and dS are rounded to the input dtype before their products, as in
// FlashAttention-2. Included once per head dim by attention_bwd_hdim{64,128}.cu.
#pragma once

#include "attention_common.cuh"

namespace zenattn {
namespace cuda {
namespace attn {

constexpr int kDqBlockM = 64;    // queries per dQ program (16 per warp)
constexpr int kDqBlockN = 64;    // keys per tile
constexpr int kDkvBlockN = 64;   // keys per dK/dV program (16 per warp)
constexpr int kDkvBlockM = 32;   // queries per tile (fewer than 64 keep dK, dV, S^T, dP^T in registers)

template <int D>
constexpr int dq_smem_bytes() {  // Q, dO, then K and V twice
  return (2 * kDqBlockM + 4 * kDqBlockN) * kRowStride<D> * 2;
}
template <int D>
constexpr int dkdv_smem_bytes() {  // K, V, then Q and dO twice; then lse and delta of both tiles
  return (2 * kDkvBlockN + 4 * kDkvBlockM) * kRowStride<D> * 2 + 2 * 2 * kDkvBlockM * 4;
}

// P (natural units) of score s against the row's LSE; a fully masked row (lse = -inf) gives 0.
__device__ __forceinline__ float prob(float s, float lse) {
  return lse == -kInf ? 0.0f : exp2f((s - lse) * kLog2e);
}

// ---- dQ -----------------------------------------------------------------------------------------

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(AttnBwdParams p) {
  constexpr int kNT = kDqBlockN / 8, kDT = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* q_tile = reinterpret_cast<T*>(smem_raw);
  T* do_tile = q_tile + kDqBlockM * kRowStride<D>;
  T* k_tiles = do_tile + kDqBlockM * kRowStride<D>;  // [2][kDqBlockN][row]
  T* v_tiles = k_tiles + 2 * kDqBlockN * kRowStride<D>;

  const AttnShape& s = p.s;
  const int64_t b = blockIdx.z, h = blockIdx.y, m0 = int64_t(blockIdx.x) * kDqBlockM;
  const int64_t hk = h / (s.heads_q / s.heads_kv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* q = static_cast<const T*>(p.q) + b * p.q_st.b + h * p.q_st.h;
  const T* dout = static_cast<const T*>(p.dout) + b * p.do_st.b + h * p.do_st.h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_st.b + hk * p.k_st.h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_st.b + hk * p.v_st.h;
  const int64_t row_base = (b * s.heads_q + h) * s.len_q;

  float lse[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = m0 + warp * 16 + g + r * 8;
    lse[r] = i < s.len_q ? p.lse[row_base + i] : -kInf;
    delta[r] = i < s.len_q ? p.delta[row_base + i] : 0.0f;
  }
  float dq[kDT][4] = {};

  int64_t lo, hi;
  key_range(s, m0, kDqBlockM, lo, hi);
  const int64_t n_first = (lo / kDqBlockN) * kDqBlockN;
  load_tile<D, kDqBlockM>(q_tile, q + m0 * p.q_st.n, p.q_st.n, s.len_q - m0);
  load_tile<D, kDqBlockM>(do_tile, dout + m0 * p.do_st.n, p.do_st.n, s.len_q - m0);
  if (n_first < hi) load_kv_tiles<D, kDqBlockN>(k_tiles, v_tiles, 0, k, v, p, n_first);
  cp_async_commit();

  int buf = 0;
  for (int64_t n0 = n_first; n0 < hi; n0 += kDqBlockN, buf ^= 1) {
    const int64_t n_next = n0 + kDqBlockN;
    if (n_next < hi) load_kv_tiles<D, kDqBlockN>(k_tiles, v_tiles, buf ^ 1, k, v, p, n_next);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* kt = k_tiles + buf * kDqBlockN * kRowStride<D>;
    const T* vt = v_tiles + buf * kDqBlockN * kRowStride<D>;

    // -- S = Q K^T and dP = dO V^T (both 16 x 64 per warp)
    float sc[kNT][4] = {}, dp[kNT][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4], ado[4];
      load_a<D>(aq, q_tile, warp * 16, kk * 16);
      load_a<D>(ado, do_tile, warp * 16, kk * 16);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bk[2][2], bv[2][2];
        load_b_nk<D>(bk, kt, np * 16, kk * 16);
        load_b_nk<D>(bv, vt, np * 16, kk * 16);
        mma<T>(sc[2 * np], aq, bk[0]);
        mma<T>(sc[2 * np + 1], aq, bk[1]);
        mma<T>(dp[2 * np], ado, bv[0]);
        mma<T>(dp[2 * np + 1], ado, bv[1]);
      }
    }
    // -- dS = P (dP - delta), in sc
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const layout::RowCol at = layout::acc_elem(lane, e);
        const int64_t i = m0 + warp * 16 + at.row, j = n0 + nt * 8 + at.col;
        const float pr = allowed(s, i, j) ? prob(sc[nt][e] * s.scale, lse[r]) : 0.0f;
        sc[nt][e] = pr * (dp[nt][e] - delta[r]);
      }
    }
    // -- dQ += dS K
#pragma unroll
    for (int kk = 0; kk < kDqBlockN / 16; ++kk) {
      uint32_t a[4];
      to_operand_a<T>(a, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
      for (int dp2 = 0; dp2 < kDT / 2; ++dp2) {
        uint32_t bk[2][2];
        load_b_kn<D>(bk, kt, kk * 16, dp2 * 16);
        mma<T>(dq[2 * dp2], a, bk[0]);
        mma<T>(dq[2 * dp2 + 1], a, bk[1]);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = m0 + warp * 16 + g + r * 8;
    if (i >= s.len_q) continue;
    T* row = static_cast<T*>(p.dq) + (row_base + i) * D;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) store2<T>(row + dt * 8 + 2 * t, dq[dt][2 * r] * s.scale, dq[dt][2 * r + 1] * s.scale);
  }
}

// ---- dK, dV -------------------------------------------------------------------------------------

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_kernel(AttnBwdParams p) {
  constexpr int kMT = kDkvBlockM / 8, kDT = D / 8;  // S^T tiles (8 queries each), dK/dV tiles
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* k_tile = reinterpret_cast<T*>(smem_raw);
  T* v_tile = k_tile + kDkvBlockN * kRowStride<D>;
  T* q_tiles = v_tile + kDkvBlockN * kRowStride<D>;    // [2][kDkvBlockM][row]
  T* do_tiles = q_tiles + 2 * kDkvBlockM * kRowStride<D>;
  float* stats = reinterpret_cast<float*>(do_tiles + 2 * kDkvBlockM * kRowStride<D>);  // [2][lse, delta][kDkvBlockM]

  const AttnShape& s = p.s;
  const int64_t b = blockIdx.z, hk = blockIdx.y, n0 = int64_t(blockIdx.x) * kDkvBlockN;
  const int64_t group = s.heads_q / s.heads_kv;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* k = static_cast<const T*>(p.k) + b * p.k_st.b + hk * p.k_st.h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_st.b + hk * p.v_st.h;

  float dk[kDT][4] = {}, dv[kDT][4] = {};
  int64_t lo, hi;
  query_range(s, n0, kDkvBlockN, lo, hi);
  const int64_t m_first = (lo / kDkvBlockM) * kDkvBlockM;
  const int64_t tiles_per_head = hi > m_first ? (hi - m_first + kDkvBlockM - 1) / kDkvBlockM : 0;
  const int64_t steps = tiles_per_head * group;  // (head, query tile) pairs, head-major

  // Q, dO, lse and delta of step `st` into buffer `bf`.
  auto load_step = [&](int64_t st, int bf) {
    const int64_t h = hk * group + st / tiles_per_head, m0 = m_first + (st % tiles_per_head) * kDkvBlockM;
    const T* q = static_cast<const T*>(p.q) + b * p.q_st.b + h * p.q_st.h;
    const T* dout = static_cast<const T*>(p.dout) + b * p.do_st.b + h * p.do_st.h;
    load_tile<D, kDkvBlockM>(q_tiles + bf * kDkvBlockM * kRowStride<D>, q + m0 * p.q_st.n, p.q_st.n, s.len_q - m0);
    load_tile<D, kDkvBlockM>(do_tiles + bf * kDkvBlockM * kRowStride<D>, dout + m0 * p.do_st.n, p.do_st.n,
                             s.len_q - m0);
    const int64_t row_base = (b * s.heads_q + h) * s.len_q;
    for (int c = threadIdx.x; c < kDkvBlockM; c += kThreads) {  // plain loads: read after the barrier
      const int64_t i = m0 + c;
      stats[(bf * 2 + 0) * kDkvBlockM + c] = i < s.len_q ? p.lse[row_base + i] : -kInf;
      stats[(bf * 2 + 1) * kDkvBlockM + c] = i < s.len_q ? p.delta[row_base + i] : 0.0f;
    }
  };

  load_kv_tiles<D, kDkvBlockN>(k_tile, v_tile, 0, k, v, p, n0);
  if (steps > 0) load_step(0, 0);
  cp_async_commit();

  int buf = 0;
  for (int64_t st = 0; st < steps; ++st, buf ^= 1) {
    if (st + 1 < steps) load_step(st + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int64_t m0 = m_first + (st % tiles_per_head) * kDkvBlockM;
    const T* qt = q_tiles + buf * kDkvBlockM * kRowStride<D>;
    const T* dot = do_tiles + buf * kDkvBlockM * kRowStride<D>;
    const float* lse = stats + (buf * 2 + 0) * kDkvBlockM;
    const float* delta = stats + (buf * 2 + 1) * kDkvBlockM;

    // -- S^T = K Q^T and dP^T = V dO^T (16 keys x 32 queries per warp)
    float sc[kMT][4] = {}, dp[kMT][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4], av[4];
      load_a<D>(ak, k_tile, warp * 16, kk * 16);
      load_a<D>(av, v_tile, warp * 16, kk * 16);
#pragma unroll
      for (int mp = 0; mp < kMT / 2; ++mp) {
        uint32_t bq[2][2], bdo[2][2];
        load_b_nk<D>(bq, qt, mp * 16, kk * 16);
        load_b_nk<D>(bdo, dot, mp * 16, kk * 16);
        mma<T>(sc[2 * mp], ak, bq[0]);
        mma<T>(sc[2 * mp + 1], ak, bq[1]);
        mma<T>(dp[2 * mp], av, bdo[0]);
        mma<T>(dp[2 * mp + 1], av, bdo[1]);
      }
    }
    // -- P^T (in sc) and dS^T (in dp); column c of the tile is query m0 + c
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const layout::RowCol at = layout::acc_elem(lane, e);  // rows: keys, columns: queries
        const int c = mt * 8 + at.col;
        const int64_t j = n0 + warp * 16 + at.row, i = m0 + c;
        const float pr = allowed(s, i, j) ? prob(sc[mt][e] * s.scale, lse[c]) : 0.0f;
        sc[mt][e] = pr;
        dp[mt][e] = pr * (dp[mt][e] - delta[c]);
      }
    }
    // -- dV += P^T dO and dK += dS^T Q
#pragma unroll
    for (int kk = 0; kk < kDkvBlockM / 16; ++kk) {
      uint32_t ap[4], ads[4];
      to_operand_a<T>(ap, sc[2 * kk], sc[2 * kk + 1]);
      to_operand_a<T>(ads, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int dp2 = 0; dp2 < kDT / 2; ++dp2) {
        uint32_t bdo[2][2], bq[2][2];
        load_b_kn<D>(bdo, dot, kk * 16, dp2 * 16);
        load_b_kn<D>(bq, qt, kk * 16, dp2 * 16);
        mma<T>(dv[2 * dp2], ap, bdo[0]);
        mma<T>(dv[2 * dp2 + 1], ap, bdo[1]);
        mma<T>(dk[2 * dp2], ads, bq[0]);
        mma<T>(dk[2 * dp2 + 1], ads, bq[1]);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  const int64_t row_base = (b * s.heads_kv + hk) * s.len_k;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = n0 + warp * 16 + g + r * 8;
    if (j >= s.len_k) continue;
    T* dk_row = static_cast<T*>(p.dk) + (row_base + j) * D;
    T* dv_row = static_cast<T*>(p.dv) + (row_base + j) * D;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      store2<T>(dk_row + dt * 8 + 2 * t, dk[dt][2 * r] * s.scale, dk[dt][2 * r + 1] * s.scale);
      store2<T>(dv_row + dt * 8 + 2 * t, dv[dt][2 * r], dv[dt][2 * r + 1]);
    }
  }
}

template <int D>
cudaError_t launch_attention_bwd(const AttnBwdParams& p, cudaStream_t stream) {
  const AttnShape& s = p.s;
  if (s.batch == 0 || s.heads_q == 0) return cudaSuccess;
  return dispatch_half(s.dtype, [&](auto zero) {
    using T = decltype(zero);
    cudaError_t err = cudaSuccess;
    if (s.len_q > 0) {
      const dim3 grid(static_cast<unsigned>((s.len_q + kDqBlockM - 1) / kDqBlockM), static_cast<unsigned>(s.heads_q),
                      static_cast<unsigned>(s.batch));
      err = launch_with_smem(attention_bwd_dq_kernel<T, D>, grid, dq_smem_bytes<D>(), stream, p);
    }
    if (err == cudaSuccess && s.len_k > 0) {
      const dim3 grid(static_cast<unsigned>((s.len_k + kDkvBlockN - 1) / kDkvBlockN),
                      static_cast<unsigned>(s.heads_kv), static_cast<unsigned>(s.batch));
      err = launch_with_smem(attention_bwd_dkdv_kernel<T, D>, grid, dkdv_smem_bytes<D>(), stream, p);
    }
    return err;
  });
}

}  // namespace attn
}  // namespace cuda
}  // namespace zenattn
