// zenattn._C: the one pybind11 module. It checks inputs at the boundary, with messages that name
// the argument and the offending value, then calls the launchers (csrc/cpu/, csrc/cuda/).
// Autograd, dispatch and torch.library registration live in Python (zenattn/ops/).
#include <torch/extension.h>

#include <sstream>
#include <string>

#include "cpu/attention.h"
#include "cpu/blas.h"
#include "cpu/isa.h"
#include "cpu/norm.h"
#include "cpu/rotary.h"
#ifdef ZENATTN_WITH_CUDA
#include "cuda/attention.h"
#include "cuda/norm.h"
#endif

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

void check_cpu_float(const at::Tensor& t, const char* name, const char* op = kOp) {
  TORCH_CHECK(t.device().is_cpu(), op, ": expected ", name, " on the CPU, got it on ", t.device());
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op,
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

void check_dropout(double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, kOp, ": dropout_p must be in [0, 1), got ", p);
}

// The forward entry points, norm_fwd and norm_autograd (the forward with its autograd attached):
// checked inputs, then the launcher Launch.
using NormForward = std::vector<at::Tensor> (*)(const at::Tensor&, const std::optional<at::Tensor>&,
                                                const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                                double, bool, int64_t, double);
template <NormForward Launch>
std::vector<at::Tensor> norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                     double eps, bool rms, int64_t seed, double dropout_p) {
  check_norm_inputs(x, weight, bias, residual);
  TORCH_CHECK(!(rms && bias.has_value()), kOp, ": RMSNorm takes no bias");
  check_dropout(dropout_p);
  return Launch(x, weight, bias, residual, eps, rms, seed, dropout_p);
}

std::vector<at::Tensor> norm_bwd(const at::Tensor& dy, const std::optional<at::Tensor>& dsum, const at::Tensor& x,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mean,
                                 const at::Tensor& rstd, bool has_bias, double eps, bool rms, int64_t seed,
                                 double dropout_p, bool has_residual) {
  check_norm_inputs(x, weight, std::nullopt, std::nullopt);
  check_like(dy, x, "grad_output");
  if (dsum.has_value()) check_like(*dsum, x, "grad of the residual sum");
  TORCH_CHECK(rms || mean.has_value(), kOp, ": LayerNorm's backward needs the mean of each row");
  if (!rms) check_stats(*mean, x, "mean");
  check_stats(rstd, x, "rstd");
  check_dropout(dropout_p);
  return zenattn::cpu::norm_bwd(dy, dsum, x, weight, mean, rstd, has_bias && !rms, eps, rms, seed, dropout_p,
                                has_residual);
}


// ---- rotary embedding --------------------------------------------------------------------------

constexpr const char* kRotaryOp = "zenattn cpu rotary";

// x (B, H, L, D) with D even; cos and sin (L, D), floating, on the CPU.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool backward) {
  check_cpu_float(x, "input", kRotaryOp);
  check_cpu_float(cos, "cos", kRotaryOp);
  check_cpu_float(sin, "sin", kRotaryOp);
  TORCH_CHECK(x.dim() == 4, kRotaryOp, ": input must be 4-D (batch, heads, seq, head_dim), got shape ", shape_str(x));
  TORCH_CHECK(x.size(3) % 2 == 0, kRotaryOp, ": head_dim must be even (its halves are rotated as pairs), got ",
              x.size(3));
  auto check_table = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == x.size(2) && t.size(1) == x.size(3), kRotaryOp, ": ", name,
                " must have shape (seq, head_dim) = (", x.size(2), ", ", x.size(3), "), got ", shape_str(t));
  };
  check_table(cos, "cos");
  check_table(sin, "sin");
  return zenattn::cpu::rotary(x, cos, sin, backward);
}

// ---- attention -------------------------------------------------------------------------------

constexpr const char* kAttnOp = "zenattn cpu attention";
constexpr int64_t kMaxHeadDim = 256;

