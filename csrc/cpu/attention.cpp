// Flash attention launchers for the CPU: bring q/k/v to the compute type without copying what is
// already usable in place, fill the parameter struct, run the kernel for this machine's
// instruction set. Input checks happen before this, at the pybind11 boundary (csrc/bindings.cpp).
#include "cpu/attention.h"
#include "cpu/blas.h"
#include "cpu/isa.h"
#include "common/philox.h"

#include <ATen/Parallel.h>

#include <limits>
#include <mutex>
#include <string>

namespace zenattn::cpu {
namespace {

void run_fwd(const AttnParams& p) { ZENATTN_ISA_DISPATCH(attention_fwd_kernel, p) }
void run_bwd(const AttnParams& p) { ZENATTN_ISA_DISPATCH(attention_bwd_kernel, p) }

// float for float32/float16/bfloat16 (half types are converted once, O(N * D)), double for float64.
at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The tile products (AttnParams::products): oneDNN's brgemm where this torch has it and there are
// enough queries to pay for it. The packs copy all of K and V each call, and oneDNN compiles a
// kernel for every new product shape, which decoding against a growing cache (one query, a new key
// count each step) would do at every step: measured on the project's VM (bf16, 8 heads, D 64,
// 300-500 keys) 5.3 ms a step against 0.3 ms on sgemm_. bf16 brgemm also needs even head dims
// (VNNI pairs along them); bfloat16 inputs that cannot have it, like float16, are converted to fp32
// once (O(N * D)) and take the fp32 products.
constexpr int64_t kBrgemmMinQueries = 64;
// fp32 brgemm against sgemm_ depends on the instruction set oneDNN's kernels have. Measured
// kernel-only, forward / forward+backward, best of three (2026-12-07): on the AVX512 VM (Intel)
// brgemm ran 1.13-1.18x sgemm_'s rate at every tile shape; on the AVX2 VM (AMD EPYC, 512 KiB L2
// a core) brgemm was faster only on small tiles, up to 512 keys with head dims up to 64 (D 32,
// N 128/256: the time 0.71-0.84x / 0.88-0.90x sgemm_'s; N 512 D 64: 0.89x / 0.98x), and slower
// from there (N 512 D 128 causal 1.21x / 1.15x; N 1024-2048, D 64-128: 1.17-1.47x / 1.30-1.52x).
constexpr int64_t kF32BrgemmMaxKeysAvx2 = 512, kF32BrgemmMaxDimAvx2 = 64;
bool f32_brgemm_any_shape() { return blas::f32_brgemm_forced() || runtime_isa() == Isa::AVX512; }
bool f32_brgemm_pays(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (f32_brgemm_any_shape()) return true;
  return k.size(2) <= kF32BrgemmMaxKeysAvx2 && std::max(q.size(3), v.size(3)) <= kF32BrgemmMaxDimAvx2;
}
Products products_for(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.scalar_type() == at::kDouble || q.size(2) < kBrgemmMinQueries) return Products::blas;
  if (q.scalar_type() == at::kBFloat16 && q.size(3) % 2 == 0 && v.size(3) % 2 == 0 && blas::bf16_available())
    return Products::brgemm_bf16;
  return blas::f32_brgemm_available() && f32_brgemm_pays(q, k, v) ? Products::brgemm_f32 : Products::blas;
}

// The type the kernels read q, k, v and dout as.
at::ScalarType operand_type(Products products, const at::Tensor& q) {
  return products == Products::brgemm_bf16 ? at::kBFloat16 : compute_type(q.scalar_type());
}

// t (B, H, N, X) as type `type` with a unit last stride and a row stride BLAS accepts. Tensors
// already of that type with such strides (contiguous, sliced, transposed (B, N, H, X) layouts,
// broadcast batch or head) are used in place.
at::Tensor operand(const at::Tensor& t, at::ScalarType type) {
  at::Tensor c = t.scalar_type() == type ? t : t.to(type);
  // BLAS takes the row stride as a 32-bit leading dimension of at least the row length (a length-1
  // sequence dim may carry any stride: row_stride() replaces it).
  const bool rows_ok = c.size(2) <= 1 || (c.stride(2) >= c.size(3) && c.stride(2) < std::numeric_limits<int>::max());
  if ((c.size(3) > 1 && c.stride(3) != 1) || !rows_ok) c = c.contiguous();
  return c;
}

// An output or dq (B, Hq, Nq, x) laid out like q where heads_inner(q): in memory (B, Nq, Hq, x)
// (like_q_memory's shape), seen through as_like_q; contiguous otherwise.
std::vector<int64_t> like_q_memory(const at::Tensor& q, int64_t x) {
  if (heads_inner(q)) return {q.size(0), q.size(2), q.size(1), x};
  return {q.size(0), q.size(1), q.size(2), x};
}
at::Tensor as_like_q(const at::Tensor& q, const at::Tensor& memory) {
  return heads_inner(q) ? memory.transpose(1, 2) : memory;
}
at::Tensor like_q(const at::Tensor& q, int64_t x, const at::TensorOptions& opts) {
  return as_like_q(q, at::empty(like_q_memory(q, x), opts));
}

AttnParams make_params(Products products, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const AttnOptions& opt, at::Tensor& mask_holder, at::Tensor& alibi_holder) {
  AttnParams p{};
  p.dtype = compute_type(q.scalar_type());
  p.products = products;
  p.B = q.size(0);
  p.Hq = q.size(1);
  p.Hkv = k.size(1);
  p.Nq = q.size(2);
  p.Nk = k.size(2);
  p.D = q.size(3);
  p.Dv = v.size(3);
  p.q = q.data_ptr();
  p.q_sb = q.stride(0), p.q_sh = q.stride(1), p.q_sn = row_stride(q);
  p.k = k.data_ptr();
  p.k_sb = k.stride(0), p.k_sh = k.stride(1), p.k_sn = row_stride(k);
  p.v = v.data_ptr();
  p.v_sb = v.stride(0), p.v_sh = v.stride(1), p.v_sn = row_stride(v);
  p.scale = opt.scale;
  p.softcap = opt.softcap;
  // A side longer than both sequences is unbounded (and keeps i + offset + side far from overflow).
  const auto side = [&](int64_t w) { return w > p.Nq + p.Nk ? int64_t(-1) : w; };
  p.window_left = side(opt.window_left);
  p.window_right = side(opt.window_right);
  p.offset = opt.bottom_right ? p.Nk - p.Nq : 0;
  if (opt.alibi_slopes.has_value()) {
    // (Hq,) or (B, Hq) -> (B, Hq) view with a zero batch stride for the former
    alibi_holder = opt.alibi_slopes->to(p.dtype).contiguous();
    p.alibi = alibi_holder.data_ptr();
    p.alibi_sb = alibi_holder.dim() == 2 ? alibi_holder.stride(0) : 0;
  }
  if (opt.attn_mask.has_value()) {
    // A view broadcast to (B, Hq, Nq, Nk): broadcast dimensions get stride 0, nothing is copied.
    mask_holder = opt.attn_mask->expand({p.B, p.Hq, p.Nq, p.Nk});
    p.mask.ptr = mask_holder.data_ptr();
    p.mask.dtype = mask_holder.scalar_type();
    p.mask.sb = mask_holder.stride(0), p.mask.sh = mask_holder.stride(1);
    p.mask.sq = mask_holder.stride(2), p.mask.sk = mask_holder.stride(3);
  }
  p.dropout_p = opt.dropout_p;
  if (opt.dropout_p > 0) {
    TORCH_CHECK(opt.seed.has_value(), "zenattn cpu attention: dropout_p > 0 needs a seed");
    p.seed = static_cast<uint64_t>(opt.seed->item<int64_t>());
  }
  return p;
}

}  // namespace

