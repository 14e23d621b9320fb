// The eager CPU attention with its autograd in C++. zenattn/ops/attention.py's eager path runs
// this for the "cpu" backend when a gradient is tracked, instead of its Python autograd.Function:
// the same forward, saved tensors and backward (_attention_setup / _attention_backward there),
// without the Python Function's per-call cost. torch.compile and functorch still go through the
// zenattn:: ops and their Python registration.
#include "cpu/attention.h"
#include "cpu/autograd.h"

namespace zenattn::cpu {
namespace {

using namespace autograd;

struct AttentionFunction : public torch::autograd::Function<AttentionFunction> {
  // -> {out, lse, out_acc, lse_lo}, as attention_fwd; out_acc (the float32 output kept for the
  // backward of float16/bfloat16 inputs, else 0 elements) and lse_lo get no gradient.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& attn_mask,
                               const std::optional<at::Tensor>& alibi_slopes, const std::optional<at::Tensor>& seed,
                               double scale, double softcap, int64_t window_left, int64_t window_right,
                               bool bottom_right, double dropout_p) {
    RECORD_FUNCTION("zenattn::attention_fwd", std::vector<c10::IValue>());
    const AttnOptions opt{scale, softcap, window_left, window_right, bottom_right, dropout_p, attn_mask,
                          alibi_slopes, seed};
    std::vector<at::Tensor> out = attention_fwd(q, k, v, opt);
    // The backward reads the output only for delta = rowsum(dO * O): the unrounded one if there is one.
    ctx->save_for_backward({q, k, v, out[2].numel() ? out[2] : out[0], out[1], out[3], attn_mask.value_or(at::Tensor()),
                            alibi_slopes.value_or(at::Tensor()), seed.value_or(at::Tensor())});
    ctx->set_materialize_grads(false);  // an unused lse gets no zeros (nor does an unused output)
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["window_left"] = window_left;
    ctx->saved_data["window_right"] = window_right;
    ctx->saved_data["bottom_right"] = bottom_right;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->mark_non_differentiable({out[2], out[3]});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    RECORD_FUNCTION("zenattn::attention_bwd", std::vector<c10::IValue>());
    refuse_create_graph("attention");
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &q = s[0], &k = s[1], &v = s[2], &out = s[3], &lse = s[4], &lse_lo = s[5];
    const AttnOptions opt{ctx->saved_data["scale"].toDouble(), ctx->saved_data["softcap"].toDouble(),
                          ctx->saved_data["window_left"].toInt(), ctx->saved_data["window_right"].toInt(),
                          ctx->saved_data["bottom_right"].toBool(), ctx->saved_data["dropout_p"].toDouble(),
                          present(s[6]), present(s[7]), present(s[8])};
    const at::Tensor dout = grads[0].defined() ? grads[0] : at::zeros(out.sizes(), q.options());
    std::vector<at::Tensor> g = attention_bwd(dout, q, k, v, out, lse, lse_lo, present(grads[1]), opt);
    variable_list result(12);
    result[0] = g[0], result[1] = g[1], result[2] = g[2];
    return result;
  }
};

}  // namespace

std::vector<at::Tensor> attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const AttnOptions& opt) {
  return AttentionFunction::apply(q, k, v, opt.attn_mask, opt.alibi_slopes, opt.seed, opt.scale, opt.softcap,
                                  opt.window_left, opt.window_right, opt.bottom_right, opt.dropout_p);
}

}  // namespace zenattn::cpu