// q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv): same dtype, Hkv divides Hq, D and Dv
// in 1..256, a unit stride on the last dim or a copy is made (the launcher handles that).
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_cpu_float(q, "query", kAttnOp);
  check_cpu_float(k, "key", kAttnOp);
  check_cpu_float(v, "value", kAttnOp);
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, kAttnOp,
              ": query, key and value must be 4-D (batch, heads, seq, head_dim), got shapes ",
              shape_str(q), ", ", shape_str(k), ", ", shape_str(v));
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), kAttnOp,
              ": query, key and value must have the same dtype, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), kAttnOp, ": batch sizes differ: query ",
              shape_str(q), ", key ", shape_str(k), ", value ", shape_str(v));
  TORCH_CHECK(k.size(1) == v.size(1) && k.size(2) == v.size(2), kAttnOp,
              ": key and value must have the same heads and sequence length, got key ", shape_str(k),
              " and value ", shape_str(v));
  TORCH_CHECK(k.size(1) > 0 ? q.size(1) % k.size(1) == 0 : q.size(1) == 0, kAttnOp, ": the number of key/value heads (",
              k.size(1), ") must divide the number of query heads (", q.size(1), ")");
  TORCH_CHECK(k.size(3) == q.size(3), kAttnOp, ": query and key head dims differ: ", q.size(3), " vs ", k.size(3));
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= kMaxHeadDim && v.size(3) >= 1 && v.size(3) <= kMaxHeadDim, kAttnOp,
              ": head dims must be in 1..", kMaxHeadDim, ", got ", q.size(3), " (query/key) and ",
              v.size(3), " (value)");
}

zenattn::cpu::AttnOptions attn_options(const at::Tensor& q, const at::Tensor& k,
                                       const std::optional<at::Tensor>& attn_mask,
                                       const std::optional<at::Tensor>& alibi_slopes,
                                       const std::optional<at::Tensor>& seed, double scale, double softcap,
                                       int64_t window_left, int64_t window_right, bool bottom_right,
                                       double dropout_p) {
  const int64_t B = q.size(0), Hq = q.size(1), Nq = q.size(2), Nk = k.size(2);
  if (attn_mask.has_value()) {
    const at::Tensor& m = *attn_mask;
    TORCH_CHECK(m.device().is_cpu(), kAttnOp, ": attn_mask must be on the CPU, got ", m.device());
    const auto dt = m.scalar_type();
    TORCH_CHECK(dt == at::kBool || dt == at::kFloat || dt == q.scalar_type(), kAttnOp,
                ": attn_mask must be bool, float32 or the query's dtype (", q.scalar_type(), "), got ", dt);
    TORCH_CHECK(m.dim() <= 4 && at::is_expandable_to(m.sizes(), {B, Hq, Nq, Nk}), kAttnOp, ": attn_mask of shape ",
                shape_str(m), " does not broadcast to (batch, heads, q_len, k_len) = (", B, ", ", Hq, ", ",
                Nq, ", ", Nk, ")");
  }
  if (alibi_slopes.has_value()) {
    const at::Tensor& a = *alibi_slopes;
    TORCH_CHECK(a.device().is_cpu() && at::isFloatingType(a.scalar_type()), kAttnOp,
                ": alibi_slopes must be a floating-point CPU tensor, got ", a.scalar_type(), " on ", a.device());
    const bool ok = (a.dim() == 1 && a.size(0) == Hq) || (a.dim() == 2 && a.size(0) == B && a.size(1) == Hq);
    TORCH_CHECK(ok, kAttnOp, ": alibi_slopes must have shape (", Hq, ",) or (", B, ", ", Hq, "), got ", shape_str(a));
  }
  TORCH_CHECK(dropout_p >= 0 && dropout_p < 1, kAttnOp, ": dropout_p must be in [0, 1), got ", dropout_p);
  if (dropout_p > 0) {
    TORCH_CHECK(seed.has_value() && seed->numel() == 1 && seed->scalar_type() == at::kLong, kAttnOp,
                ": dropout needs an int64 seed tensor with one element");
  }
  TORCH_CHECK(softcap >= 0, kAttnOp, ": softcap must be >= 0 (0: none), got ", softcap);
  TORCH_CHECK(window_left >= -1 && window_right >= -1, kAttnOp, ": window sides must be >= 0, or -1 for unbounded; got (",
              window_left, ", ", window_right, ")");
  return {scale, softcap, window_left, window_right, bottom_right, dropout_p, attn_mask, alibi_slopes, seed};
}