namespace {

// The shape and type of x's pack (Pack, attention.h).
std::vector<int64_t> pack_shape(Pack kind, const at::Tensor& x) {
  const int64_t B = x.size(0), H = x.size(1), A = x.size(2), X = x.size(3);
  switch (kind) {
    case Pack::pairs_t: return {B, H, X / 2, A, 2};
    case Pack::pairs: return {B, H, (A + 1) / 2, X, 2};
    default: return {B, H, X, A};
  }
}
at::ScalarType pack_dtype(Pack kind) { return kind == Pack::transposed ? at::kFloat : at::kBFloat16; }

// Fills out (pack_shape, pack_dtype) with x packed.
void pack_into(Pack kind, const at::Tensor& x, at::Tensor& out) { ZENATTN_ISA_DISPATCH(attention_pack, kind, x, out) }

// ---- scratch kept between calls ----------------------------------------------------------------
// The launchers' internal tensors (the brgemm packs, the backward's dK/dV partials) come from one
// buffer kept between calls, up to kKeptScratchBytes. Fresh buffers of that size come from malloc's
// mmap or the top of its heap, which free hands back to the kernel, and the next call faults every
// 4 KiB page in again: measured on the project's 2-core VM, 736 page faults per fp32 backward at
// B=16 H=4 N=128 D=32 took 1.3 ms of its 3.1 ms. A call over the cap (long sequences, where the
// products dwarf the faults) lets the kept buffer go before it takes fresh tensors, so the two are
// never held together; a call while another thread holds the buffer takes fresh tensors. The cap
// covers the reference Transformer's presets (at most ~9 MiB a call).
constexpr int64_t kKeptScratchBytes = int64_t(16) << 20;
constexpr int64_t kScratchAlign = 64;

struct ScratchSpec {
  std::vector<int64_t> shape;
  at::ScalarType dtype;
};

class Scratch {
 public:
  // One contiguous tensor per spec, all of one call's scratch at once (so the buffer is sized
  // once, before any of them exists): views of the kept buffer (grown to fit, the old one let go
  // first) where they fit under the cap and no other call holds it; fresh tensors otherwise. They
  // must not be used after this Scratch ends: the next call reuses the memory.
  explicit Scratch(const std::vector<ScratchSpec>& specs) : lock_(state().mutex, std::defer_lock) {
    std::vector<int64_t> offsets, bytes;
    int64_t total = 0;
    for (const ScratchSpec& spec : specs) {
      int64_t numel = 1;
      for (int64_t s : spec.shape) numel *= s;
      offsets.push_back(total), bytes.push_back(numel * int64_t(c10::elementSize(spec.dtype)));
      total += (bytes.back() + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
    }
    if (total > 0) lock_.try_lock();
    const bool kept = lock_.owns_lock() && total <= kKeptScratchBytes;
    at::Tensor& buf = state().buf;
    if (lock_.owns_lock() && (!kept || (buf.defined() && buf.numel() < total))) buf = at::Tensor();
    if (kept && !buf.defined()) buf = at::empty({total}, at::TensorOptions().dtype(at::kByte));
    for (size_t i = 0; i < specs.size(); ++i) {
      const ScratchSpec& spec = specs[i];
      tensors_.push_back(kept ? buf.narrow(0, offsets[i], bytes[i]).view(spec.dtype).view(spec.shape)
                              : at::empty(spec.shape, at::TensorOptions().dtype(spec.dtype)));
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  const at::Tensor& operator[](size_t i) const { return tensors_.at(i); }
  // Lets tensor i go early (a fresh one is freed then: a lower peak for what the call does next).
  void drop(size_t i) { tensors_.at(i).reset(); }

  // Lets the kept buffer go (after any call that holds it); returns the bytes it held.
  static int64_t release() {
    std::lock_guard<std::mutex> guard(state().mutex);
    const int64_t held = state().buf.defined() ? state().buf.numel() : 0;
    state().buf = at::Tensor();
    return held;
  }

 private:
  struct State {
    std::mutex mutex;
    at::Tensor buf;  // bytes
  };
  static State& state() {
    static auto* st = new State();  // never freed: no tensor destructor runs at exit
    return *st;
  }
  std::unique_lock<std::mutex> lock_;
  std::vector<at::Tensor> tensors_;
};

// The brgemm packs a launcher makes, as (kind, x): their scratch specs, and the packing itself into
// scratch tensors [0, packs.size()).
using Packs = std::vector<std::pair<Pack, at::Tensor>>;
std::vector<ScratchSpec> pack_specs(const Packs& packs) {
  std::vector<ScratchSpec> specs;
  for (const auto& [kind, x] : packs) specs.push_back({pack_shape(kind, x), pack_dtype(kind)});
  return specs;
}
void make_packs(const Packs& packs, const Scratch& scratch) {
  for (size_t i = 0; i < packs.size(); ++i) {
    at::Tensor out = scratch[i];
    pack_into(packs[i].first, packs[i].second, out);
  }
}

}  // namespace

std::string attention_f32_brgemm_rule() {
  if (!blas::f32_brgemm_available()) return "never";
  const std::string rule = "from " + std::to_string(kBrgemmMinQueries) + " queries";
  if (f32_brgemm_any_shape()) return rule;
  return rule + ", up to " + std::to_string(kF32BrgemmMaxKeysAvx2) + " keys, head dims up to " +
         std::to_string(kF32BrgemmMaxDimAvx2);
}

int64_t release_attention_scratch() { return Scratch::release(); }

at::Tensor pack_operand(Pack kind, const at::Tensor& x) {
  at::Tensor out = at::empty(pack_shape(kind, x), x.options().dtype(pack_dtype(kind)));
  pack_into(kind, x, out);
  return out;
}

std::vector<at::Tensor> attention_fwd(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                      const AttnOptions& opt) {
  const Products products = products_for(q_in, k_in, v_in);
  const at::ScalarType type = operand_type(products, q_in);
  const at::Tensor q = operand(q_in, type), k = operand(k_in, type), v = operand(v_in, type);
  at::Tensor mask_holder, alibi_holder;
  AttnParams p = make_params(products, q, k, v, opt, mask_holder, alibi_holder);
  Packs packs;  // K^T (bf16: in VNNI pairs), and bf16's V in pairs
  if (products == Products::brgemm_bf16) {
    packs = {{Pack::pairs_t, k}, {Pack::pairs, v}};
  } else if (products == Products::brgemm_f32) {
    packs = {{Pack::transposed, k}};
  }
  Scratch scratch(pack_specs(packs));
  make_packs(packs, scratch);
  p.kt_pack = packs.size() > 0 ? scratch[0].data_ptr() : nullptr;
  p.v_pack = packs.size() > 1 ? scratch[1].data_ptr() : nullptr;
  const auto opts = q.options().dtype(p.dtype);
  at::Tensor out = like_q(q_in, p.Dv, opts);
  at::Tensor lse = at::empty({p.B, p.Hq, p.Nq}, opts), lse_lo = at::empty({p.B, p.Hq, p.Nq}, opts);
  p.out = out.data_ptr();
  p.out_sb = out.stride(0), p.out_sh = out.stride(1), p.out_sn = row_stride(out);
  p.lse = lse.data_ptr();
  p.lse_lo = lse_lo.data_ptr();
  if (out.numel() > 0 || lse.numel() > 0) run_fwd(p);
  for (size_t i = 0; i < packs.size(); ++i) scratch.drop(i);
  // Half-precision inputs also get the output at the compute precision: the backward's
  // delta = rowsum(dO * O) from the rounded output would shift every dS of a row by up to one
  // rounding step of O (dq and dk errors many times torch's; found by tests/test_fuzz.py).
  if (q_in.scalar_type() != p.dtype) return {out.to(q_in.scalar_type()), lse, out, lse_lo};
  return {out, lse, at::empty({0}, opts), lse_lo};
}

std::vector<at::Tensor> attention_bwd(const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in,
                                      const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
                                      const at::Tensor& lse_lo_in, const std::optional<at::Tensor>& dlse_in,
                                      const AttnOptions& opt) {
  const Products products = products_for(q_in, k_in, v_in);
  const at::ScalarType type = operand_type(products, q_in);
  const at::Tensor q = operand(q_in, type), k = operand(k_in, type), v = operand(v_in, type);
  const at::Tensor dout = operand(dout_in, type);
  at::Tensor mask_holder, alibi_holder;
  AttnParams p = make_params(products, q, k, v, opt, mask_holder, alibi_holder);
  const at::Tensor o = operand(out_in, p.dtype);
  const at::Tensor dlse = dlse_in.has_value() ? dlse_in->to(p.dtype).contiguous() : at::Tensor();
  const at::Tensor lse = lse_in.to(p.dtype).contiguous(), lse_lo = lse_lo_in.to(p.dtype).contiguous();
  const bool brgemm = products != Products::blas;
  Packs packs;  // K^T and V^T (bf16: in VNNI pairs), and bf16's K in pairs
  if (products == Products::brgemm_bf16) {
    packs = {{Pack::pairs_t, k}, {Pack::pairs_t, v}, {Pack::pairs, k}};
  } else if (brgemm) {
    packs = {{Pack::transposed, k}, {Pack::transposed, v}};
  }
  // dK/dV per (q head, query chunk): a GQA group's heads and a head's chunks are summed below, in
  // a fixed order. Without GQA and with one chunk they are dK/dV themselves. (brgemm modes: dK^T /
  // dV^T, transposed back below, so from the scratch like the packs.)
  p.q_chunks = attention_bwd_q_chunks(p);
  const auto part_shape = [&](int64_t x) {
    return brgemm ? std::vector<int64_t>{p.B, p.Hq * p.q_chunks, x, p.Nk}
                  : std::vector<int64_t>{p.B, p.Hq * p.q_chunks, p.Nk, x};
  };
  std::vector<ScratchSpec> specs = pack_specs(packs);
  const size_t parts_at = specs.size();
  if (brgemm) {
    specs.push_back({part_shape(p.D), p.dtype});
    specs.push_back({part_shape(p.Dv), p.dtype});
  }
  // Half inputs: dq in the compute type, converted to q's type at the end, so from the scratch too.
  const size_t dq_at = specs.size();
  const bool dq_converted = q_in.scalar_type() != p.dtype;
  if (dq_converted) specs.push_back({like_q_memory(q_in, p.D), p.dtype});
  Scratch scratch(specs);
  make_packs(packs, scratch);
  p.kt_pack = packs.size() > 0 ? scratch[0].data_ptr() : nullptr;
  p.vt_pack = packs.size() > 1 ? scratch[1].data_ptr() : nullptr;
  p.k_pack = packs.size() > 2 ? scratch[2].data_ptr() : nullptr;
  p.lse = const_cast<void*>(lse.data_ptr());
  p.lse_lo = const_cast<void*>(lse_lo.data_ptr());
  p.dout = dout.data_ptr();
  p.do_sb = dout.stride(0), p.do_sh = dout.stride(1), p.do_sn = row_stride(dout);
  p.o = o.data_ptr();
  p.dlse = dlse.defined() ? dlse.data_ptr() : nullptr;
  p.o_sb = o.stride(0), p.o_sh = o.stride(1), p.o_sn = row_stride(o);
  const auto opts = q.options().dtype(p.dtype);
  const at::Tensor dq = dq_converted ? as_like_q(q_in, scratch[dq_at]) : like_q(q_in, p.D, opts);
  const at::Tensor dk_parts = brgemm ? scratch[parts_at] : at::empty(part_shape(p.D), opts);
  const at::Tensor dv_parts = brgemm ? scratch[parts_at + 1] : at::empty(part_shape(p.Dv), opts);
  p.dq = dq.data_ptr();
  p.dq_sb = dq.stride(0), p.dq_sh = dq.stride(1), p.dq_sn = row_stride(dq);
  p.dk_parts = dk_parts.data_ptr();
  p.dv_parts = dv_parts.data_ptr();
  if (p.B * p.Hq > 0) run_bwd(p);
  for (size_t i = 0; i < packs.size(); ++i) scratch.drop(i);  // before the copies below: a lower peak
  at::Tensor dk = dk_parts, dv = dv_parts;
  if (p.Hq * p.q_chunks != p.Hkv) {
    const int64_t parts = p.Hq * p.q_chunks / std::max<int64_t>(p.Hkv, 1);
    dk = dk_parts.unflatten(1, {p.Hkv, parts}).sum(2);
    dv = dv_parts.unflatten(1, {p.Hkv, parts}).sum(2);
  }
  if (brgemm) {
    const Pack back = products == Products::brgemm_bf16 ? Pack::transposed_bf16 : Pack::transposed;
    dk = pack_operand(back, dk), dv = pack_operand(back, dv);
  }
  const auto result = [](const at::Tensor& t, const at::Tensor& like) {
    return t.to(like.scalar_type(), false, false, at::MemoryFormat::Contiguous);
  };
  return {dq.to(q_in.scalar_type()), result(dk, k_in), result(dv, v_in)};  // dq keeps its layout
}

at::Tensor attention_dropout_keep(int64_t seed, int64_t B, int64_t H, int64_t Nq, int64_t Nk, double p) {
  at::Tensor keep = at::empty({B, H, Nq, Nk}, at::TensorOptions().dtype(at::kBool));
  bool* out = keep.data_ptr<bool>();
  const DropoutRng rng{static_cast<uint64_t>(seed), DropoutRng::threshold_for(p)};
  at::parallel_for(0, B * H * Nq, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / std::max<int64_t>(Nq, 1), i = row % std::max<int64_t>(Nq, 1);
      for (int64_t j = 0; j < Nk; ++j) {
        out[row * Nk + j] = (rng.keep4(uint64_t(bh), uint64_t(i), uint64_t(j) >> 2) >> (j & 3)) & 1u;
      }
    }
  });
  return keep;
}

}  // namespace zenattn::cpu
