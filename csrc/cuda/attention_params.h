// Parameters of the CUDA flash-attention kernels (csrc/cuda/attention_fwd.cuh, attention_bwd.cuh,
// instantiated once per head dim in attention_{fwd,bwd}_hdim{64,128}.cu). Plain structs and a
// stream, no torch: nvcc compiles each file in seconds (DESIGN.md section 7); csrc/cuda/attention.cpp
// fills them from tensors.
//
// Layout (B, H, N, D) like F.scaled_dot_product_attention, any batch/head/row strides (in elements)
// with a unit last stride; rows 16-byte aligned (the launcher copies inputs that are not). Query head h
// reads key/value head h / (heads_q / heads_kv) (GQA, grouped like repeat_interleave).
// Query i may attend key j iff j < len_k and, with rel = i + offset - j (how far key j lies behind
// query i's diagonal): rel <= window_left (when >= 0) and rel >= -window_right (when >= 0). Causal
// is window_right = 0; offset is 0 for top-left alignment, len_k - len_q for bottom-right.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "norm_params.h"  // DType

namespace zenattn {
namespace cuda {

struct AttnShape {
  DType dtype;             // kFloat16 or kBFloat16
  int64_t batch, heads_q, heads_kv, len_q, len_k;
  int64_t offset;          // see above
  int window_left, window_right;  // -1: unbounded
  float scale;             // softmax scale (natural units)
};

// Strides of a (B, H, N, D) tensor in elements: batch, head, row.
struct Strides {
  int64_t b, h, n;
};

struct AttnFwdParams {
  AttnShape s;
  const void* q;           // (B, Hq, Nq, D)
  const void* k;           // (B, Hkv, Nk, D)
  const void* v;           // (B, Hkv, Nk, D)
  Strides q_st, k_st, v_st;
  void* out;               // (B, Hq, Nq, D) contiguous, the dtype
  float* out_acc;          // (B, Hq, Nq, D) contiguous float32 (kept for the backward's delta), or null
  float* lse;              // (B, Hq, Nq) contiguous: natural-log log-sum-exp of the scaled scores; -inf
                           // for a fully masked row (whose output is 0)
};

// The backward, FlashAttention-2 style in two kernels with no atomics (deterministic): one program
// per block of keys of a (batch, kv head) computes dK, dV over every query of the heads sharing it;
// one program per block of queries computes dQ. delta = rowsum(dO * O) - dlse comes precomputed.
struct AttnBwdParams {
  AttnShape s;
  const void* q;
  const void* k;
  const void* v;
  const void* dout;        // (B, Hq, Nq, D)
  Strides q_st, k_st, v_st, do_st;
  const float* lse;        // (B, Hq, Nq) contiguous
  const float* delta;      // (B, Hq, Nq) contiguous
  void* dq;                // (B, Hq, Nq, D) contiguous
  void* dk;                // (B, Hkv, Nk, D) contiguous
  void* dv;                // (B, Hkv, Nk, D) contiguous
};

// One instantiation per head dim (attention_{fwd,bwd}_hdim{64,128}.cu), so builds parallelize.
cudaError_t launch_attention_fwd_hdim64(const AttnFwdParams& p, cudaStream_t stream);
cudaError_t launch_attention_fwd_hdim128(const AttnFwdParams& p, cudaStream_t stream);
cudaError_t launch_attention_bwd_hdim64(const AttnBwdParams& p, cudaStream_t stream);
cudaError_t launch_attention_bwd_hdim128(const AttnBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace zenattn
