// Torch-facing launchers of the CUDA norm kernels: input checks with messages that name the
// argument, output allocation, then csrc/cuda/norm_fwd.cu / norm_bwd.cu on the stream the caller
// passes, which must be torch's current stream of the input's device
// (torch.cuda.current_stream().cuda_stream): allocations and the final sums run there too.
// Includes only torch/extension.h and the CUDA runtime, so it compiles without a GPU against a
// CPU torch (DESIGN.md section 7).
#include "cuda/norm.h"

#include <climits>

#include "common/philox.h"
#include "cuda/norm_params.h"

namespace zenattn {
namespace cuda {
namespace {

constexpr const char* kOp = "zenattn cuda norm";

// Blocks (and fp32 partial rows) of the backward: a function of the shape only, so the weight / bias
// gradients are summed in the same order on every GPU. Enough blocks to keep many rows in flight
// (256 left a 16384 x 1024 backward latency-bound on an H200), each partial buffer at most 2^22
// floats. The same rule as zenattn/triton/norm.py's bwd_programs.
int64_t bwd_programs(int64_t rows, int64_t n) {
  const int64_t wanted = std::max<int64_t>(256, std::min<int64_t>(2048, (int64_t(1) << 22) / std::max<int64_t>(n, 1)));
  return std::max<int64_t>(1, std::min(rows, wanted));
}

DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, kOp, ": ", name, " has dtype ", t.scalar_type(),
                  "; the cuda backend supports float32, float16 and bfloat16");
  }
  return DType::kFloat32;
}

// t: a CUDA tensor of `like`'s dtype and device with the given sizes and a unit last stride.
void check_like(const at::Tensor& t, const at::Tensor& like, at::IntArrayRef sizes, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), kOp, ": ", name, " is on ", t.device(),
              ", expected ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), kOp, ": ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, kOp, ": ", name, " has shape ", t.sizes(), ", expected ", sizes);
  TORCH_CHECK(t.dim() == 1 || t.size(-1) <= 1 || t.stride(-1) == 1, kOp, ": ", name,
              " must have a unit last stride, got strides ", t.strides());
}

NormDropout dropout_of(int64_t seed, double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, kOp, ": dropout_p must be in [0, 1), got ", p);
  NormDropout d{};
  d.on = p > 0.0;
  d.seed = static_cast<uint64_t>(seed);
  d.threshold = DropoutRng::threshold_for(p);
  d.scale = static_cast<float>(1.0 / (1.0 - p));
  return d;
}

void check_status(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, kOp, ": ", what, " failed: ", cudaGetErrorString(status));
}

}  // namespace

std::vector<at::Tensor> norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                 double eps, bool rms, int64_t seed, double dropout_p, int64_t stream) {
  TORCH_CHECK(x.is_cuda(), kOp, ": input is on ", x.device(), ", expected a CUDA device");
  TORCH_CHECK(x.dim() == 2, kOp, ": input must be (rows, n), got shape ", x.sizes());
  const DType dtype = dtype_of(x, "input");
  const int64_t rows = x.size(0), n = x.size(1);
  check_like(x, x, x.sizes(), "input");
  TORCH_CHECK(rows <= INT_MAX, kOp, ": at most ", INT_MAX, " rows, got ", rows);
  TORCH_CHECK(!(rms && bias.has_value()), kOp, ": RMSNorm takes no bias");
  if (weight) check_like(*weight, x, {n}, "weight");
  if (bias) check_like(*bias, x, {n}, "bias");
  if (residual) check_like(*residual, x, x.sizes(), "residual");
  at::Tensor wt = weight ? weight->contiguous() : at::Tensor(), bt = bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({rows, n}, x.options());
  const NormDropout dropout = dropout_of(seed, dropout_p);
  const bool fused = residual.has_value() || dropout.on;
  at::Tensor sum = fused ? at::empty({rows, n}, x.options()) : at::empty({0}, x.options());
  const auto stats = x.options().dtype(at::kFloat);
  at::Tensor mean = rms ? at::empty({0}, stats) : at::empty({rows}, stats);
  at::Tensor rstd = at::empty({rows}, stats);

  NormFwdParams p{};
  p.dtype = dtype;
  p.rms = rms;
  p.rows = rows;
  p.n = n;
  p.x = x.data_ptr();
  p.x_row_stride = rows > 1 ? x.stride(0) : n;
  p.res = residual ? residual->data_ptr() : nullptr;
  p.res_row_stride = residual && rows > 1 ? residual->stride(0) : n;
  p.w = wt.defined() ? wt.data_ptr() : nullptr;
  p.b = bt.defined() ? bt.data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.sum = fused ? sum.data_ptr() : nullptr;
  p.mean = rms ? nullptr : mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.eps = static_cast<float>(eps);
  p.dropout = dropout;
  check_status(launch_norm_fwd(p, reinterpret_cast<cudaStream_t>(stream)), "the forward kernel launch");
  return {y, sum, mean, rstd};
}