// The forward entry points, attention_fwd and attention_autograd (the forward with its autograd
// attached): checked inputs, then the launcher Launch.
using AttnForward = std::vector<at::Tensor> (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const zenattn::cpu::AttnOptions&);
template <AttnForward Launch>
std::vector<at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const std::optional<at::Tensor>& attn_mask,
                                          const std::optional<at::Tensor>& alibi_slopes,
                                          const std::optional<at::Tensor>& seed, double scale, double softcap,
                                          int64_t window_left, int64_t window_right, bool bottom_right,
                                          double dropout_p) {
  check_qkv(q, k, v);
  return Launch(q, k, v, attn_options(q, k, attn_mask, alibi_slopes, seed, scale, softcap, window_left,
                                      window_right, bottom_right, dropout_p));
}

std::vector<at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                      const at::Tensor& lse_lo, const std::optional<at::Tensor>& dlse,
                                      const std::optional<at::Tensor>& attn_mask,
                                      const std::optional<at::Tensor>& alibi_slopes,
                                      const std::optional<at::Tensor>& seed, double scale, double softcap,
                                      int64_t window_left, int64_t window_right, bool bottom_right,
                                      double dropout_p) {
  check_qkv(q, k, v);
  const auto opt = attn_options(q, k, attn_mask, alibi_slopes, seed, scale, softcap, window_left, window_right,
                                bottom_right, dropout_p);
  const std::vector<int64_t> out_shape{q.size(0), q.size(1), q.size(2), v.size(3)};
  check_cpu_float(dout, "grad_output", kAttnOp);
  check_cpu_float(out, "out", kAttnOp);
  TORCH_CHECK(dout.sizes() == out_shape && out.sizes() == out_shape, kAttnOp, ": grad_output ", shape_str(dout),
              " and out ", shape_str(out), " must have shape ", at::IntArrayRef(out_shape));
  // out: the forward's output in the query's dtype, or float32 for float16/bfloat16 queries (the
  // unrounded output the forward also returns, for an exact delta = rowsum(dO * O)).
  const bool half = q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16;
  TORCH_CHECK(dout.scalar_type() == q.scalar_type() &&
              (out.scalar_type() == q.scalar_type() || (half && out.scalar_type() == at::kFloat)), kAttnOp,
              ": grad_output must have the query's dtype ", q.scalar_type(), " and out that dtype",
              half ? " or Float" : "", "; got ", dout.scalar_type(), " and ", out.scalar_type());
  TORCH_CHECK(lse.device().is_cpu() && lse.sizes() == at::IntArrayRef({q.size(0), q.size(1), q.size(2)}), kAttnOp,
              ": lse must be a CPU tensor of shape (batch, heads, q_len), got ", shape_str(lse));
  TORCH_CHECK(lse_lo.device().is_cpu() && lse_lo.sizes() == lse.sizes(), kAttnOp,
              ": lse_lo must be a CPU tensor shaped like lse ", shape_str(lse), ", got ", shape_str(lse_lo));
  if (dlse.has_value()) {
    TORCH_CHECK(dlse->device().is_cpu() && dlse->sizes() == lse.sizes(), kAttnOp,
                ": grad of lse must be a CPU tensor shaped like lse ", shape_str(lse), ", got ", shape_str(*dlse));
  }
  return zenattn::cpu::attention_bwd(dout, q, k, v, out, lse, lse_lo, dlse, opt);
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
  d["cpu_blas"] = zenattn::cpu::blas::backend_name();
  d["cpu_bf16_gemm"] = zenattn::cpu::blas::bf16_available();
  d["cpu_f32_brgemm"] = zenattn::cpu::blas::f32_brgemm_available();
  d["cpu_f32_brgemm_where"] = zenattn::cpu::attention_f32_brgemm_rule();
  return d;
}

}  // namespace

