// Flash attention on the CPU: the parameter struct shared by the launchers (attention.cpp) and
// the kernels (attention_kernels.cpp, compiled once per instruction set), and the launcher API
// that csrc/bindings.cpp exposes to Python.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace zenattn::cpu {

// An optional mask over the scores, read in place through broadcast strides (a stride of 0
// repeats a dimension): bool ("may attend") or floating point (added to the scores).
struct AttnMask {
  const void* ptr = nullptr;      // null: no mask
  at::ScalarType dtype = at::kBool;
  int64_t sb = 0, sh = 0, sq = 0, sk = 0;  // strides over (B, Hq, Nq, Nk), in elements
};

// How the kernels compute their tile products (AttnParams::products).
enum class Products { blas, brgemm_f32, brgemm_bf16 };

// Shapes: q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv), Hkv divides Hq and q head h
// reads kv head h / (Hq / Hkv). Tensors are of the compute type T (float, or double for float64
// input; the launcher converts half, and bfloat16 outside brgemm_bf16 mode, to float), with a unit
// last stride and the strides below over (batch, head, row).
//
// Score (b, h, i, j) = scale * q_i . k_j, then softcap * tanh(score / softcap) if softcap > 0,
// minus alibi[b, h] * |i + offset - j| if alibi is set, plus the float mask; it is -inf (not
// attended) where the bool mask is false or j lies outside [i + offset - window_left,
// i + offset + window_right] (a negative window side is unbounded; causal is window_right = 0).
struct AttnParams {
  at::ScalarType dtype;  // compute type: kFloat or kDouble
  int64_t B, Hq, Hkv, Nq, Nk, D, Dv;
  const void* q;  int64_t q_sb, q_sh, q_sn;
  const void* k;  int64_t k_sb, k_sh, k_sn;
  const void* v;  int64_t v_sb, v_sh, v_sn;
  double scale;
  double softcap;                  // 0: none
  int64_t window_left, window_right;
  int64_t offset;                  // 0 (top-left alignment) or Nk - Nq (bottom-right)
  const void* alibi;               // T slopes, or null; alibi[b, h] at b * alibi_sb + h
  int64_t alibi_sb;
  AttnMask mask;
  double dropout_p;                // 0: none
  uint64_t seed;

  // forward outputs
  void* out;  int64_t out_sb, out_sh, out_sn;       // (B, Hq, Nq, Dv), T, unit last stride
  void* lse;                       // (B, Hq, Nq) contiguous, T: log-sum-exp of the scores, -inf if none
  void* lse_lo;                    // (B, Hq, Nq) contiguous, T: what rounding lse lost (0 where lse is -inf)

  // backward inputs and outputs
  const void* dout;  int64_t do_sb, do_sh, do_sn;   // (B, Hq, Nq, Dv)
  const void* o;     int64_t o_sb, o_sh, o_sn;      // the forward's output
  const void* dlse;                // (B, Hq, Nq) contiguous T, gradient of the returned lse, or null
  void* dq;  int64_t dq_sb, dq_sh, dq_sn;          // (B, Hq, Nq, D), T, unit last stride
  int64_t q_chunks;                // the backward splits each head's queries into this many chunks
  void* dk_parts;                  // (B, Hq, q_chunks, Nk, D) contiguous, T: per q head and chunk,
  void* dv_parts;                  // (B, Hq, q_chunks, Nk, Dv)   summed by the launcher in fixed order

