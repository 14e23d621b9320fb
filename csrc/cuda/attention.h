// Torch-facing launchers of the CUDA flash-attention kernels (csrc/cuda/attention.cpp).
#pragma once

#include <torch/extension.h>

#include <vector>

namespace zenattn {
namespace cuda {

// q (B, Hq, Nq, D), k and v (B, Hkv, Nk, D): float16 or bfloat16 CUDA tensors with a unit last
// stride and 16-byte aligned rows, D 64 or 128, Hkv dividing Hq. window_left / window_right: -1 for
// unbounded (causal: right = 0); bottom_right aligns the diagonal to the last key. Returns
// [out (B, Hq, Nq, D) in q's dtype, lse (B, Hq, Nq) float32, out_acc (B, Hq, Nq, D) float32].
// `stream` must be torch's current stream of q's device.
std::vector<at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                      int64_t window_left, int64_t window_right, bool bottom_right, int64_t stream);

// dout like q; lse and delta = rowsum(dout * out) - dlse, (B, Hq, Nq) float32. Returns [dq, dk, dv].
std::vector<at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& lse, const at::Tensor& delta,
                                      double scale, int64_t window_left, int64_t window_right, bool bottom_right,
                                      int64_t stream);

}  // namespace cuda
}  // namespace zenattn