// The two forward entry points of each op family (plain, and with autograd) share their arguments.
template <typename F>
void def_norm_forward(py::module_& m, const char* name, F fn, const char* doc) {
  m.def(name, fn, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"), py::arg("eps"),
        py::arg("rms"), py::arg("seed"), py::arg("dropout_p"), doc);
}

template <typename F>
void def_attention_forward(py::module_& m, const char* name, F fn, const char* doc) {
  m.def(name, fn, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("attn_mask"), py::arg("alibi_slopes"),
        py::arg("seed"), py::arg("scale"), py::arg("softcap"), py::arg("window_left"), py::arg("window_right"),
        py::arg("bottom_right"), py::arg("dropout_p"), doc);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "zenattn compiled kernels (C++ CPU; CUDA C++ when built with CUDA)";
#ifdef ZENATTN_WITH_CUDA
  // The CUDA launchers take the stream as an integer (torch.cuda.current_stream().cuda_stream):
  // see zenattn/cuda/norm.py, which adapts them to the backend launcher signatures.
  m.def("cuda_norm_fwd", &zenattn::cuda::norm_fwd, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("residual"), py::arg("eps"), py::arg("rms"), py::arg("seed"), py::arg("dropout_p"), py::arg("stream"),
        "CUDA LayerNorm/RMSNorm forward over (rows, n): returns [y, sum or empty, mean or empty, rstd]");
  m.def("cuda_norm_bwd", &zenattn::cuda::norm_bwd, py::arg("dy"), py::arg("dsum"), py::arg("x"), py::arg("weight"),
        py::arg("mean"), py::arg("rstd"), py::arg("has_bias"), py::arg("rms"), py::arg("eps"), py::arg("seed"),
        py::arg("dropout_p"), py::arg("has_residual"), py::arg("stream"),
        "CUDA LayerNorm/RMSNorm backward over (rows, n): returns [dx, dweight or empty, dbias or empty, "
        "dresidual or empty]");
  m.def("cuda_attention_fwd", &zenattn::cuda::attention_fwd, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("scale"), py::arg("window_left"), py::arg("window_right"), py::arg("bottom_right"), py::arg("stream"),
        "CUDA flash attention forward (float16/bfloat16, head dim 64/128): returns [out, lse, out_acc]");
  m.def("cuda_attention_bwd", &zenattn::cuda::attention_bwd, py::arg("dout"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("lse"), py::arg("delta"), py::arg("scale"), py::arg("window_left"),
        py::arg("window_right"), py::arg("bottom_right"), py::arg("stream"),
        "CUDA flash attention backward: returns [dq, dk, dv]");
#endif
  m.def("build_info", &build_info, "How this extension was built and which CPU kernels run here");
  def_norm_forward(m, "norm_fwd", &norm_forward<zenattn::cpu::norm_fwd>,
                   "LayerNorm/RMSNorm over the last dim of s = dropout(x) + residual: returns [y, sum|None, "
                   "mean|None, rstd]");
  m.def("norm_bwd", &norm_bwd, py::arg("dy"), py::arg("dsum"), py::arg("x"), py::arg("weight"), py::arg("mean"),
        py::arg("rstd"), py::arg("has_bias"), py::arg("eps"), py::arg("rms"), py::arg("seed"), py::arg("dropout_p"),
        py::arg("has_residual"), "LayerNorm/RMSNorm backward: returns [dx, dweight|None, dbias|None, dresidual|None]");
  m.def("_set_norm_stream_threshold", &zenattn::cpu::set_norm_stream_threshold, py::arg("bytes"),
        "Bytes a cpu norm call must touch before it writes its output with non-temporal stores (negative: the "
        "default, the last-level cache size); returns the previous value. For tests.");
  m.def(
      "_attention_pack",
      [](const std::string& kind, const at::Tensor& x) {
        using zenattn::cpu::Pack;
        const std::pair<const char*, Pack> kinds[] = {{"transposed", Pack::transposed},
                                                     {"transposed_bf16", Pack::transposed_bf16},
                                                     {"pairs_t", Pack::pairs_t},
                                                     {"pairs", Pack::pairs}};
        for (const auto& [name, pack] : kinds) {
          if (kind != name) continue;
          const bool pairs = pack == Pack::pairs || pack == Pack::pairs_t;
          TORCH_CHECK(x.dim() == 4 && (x.size(3) <= 1 || x.stride(3) == 1),
                      "zenattn pack: x must be 4-D with a unit last stride");
          TORCH_CHECK(x.scalar_type() == (pairs ? at::kBFloat16 : at::kFloat), "zenattn pack: wrong dtype ",
                      x.scalar_type());
          TORCH_CHECK(pack != Pack::pairs_t || x.size(3) % 2 == 0, "zenattn pack: pairs_t needs an even last dim");
          return zenattn::cpu::pack_operand(pack, x);
        }
        TORCH_CHECK(false, "zenattn pack: unknown kind '", kind, "'");
      },
      py::arg("kind"), py::arg("x"),
      "The cpu attention's operand pack of x (B, H, A, X): transposed, transposed_bf16, pairs_t or pairs "
      "(csrc/cpu/attention.h). For tests.");
  m.def("_release_attention_scratch", &zenattn::cpu::release_attention_scratch,
        "Let go of the scratch buffer the cpu attention launchers keep between calls; returns the bytes it "
        "held. For tests that measure one call's memory.");
  def_norm_forward(m, "norm_autograd", &norm_forward<zenattn::cpu::norm_autograd>,
                   "norm_fwd with its autograd in C++: returns [y, sum, mean, rstd] (absent ones: 0 elements)");
  def_attention_forward(m, "attention_fwd", &attention_forward<zenattn::cpu::attention_fwd>,
        "Flash attention forward: returns [out (B, Hq, Nq, Dv), lse (B, Hq, Nq), out_acc (the float32 output "
        "for float16/bfloat16 inputs, else empty), lse_lo (what rounding lse lost, for the backward)]");
  def_attention_forward(m, "attention_autograd", &attention_forward<zenattn::cpu::attention_autograd>,
                        "attention_fwd with its autograd in C++: returns [out, lse, out_acc, lse_lo]");
  m.def("attention_bwd", &attention_bwd, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("lse"), py::arg("lse_lo"), py::arg("dlse"), py::arg("attn_mask"), py::arg("alibi_slopes"), py::arg("seed"),
        py::arg("scale"), py::arg("softcap"), py::arg("window_left"), py::arg("window_right"),
        py::arg("bottom_right"), py::arg("dropout_p"), "Flash attention backward: returns [dq, dk, dv]");
  m.def("rotary", &rotary, py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("backward"),
        "Rotary embedding of x (B, H, L, D) by cos/sin (L, D), rotate-half layout; backward=True applies the "
        "transpose (the gradient's map)");
  m.def("attention_dropout_keep", &zenattn::cpu::attention_dropout_keep, py::arg("seed"), py::arg("B"),
        py::arg("H"), py::arg("Nq"), py::arg("Nk"), py::arg("p"),
        "The bool (B, H, Nq, Nk) dropout keep mask the attention kernels draw for this seed and p");
}