std::vector<at::Tensor> norm_bwd(const at::Tensor& dy, const std::optional<at::Tensor>& dsum, const at::Tensor& x,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mean,
                                 const at::Tensor& rstd, bool has_bias, bool rms, double eps, int64_t seed,
                                 double dropout_p, bool has_residual, int64_t stream) {
  TORCH_CHECK(x.is_cuda(), kOp, ": input is on ", x.device(), ", expected a CUDA device");
  TORCH_CHECK(x.dim() == 2, kOp, ": input must be (rows, n), got shape ", x.sizes());
  const DType dtype = dtype_of(x, "input");
  const int64_t rows = x.size(0), n = x.size(1);
  check_like(dy, x, x.sizes(), "grad_output");
  if (dsum) check_like(*dsum, x, x.sizes(), "grad of the sum");
  if (weight) check_like(*weight, x, {n}, "weight");
  TORCH_CHECK(rstd.device() == x.device() && rstd.scalar_type() == at::kFloat && rstd.numel() == rows, kOp,
              ": rstd must be float32 with ", rows, " elements on ", x.device());
  TORCH_CHECK(rms || (mean && mean->device() == x.device() && mean->scalar_type() == at::kFloat &&
                      mean->numel() == rows),
              kOp, ": LayerNorm's backward needs the float32 mean of each of the ", rows, " rows on ", x.device());
  const at::Tensor xc = x.contiguous(), dyc = dy.contiguous();
  const at::Tensor dsc = dsum ? dsum->contiguous() : at::Tensor();
  const at::Tensor wt = weight ? weight->contiguous() : at::Tensor();
  const at::Tensor mc = rms ? at::Tensor() : mean->contiguous(), rc = rstd.contiguous();
  const int64_t programs = bwd_programs(rows, n);
  const auto part = x.options().dtype(at::kFloat);
  const NormDropout dropout = dropout_of(seed, dropout_p);
  at::Tensor dx = at::empty({rows, n}, x.options());
  at::Tensor dres = dropout.on && has_residual ? at::empty({rows, n}, x.options()) : at::empty({0}, x.options());
  // The kernel writes every partial row (rows >= 1); with no rows the gradients are zeros.
  const auto partials = [&](bool wanted) {
    return !wanted ? at::Tensor() : rows > 0 ? at::empty({programs, n}, part) : at::zeros({programs, n}, part);
  };
  at::Tensor dw_part = partials(weight.has_value()), db_part = partials(has_bias);

  NormBwdParams p{};
  p.dtype = dtype;
  p.rms = rms;
  p.rows = rows;
  p.n = n;
  p.programs = programs;
  p.eps = static_cast<float>(eps);
  p.dy = dyc.data_ptr();
  p.dsum = dsc.defined() ? dsc.data_ptr() : nullptr;
  p.x = xc.data_ptr();
  p.w = wt.defined() ? wt.data_ptr() : nullptr;
  p.mean = rms ? nullptr : mc.data_ptr<float>();
  p.rstd = rc.data_ptr<float>();
  p.dx = dx.data_ptr();
  p.dres = dres.numel() > 0 ? dres.data_ptr() : nullptr;
  p.dropout = dropout;
  p.dw_part = dw_part.defined() ? dw_part.data_ptr<float>() : nullptr;
  p.db_part = db_part.defined() ? db_part.data_ptr<float>() : nullptr;
  check_status(launch_norm_bwd(p, reinterpret_cast<cudaStream_t>(stream)), "the backward kernel launch");
  // The partial rows summed in a fixed order (a plain reduction over dim 0: deterministic).
  at::Tensor dw = weight ? dw_part.sum(0).to(x.scalar_type()) : at::empty({0}, x.options());
  at::Tensor db = has_bias ? db_part.sum(0).to(x.scalar_type()) : at::empty({0}, x.options());
  return {dx, dw, db, dres};
}

}  // namespace cuda
}  // namespace zenattn
