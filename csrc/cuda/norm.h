// Torch-facing launchers of the CUDA LayerNorm / RMSNorm kernels (csrc/cuda/norm.cpp).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

namespace zenattn {
namespace cuda {

// x (rows, n) with a unit last stride; weight, bias (n); residual like x; dropout on x with
// probability dropout_p (0: none) under `seed`. Returns [y (rows, n), s = dropout(x) + residual
// (rows, n) or empty when neither is on, mean (rows) float32 or empty for RMSNorm, rstd (rows) float32].
std::vector<at::Tensor> norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                 double eps, bool rms, int64_t seed, double dropout_p, int64_t stream);

// dy, dsum, x (rows, n): x is what was normalized (s when fused). Returns [dx (rows, n): the input's
// gradient, dsum added (through the dropout mask when dropout_p > 0), dweight (n) or empty, dbias (n)
// or empty, dresidual (rows, n) when dropout and a residual were both on, else empty (dx serves)].
// eps: RMSNorm's (for one column, where dx = g * eps * rstd^3). `stream` must be torch's current
// stream of x's device.
std::vector<at::Tensor> norm_bwd(const at::Tensor& dy, const std::optional<at::Tensor>& dsum, const at::Tensor& x,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mean,
                                 const at::Tensor& rstd, bool has_bias, bool rms, double eps, int64_t seed,
                                 double dropout_p, bool has_residual, int64_t stream);

}  // namespace cuda
}  // namespace zenattn
