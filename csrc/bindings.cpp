// zenattn._C: the one pybind11 module. It checks inputs at the boundary, with messages that name
// the argument and the offending value, then calls the launchers (csrc/cpu/, csrc/cuda/).
// Autograd, dispatch and torch.library registration live in Python (zenattn/ops/).
#include <torch/extension.h>

#include <sstream>
#include <string>

#include "cpu/norm.h"

#ifndef ZENATTN_VERSION
#define ZENATTN_VERSION "unknown"
#endif

namespace {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

constexpr const char* kOp = "zenattn cpu norm";

void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), kOp, ": expected ", name, " on the CPU, got it on ", t.device());
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, kOp,
              ": ", name, " has dtype ", dt, "; supported: float32, float16, bfloat16, float64");
}

// x (..., N); weight/bias (N,) with x's dtype; residual x's shape and dtype.
void check_norm_inputs(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual) {
  check_cpu_float(x, "input");
  TORCH_CHECK(x.dim() >= 1, kOp, ": input must have at least 1 dimension, got a 0-dim tensor");
  const int64_t n = x.size(-1);
  auto check_param = [&](const std::optional<at::Tensor>& p, const char* name) {
    if (!p.has_value()) return;
    check_cpu_float(*p, name);
    TORCH_CHECK(p->dim() == 1 && p->size(0) == n, kOp, ": ", name, " must have shape (", n,
                ",) to match the last dimension of input ", shape_str(x), ", got ", shape_str(*p));
    TORCH_CHECK(p->scalar_type() == x.scalar_type(), kOp, ": ", name, " has dtype ", p->scalar_type(),
                " but input has dtype ", x.scalar_type(), "; they must match");
  };
  check_param(weight, "weight");
  check_param(bias, "bias");
  if (residual.has_value()) {
    check_cpu_float(*residual, "residual");
    TORCH_CHECK(residual->sizes() == x.sizes(), kOp, ": residual has shape ", shape_str(*residual),
                " but input has shape ", shape_str(x), "; they must match");
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), kOp, ": residual has dtype ",
                residual->scalar_type(), " but input has dtype ", x.scalar_type(), "; they must match");
  }
}

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  check_cpu_float(t, name);
  TORCH_CHECK(t.sizes() == x.sizes(), kOp, ": ", name, " has shape ", shape_str(t),
              " but the saved input has shape ", shape_str(x));
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), kOp, ": ", name, " has dtype ", t.scalar_type(),
              " but the saved input has dtype ", x.scalar_type());
}

void check_stats(const at::Tensor& s, const at::Tensor& x, const char* name) {
  TORCH_CHECK(s.device().is_cpu(), kOp, ": ", name, " must be on the CPU, got ", s.device());
  TORCH_CHECK(s.scalar_type() == at::toOpMathType(x.scalar_type()), kOp, ": ", name, " has dtype ",
              s.scalar_type(), ", expected ", at::toOpMathType(x.scalar_type()));
  TORCH_CHECK(s.numel() * x.size(-1) == x.numel(), kOp, ": ", name, " has ", s.numel(),
              " elements, expected one per row of input ", shape_str(x));
}

std::vector<at::Tensor> layer_norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& residual, double eps) {
  check_norm_inputs(x, weight, bias, residual);
  return zenattn::cpu::layer_norm_fwd(x, weight, bias, residual, eps);
}

std::vector<at::Tensor> layer_norm_bwd(const at::Tensor& dy, const std::optional<at::Tensor>& dsum,
                                       const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                       const at::Tensor& mean, const at::Tensor& rstd, bool has_bias) {
  check_norm_inputs(x, weight, std::nullopt, std::nullopt);
  check_like(dy, x, "grad_output");
  if (dsum.has_value()) check_like(*dsum, x, "grad of the residual sum");
  check_stats(mean, x, "mean");
  check_stats(rstd, x, "rstd");
  return zenattn::cpu::layer_norm_bwd(dy, dsum, x, weight, mean, rstd, has_bias);
}

std::vector<at::Tensor> rms_norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& residual, double eps) {
  check_norm_inputs(x, weight, std::nullopt, residual);
  return zenattn::cpu::rms_norm_fwd(x, weight, residual, eps);
}

std::vector<at::Tensor> rms_norm_bwd(const at::Tensor& dy, const std::optional<at::Tensor>& dsum,
                                     const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                     const at::Tensor& rstd, double eps) {
  check_norm_inputs(x, weight, std::nullopt, std::nullopt);
  check_like(dy, x, "grad_output");
  if (dsum.has_value()) check_like(*dsum, x, "grad of the residual sum");
  check_stats(rstd, x, "rstd");
  return zenattn::cpu::rms_norm_bwd(dy, dsum, x, weight, rstd, eps);
}

py::dict build_info() {
  py::dict d;
  d["version"] = ZENATTN_VERSION;
  d["torch_version"] = TORCH_VERSION;  // the torch this extension was compiled against
#ifdef ZENATTN_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  d["cpu_isa"] = zenattn::cpu::kernel_isa();
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "zenattn compiled kernels (C++ CPU; CUDA C++ when built with CUDA)";
  m.def("build_info", &build_info, "How this extension was built and which CPU kernels run here");
  m.def("layer_norm_fwd", &layer_norm_fwd, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("residual"), py::arg("eps"),
        "LayerNorm over the last dim of x (+ residual): returns [y, sum|None, mean, rstd]");
  m.def("layer_norm_bwd", &layer_norm_bwd, py::arg("dy"), py::arg("dsum"), py::arg("x"),
        py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("has_bias"),
        "LayerNorm backward: returns [dx, dweight|None, dbias|None]");
  m.def("rms_norm_fwd", &rms_norm_fwd, py::arg("x"), py::arg("weight"), py::arg("residual"),
        py::arg("eps"), "RMSNorm over the last dim of x (+ residual): returns [y, sum|None, rstd]");
  m.def("rms_norm_bwd", &rms_norm_bwd, py::arg("dy"), py::arg("dsum"), py::arg("x"),
        py::arg("weight"), py::arg("rstd"), py::arg("eps"), "RMSNorm backward: returns [dx, dweight|None]");
}