  // How the tile products run, and the operands the launcher makes for them (contiguous per kv
  // head b * Hkv + hk):
  //   blas         sgemm_/dgemm_ (blas::gemm) on q, k, v and dout in place: float64, decoding
  //                (few queries), or no brgemm in this torch.
  //   brgemm_f32   fp32 blas::brgemm, which takes B untransposed: kt_pack K^T (D x Nk), vt_pack V^T
  //                (Dv x Nk), both float; v, k in place.
  //   brgemm_bf16  bf16 blas::brgemm: q, k, v and dout stay bfloat16 (dtype is kFloat: scores and
  //                probabilities are fp32, rounded to bf16 before they multiply V, dO, K or Q, as
  //                torch's own bf16 CPU attention does); kt_pack and vt_pack in VNNI pairs, v_pack V
  //                (Nk2 x Dv) and k_pack K (Nk2 x D) in VNNI pairs (Nk2 = Nk rounded up to even,
  //                zero row). D and Dv even.
  // The brgemm modes compute dK^T and dV^T: dk_parts / dv_parts are (B, Hq, q_chunks, D or Dv, Nk).
  Products products = Products::blas;
  const void* kt_pack;   // scores = Q K^T
  const void* v_pack;    // forward's acc += P V
  const void* vt_pack;   // backward's dP = dO V^T
  const void* k_pack;    // backward's dQ += dS K
};

// Query tile sizes. With causal or window masking the keys a block of queries may attend shrink
// with the block, and a smaller block skips more of the masked tiles: measured on the 2-core AVX512
// VM (fp32, N 128-2048, D 32-128), 64 beat 256 by 1.1-1.4x there, while without such masking 256
// stays best (larger blocks amortize the BLAS's packing of each K/V tile). With few keys, 32 beats
// 64 (brgemm products, kernel-only, 2026-12-07): at the reference model's shapes (D 32, N 128-256,
// fp32 and bf16) forward 0.91-0.94x and backward 0.80-0.99x the time, at N=512 (D 64/128) 0.92-1.0x
// the backward's; from N=1024 it is even or slower (backward 1.02-1.06x at N 1024-2048).
constexpr int64_t kBlockQ = 256;          // queries per tile, no causal/window masking
constexpr int64_t kBlockQMasked = 64;     // queries per tile under causal/window masking
constexpr int64_t kBlockQMaskedFew = 32;  // the same with at most kFewKeys keys
constexpr int64_t kFewKeys = 512;
inline int64_t attention_block_q(const AttnParams& p) {
  if (p.window_left < 0 && p.window_right < 0) return kBlockQ;
  return p.Nk <= kFewKeys ? kBlockQMaskedFew : kBlockQMasked;
}

// Backward work split, a function of the shape only (so results do not depend on the thread
// count): one work item per (batch, q head, chunk of query blocks of attention_block_q queries), with
// enough chunks that a few heads still give kBwdMinItems items. Each item keeps its own dK/dV partials.
constexpr int64_t kBwdMinItems = 8;
inline int64_t attention_bwd_q_chunks(const AttnParams& p) {
  const int64_t block = attention_block_q(p);
  const int64_t heads = p.B * p.Hq, q_blocks = (p.Nq + block - 1) / block;
  if (heads == 0 || q_blocks == 0) return 1;
  return std::max<int64_t>(1, std::min(q_blocks, (kBwdMinItems + heads - 1) / heads));
}

// The launchers' operands for the brgemm products, made per (batch, head) in parallel with the
// instruction set's transposes (vnni.h), from x (B, H, A, X):
enum class Pack {
  transposed,        // float x^T (B, H, X, A): K^T, V^T, and the backward's dK^T / dV^T back to dK / dV
  transposed_bf16,   // the same from float to bfloat16 (rounded to nearest even)
  pairs_t,           // bfloat16 x^T in VNNI pairs (B, H, X / 2, A, 2), X even
  pairs,             // bfloat16 x in VNNI pairs (B, H, A2 / 2, X, 2), A2 = A rounded up to even (zero row)
};

#define ZENATTN_DECLARE_ATTENTION_KERNELS(ISA)          \
  namespace ISA {                                        \
  void attention_fwd_kernel(const AttnParams& p);        \
  void attention_bwd_kernel(const AttnParams& p);        \
  void attention_pack(Pack kind, const at::Tensor& x, at::Tensor& out); \
  }
