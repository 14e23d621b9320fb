// The eager CPU LayerNorm / RMSNorm with its autograd in C++. zenattn/ops/norm.py's eager path
// runs this for the "cpu" backend when a gradient is tracked, instead of its Python
// autograd.Function: the same forward, saved tensors and backward (_layer_norm_setup /
// _layer_norm_backward there), without the Python Function's per-call cost (a sizeable share of
// a call at a model's sizes, 2048 rows of 128-256). torch.compile and functorch still go through
// the zenattn:: ops and their Python registration.
#include "cpu/norm.h"
#include "cpu/autograd.h"

namespace zenattn::cpu {
namespace {

using namespace autograd;

// Profiler names, as the zenattn:: ops' (benchmarks/profile_model.py sorts ops by them).
const char* fwd_name(bool rms) { return rms ? "zenattn::rms_norm_fwd" : "zenattn::layer_norm_fwd"; }
const char* bwd_name(bool rms) { return rms ? "zenattn::rms_norm_bwd" : "zenattn::layer_norm_bwd"; }

struct NormFunction : public torch::autograd::Function<NormFunction> {
  // -> {y, sum, mean, rstd}: sum = dropout(x) + residual when either is on; absent ones (sum,
  // RMSNorm's mean) are 0-element placeholders, as the zenattn:: ops return them. mean and rstd
  // get no gradient.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                               double eps, bool rms, int64_t seed, double dropout_p) {
    RECORD_FUNCTION(fwd_name(rms), std::vector<c10::IValue>());
    std::vector<at::Tensor> out = norm_fwd(x, weight, bias, residual, eps, rms, seed, dropout_p);
    const bool writes_sum = residual.has_value() || dropout_p > 0;
    // The backward normalizes what the forward normalized: the sum when there is one.
    ctx->save_for_backward({writes_sum ? out[1] : x, weight.value_or(at::Tensor()), out[2], out[3]});
    ctx->set_materialize_grads(false);  // an unused output (the last block's sum) gets no zeros
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["has_residual"] = residual.has_value();
    const auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : x.new_empty({0}); };
    at::Tensor mean = or_empty(out[2]), rstd = out[3];
    ctx->mark_non_differentiable({mean, rstd});
    return {out[0], or_empty(out[1]), mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool rms = ctx->saved_data["rms"].toBool();
    RECORD_FUNCTION(bwd_name(rms), std::vector<c10::IValue>());
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& normed = saved[0];
    const at::Tensor& weight = saved[1];
    refuse_create_graph(rms ? "rms_norm" : "layer_norm");
    const bool has_residual = ctx->saved_data["has_residual"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const double dropout_p = ctx->saved_data["dropout_p"].toDouble();
    const at::Tensor dy = grads[0].defined() ? grads[0] : at::zeros_like(normed);
    const std::optional<at::Tensor> dsum = has_residual ? present(grads[1]) : std::nullopt;
    std::vector<at::Tensor> g = norm_bwd(dy, dsum, normed, present(weight), present(saved[2]), saved[3], has_bias && !rms,
                                         ctx->saved_data["eps"].toDouble(), rms, ctx->saved_data["seed"].toInt(),
                                         dropout_p, has_residual);
    // With dropout and a residual the input's and the residual's gradients differ; else dx serves both.
    const at::Tensor dres = has_residual ? (dropout_p > 0 ? g[3] : g[0]) : at::Tensor();
    return {g[0], weight.defined() ? g[1] : at::Tensor(), has_bias ? g[2] : at::Tensor(), dres,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::vector<at::Tensor> norm_autograd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                      double eps, bool rms, int64_t seed, double dropout_p) {
  return NormFunction::apply(x, weight, bias, residual, eps, rms, seed, dropout_p);
}

}  // namespace zenattn::cpu