ZENATTN_DECLARE_ATTENTION_KERNELS(DEFAULT)
ZENATTN_DECLARE_ATTENTION_KERNELS(AVX2)
ZENATTN_DECLARE_ATTENTION_KERNELS(AVX512)
#undef ZENATTN_DECLARE_ATTENTION_KERNELS

// The stride between rows (dim 2) of a (B, H, N, X) operand; any valid value when N <= 1, where
// it is never stepped over but still reaches BLAS as a leading dimension.
inline int64_t row_stride(const at::Tensor& t) {
  return t.size(2) <= 1 ? std::max<int64_t>(t.size(3), 1) : t.stride(2);
}

// x packed by this machine's instruction set (ISA::attention_pack), into a new contiguous tensor.
// x: float32 for the transposed packs, bfloat16 for the pairs (X even for pairs_t), 4-D with a unit
// last stride (checked by the caller: the launchers make it so, the test binding checks it).
at::Tensor pack_operand(Pack kind, const at::Tensor& x);

// Lets go of the scratch buffer the launchers keep between calls (csrc/cpu/attention.cpp, Scratch);
// returns the bytes it held. For tests that measure one call's memory.
int64_t release_attention_scratch();

// Where the launchers take fp32 brgemm tile products rather than sgemm_ on this machine, in words
// (for zenattn.info(); the rule is f32_brgemm_pays in csrc/cpu/attention.cpp).
std::string attention_f32_brgemm_rule();

// Options shared by the forward and the backward launcher.
struct AttnOptions {
  double scale;
  double softcap;
  int64_t window_left, window_right;
  bool bottom_right;
  double dropout_p;
  std::optional<at::Tensor> attn_mask;     // broadcastable to (B, Hq, Nq, Nk): bool or floating
  std::optional<at::Tensor> alibi_slopes;  // (Hq,) or (B, Hq)
  std::optional<at::Tensor> seed;          // int64 scalar, when dropout_p > 0
};

// Whether q (B, Hq, Nq, D) has its heads inside its rows in memory, (B, Nq, Hq, D), as
// q_proj(x).view(B, N, H, D).transpose(1, 2) gives. The output and dq then get that layout too (as
// torch's CPU SDPA gives its output), so out.transpose(1, 2).reshape(B, N, H * Dv) and the
// gradient's way back to the projection are views, not copies. zenattn/ops/attention.py's
// heads_inner is the same rule, for the fake tensors.
inline bool heads_inner(const at::Tensor& q) {
  return q.size(1) > 1 && q.size(2) > 1 && q.stride(1) < q.stride(2);
}

// Launchers (inputs already checked at the pybind11 boundary):
//   attention_fwd -> {out (B, Hq, Nq, Dv) in q's dtype, lse (B, Hq, Nq) float32 (float64 for float64),
//                     out_acc (float32 out for float16/bfloat16 inputs, else 0 elements), lse_lo like lse}
//   attention_bwd -> {dq, dk, dv} shaped and typed like q, k, v
// lse + lse_lo is the row's max + log(sum) to twice lse's precision, so that the backward's
// P = exp((S - lse) - lse_lo) is the forward's softmax (why it matters: zenattn/ops/attention.py).
// out and dq are laid out (B, Nq, Hq, X) in memory where heads_inner(q), else contiguous; dk and
// dv are contiguous.
std::vector<at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const AttnOptions& opt);
std::vector<at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                      const at::Tensor& lse_lo, const std::optional<at::Tensor>& dlse,
                                      const AttnOptions& opt);

// attention_fwd with its autograd attached (csrc/cpu/attention_autograd.cpp): {out, lse, out_acc, lse_lo},
// differentiable in q, k and v (and out and lse). What the eager "cpu" path of
// zenattn/ops/attention.py calls when a gradient is tracked.
std::vector<at::Tensor> attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const AttnOptions& opt);

// The dropout keep mask the kernels draw for (seed, p): bool (B, H, Nq, Nk). For tests.
at::Tensor attention_dropout_keep(int64_t seed, int64_t B, int64_t H, int64_t Nq, int64_t Nk, double p);

}  // namespace zenattn::cpu
