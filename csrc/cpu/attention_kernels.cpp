// Flash attention forward and backward on the CPU (compiled once per instruction set, see
// CMakeLists.txt). FlashAttention-2's schedule (Dao, 2023) on CPU threads:
//
//   forward   one work item per (batch, q head, block of up to 256 queries). Scores for a block of
//             keys come from one BLAS product, the online softmax rescales the running output
//             in place, and a second product adds P @ V. Only O and the log-sum-exp (as lse and
//             the lse_lo its rounding lost, csrc/cpu/attention.h) are stored.
//   backward  one work item per (batch, q head, chunk of its query blocks; one chunk unless there
//             are few heads, see attention_bwd_q_chunks), walking its query blocks in order: each
//             tile recomputes P = exp(S - lse - lse_lo) from the saved log-sum-exp, and four products give
//             dV += P^T dO, dP = dO V^T, dQ += dS K, dK += dS^T Q with dS = P * (dP - delta).
//             Every gradient element is summed by one thread in a fixed order, and the work split
//             depends on the shape alone, so the backward is deterministic whatever the thread
//             count; dK/dV partials per (q head, chunk) are summed by the launcher afterwards.
//
// Nothing of size Nq x Nk is ever allocated: scratch is a few (query block x key block) tiles per thread.
//
// The tile products (AttnParams::products) run on BLAS (sgemm_/dgemm_, any operand layout) or on
// oneDNN's brgemm micro-kernels (blas::brgemm), which take B untransposed (bf16: in VNNI pairs) and
// apply no scale: the launcher packs K^T and V^T once per call, the backward transposes each query
// block's Q and dO as it starts on it, the scale is applied to the scores and folded into dS, and
// the backward computes dK^T and dV^T (dO^T P and Q^T dS, with P and dS as B untransposed: bf16
// packs them by pairs of query rows). bf16 brgemm takes bf16 operands (the launcher's packs, and
// P / dS rounded to bf16 per tile) and accumulates in fp32; everything between the products
// (softmax, masks, dS) stays fp32.
#include "cpu/attention.h"
#include "cpu/blas.h"
#include "cpu/vnni.h"
#include "common/philox.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace zenattn::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Key tile sizes, measured on the 2-core AVX512 VM (B=1, H=8, N=2048-4096, D=64/128, fp32; see
// benchmarks/results/). Query tiles: attention_block_q (attention.h).
constexpr int64_t kFwdBlockK = 512;   // keys per forward tile (scores tile: 512 KiB fp32)
constexpr int64_t kBwdBlockK = 256;   // keys per backward tile (up to four such tiles live at once)

// The forward's query block: attention_block_q, halved (down to 32) while that leaves fewer than
// kFwdMinItems work items, so short or few sequences still spread over several threads. A function
// of the shape only: the block size changes the BLAS products' shapes and so their rounding, and
// the result must not depend on the thread count.
constexpr int64_t kFwdMinItems = 16;
int64_t fwd_block_q(const AttnParams& p) {
  int64_t bq = attention_block_q(p);
  while (bq > 32 && p.B * p.Hq * ((p.Nq + bq - 1) / bq) < kFwdMinItems) bq /= 2;
  return bq;
}

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// ---- vectorized row helpers -------------------------------------------------------------------

template <typename T>
T hsum(const Vectorized<T>& v) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T sum = T(0);
  for (int64_t t = 0; t < Vectorized<T>::size(); ++t) sum += lanes[t];
  return sum;
}

template <typename T>
T row_max(const T* s, int64_t n) {
  using Vec = Vectorized<T>;
  int64_t c = 0;
  T m = kNegInf<T>;
  if (n >= Vec::size()) {
    Vec vm = Vec::loadu(s);
    for (c = Vec::size(); c + Vec::size() <= n; c += Vec::size()) vm = at::vec::maximum(vm, Vec::loadu(s + c));
    T lanes[Vec::size()];
    vm.store(lanes);
    for (int64_t t = 0; t < Vec::size(); ++t) m = std::max(m, lanes[t]);
  }
  for (; c < n; ++c) m = std::max(m, s[c]);
  return m;
}

// Vectorized<float>::exp_u20 (ATen's faster exp, about 20 ulp, what torch's own CPU flash attention
// uses) where this torch has it; the accurate exp otherwise, and always for double.
template <typename V, typename = void>
struct HasExpU20 : std::false_type {};
template <typename V>
struct HasExpU20<V, std::void_t<decltype(std::declval<const V&>().exp_u20())>> : std::true_type {};

template <typename T>
Vectorized<T> fast_exp(const Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float> && HasExpU20<Vectorized<T>>::value) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// s = exp(s * mul - shift) in place (one rounding before the exp: a fused multiply-add; mul = 1
// is exactly s - shift); returns the sum.
template <typename T>
T exp_shift_sum(T* s, int64_t n, T shift, T mul) {
  using Vec = Vectorized<T>;
  const Vec vneg(-shift), vmul(mul);
  Vec vsum(T(0));
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec e = fast_exp(at::vec::fmadd(Vec::loadu(s + c), vmul, vneg));
    e.store(s + c);
    vsum = vsum + e;
  }
  T sum = hsum(vsum);
  for (; c < n; ++c) {
    s[c] = std::exp(std::fma(s[c], mul, -shift));
    sum += s[c];
  }
  return sum;
}

// s = exp((s * mul - hi) - lo) in place: the backward's P from the saved lse (hi) and lse_lo (lo).
template <typename T>
void exp_minus_lse(T* s, int64_t n, T hi, T lo, T mul) {
  using Vec = Vectorized<T>;
  const Vec vhi(-hi), vlo(lo), vmul(mul);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    fast_exp(at::vec::fmadd(Vec::loadu(s + c), vmul, vhi) - vlo).store(s + c);
  }
  for (; c < n; ++c) s[c] = std::exp(std::fma(s[c], mul, -hi) - lo);
}

// hi + lo = a + b exactly, hi = a + b rounded (Knuth's two-sum; no fast-math here to reorder it).
template <typename T>
std::pair<T, T> two_sum(T a, T b) {
  const T hi = a + b, b_part = hi - a;
  return {hi, (a - (hi - b_part)) + (b - b_part)};
}

// out = bf16(exp(s * mul - shift)) (the forward's P, ready for the bf16 product); returns the sum
// of the unrounded values.
float exp_shift_sum_bf16(const float* s, int64_t n, float shift, float mul, at::BFloat16* out) {
  using Vec = Vectorized<float>;
  constexpr int64_t W = Vec::size();
  const Vec vneg(-shift), vmul(mul);
  Vec vsum(0.0f);
  int64_t c = 0;
  for (; c + 2 * W <= n; c += 2 * W) {
    const Vec e0 = fast_exp(at::vec::fmadd(Vec::loadu(s + c), vmul, vneg));
    const Vec e1 = fast_exp(at::vec::fmadd(Vec::loadu(s + c + W), vmul, vneg));
    vsum = vsum + (e0 + e1);
    at::vec::convert_from_float<at::BFloat16>(e0, e1).store(out + c);
  }
  float sum = hsum(vsum);
  for (; c < n; ++c) {
    const float e = std::exp(std::fma(s[c], mul, -shift));
    sum += e;
    out[c] = at::BFloat16(e);
  }
  return sum;
}

template <typename T>
void scale_row(T* x, int64_t n, T a) {
  using Vec = Vectorized<T>;
  const Vec va(a);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) (Vec::loadu(x + c) * va).store(x + c);
  for (; c < n; ++c) x[c] *= a;
}

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  using Vec = Vectorized<T>;
  Vec acc(T(0));
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) acc = at::vec::fmadd(Vec::loadu(a + c), Vec::loadu(b + c), acc);
  T sum = hsum(acc);
  for (; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

// dst[r, c] = bf16(src[r, c]) for rows x cols, and 0 in column cols when cols is odd (the zero
// the VNNI pair of a product's K dimension needs).
void round_rows(const float* src, int64_t ld_src, int64_t rows, int64_t cols, at::BFloat16* dst, int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r) {
    at::vec::convert(src + r * ld_src, dst + r * ld_dst, cols);
    if (cols % 2) dst[r * ld_dst + cols] = at::BFloat16(0.0f);
  }
}

// ---- masks -------------------------------------------------------------------------------------

template <typename T, typename M>
void add_mask_row(T* s, const M* m, int64_t sk, int64_t n) {
  for (int64_t c = 0; c < n; ++c) s[c] += T(m[c * sk]);
}

template <typename T>
void bool_mask_row(T* s, const bool* m, int64_t sk, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    if (!m[c * sk]) s[c] = kNegInf<T>;
  }
}

// Adds or applies the user mask to n scores of one row, starting at key j0.
template <typename T>
void apply_mask_row(T* s, const AttnMask& mask, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n) {
  const int64_t off = b * mask.sb + h * mask.sh + i * mask.sq + j0 * mask.sk;
  switch (mask.dtype) {
    case at::kBool: return bool_mask_row(s, static_cast<const bool*>(mask.ptr) + off, mask.sk, n);
    case at::kFloat: return add_mask_row(s, static_cast<const float*>(mask.ptr) + off, mask.sk, n);
    case at::kDouble: return add_mask_row(s, static_cast<const double*>(mask.ptr) + off, mask.sk, n);
    case at::kBFloat16: return add_mask_row(s, static_cast<const at::BFloat16*>(mask.ptr) + off, mask.sk, n);
    case at::kHalf: return add_mask_row(s, static_cast<const at::Half*>(mask.ptr) + off, mask.sk, n);
    default: TORCH_CHECK(false, "zenattn cpu attention: unsupported mask dtype ", mask.dtype);
  }
}

// ---- one (batch, head): pointers and the score tile --------------------------------------------

// Element type of the products' operands: bfloat16 in brgemm_bf16 mode, T otherwise.
template <typename T, Products kP>
using Operand = std::conditional_t<kP == Products::brgemm_bf16, at::BFloat16, T>;

template <typename T, Products kP>
struct Head {
  using E = Operand<T, kP>;
  static constexpr bool kBf16 = kP == Products::brgemm_bf16;
  static constexpr int64_t kPair = kBf16 ? 2 : 1;  // elements per column of a (VNNI) B pack
  const AttnParams& p;
  int64_t b, h, bh;          // bh = b * Hq + h
  const T* q;                // (Nq, D), row stride p.q_sn
  const T* k;                // (Nk, D), row stride p.k_sn
  const T* v;                // (Nk, Dv), row stride p.v_sn
  T slope;                   // ALiBi slope, 0 without ALiBi
  DropoutRng rng;
  // brgemm modes: q and dO rows as operands, this head's packs (AttnParams), and V and K as B
  // operands (bf16: the launcher's VNNI packs; fp32: v and k in place), row r at vb + r * vb_ld
  const E *qe = nullptr, *doe = nullptr, *kt = nullptr, *vt = nullptr;
  const E *vb = nullptr, *kb = nullptr;
  int64_t vb_ld = 0, kb_ld = 0;
  // The factor scores() leaves to the softmax's exp (exp_shift_sum's mul), saving a pass over each
  // tile: the scale, where the brgemm products cannot apply it and nothing else is added to or
  // applied to the scores before the exp (a bool mask and the causal/window masks only set -inf,
  // which any positive factor keeps); 1 otherwise.
  bool scale_in_exp = false;
  T pending_scale = T(1);

  Head(const AttnParams& params, int64_t b_, int64_t h_) : p(params), b(b_), h(h_), bh(b_ * params.Hq + h_) {
    const int64_t hk = h / (p.Hq / p.Hkv);
    q = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
    k = static_cast<const T*>(p.k) + b * p.k_sb + hk * p.k_sh;
    v = static_cast<const T*>(p.v) + b * p.v_sb + hk * p.v_sh;
    slope = p.alibi ? static_cast<const T*>(p.alibi)[b * p.alibi_sb + h] : T(0);
    rng = DropoutRng{p.seed, DropoutRng::threshold_for(p.dropout_p)};
    if constexpr (kP != Products::blas) {
      const bool only_inf_masks = p.softcap <= 0 && !p.alibi && (!p.mask.ptr || p.mask.dtype == at::kBool);
      scale_in_exp = only_inf_masks && p.scale > 0;
      if (scale_in_exp) pending_scale = T(p.scale);
      const int64_t kv = b * p.Hkv + hk, Nk2 = p.Nk + p.Nk % 2;
      const auto at_ = [](const void* base, int64_t offset) {
        return base ? static_cast<const E*>(base) + offset : nullptr;
      };
      qe = at_(p.q, b * p.q_sb + h * p.q_sh);
      doe = at_(p.dout, b * p.do_sb + h * p.do_sh);
      kt = at_(p.kt_pack, kv * p.D * p.Nk);
      vt = at_(p.vt_pack, kv * p.Dv * p.Nk);
      if constexpr (kBf16) {
        vb = at_(p.v_pack, kv * Nk2 * p.Dv), vb_ld = p.Dv;
        kb = at_(p.k_pack, kv * Nk2 * p.D), kb_ld = p.D;
      } else {
        vb = v, vb_ld = p.v_sn;
        kb = k, kb_ld = p.k_sn;
      }
    }
  }

  // Keys that rows [i0, i1) may attend at all (causal / window): [lo, hi).
  std::pair<int64_t, int64_t> key_range(int64_t i0, int64_t i1) const {
    int64_t lo = 0, hi = p.Nk;
    if (p.window_left >= 0) lo = std::max<int64_t>(lo, i0 + p.offset - p.window_left);
    if (p.window_right >= 0) hi = std::min<int64_t>(hi, i1 + p.offset + p.window_right);  // last row i1 - 1
    // bf16 packs hold pairs of keys: start on an even one (the extra key is masked in scores()).
    if (kBf16 && lo < hi) lo -= lo % 2;
    return {lo, std::max(lo, hi)};
  }

  // S[r, c] (row stride ld) = score of query i0 + r and key j0 + c, masked scores -inf, still to
  // be multiplied by pending_scale. With softcap, tanh_out[r, c] receives tanh(raw / softcap),
  // which the backward differentiates.
  void scores(T* S, int64_t ld, int64_t i0, int64_t rows, int64_t j0, int64_t cols, T* tanh_out) const {
    if constexpr (kP == Products::blas) {
      blas::gemm(false, true, rows, cols, p.D, T(p.scale), q + i0 * p.q_sn, p.q_sn, k + j0 * p.k_sn, p.k_sn,
                 T(0), S, ld);
    } else {
      blas::brgemm(rows, cols, p.D, qe + i0 * p.q_sn, p.q_sn, kt + kPair * j0, p.Nk, false, S, ld);
    }
    for (int64_t r = 0; r < rows; ++r) {
      T* s = S + r * ld;
      const int64_t i = i0 + r;
      if (kP != Products::blas && !scale_in_exp) scale_row(s, cols, T(p.scale));
      if (p.softcap > 0) softcap_row(s, cols, tanh_out + r * ld);
      if (p.alibi) {
        for (int64_t c = 0; c < cols; ++c) s[c] -= slope * T(std::abs(i + p.offset - (j0 + c)));
      }
      if (p.mask.ptr) apply_mask_row(s, p.mask, b, h, i, j0, cols);
      // causal / sliding window: keys outside [i + offset - left, i + offset + right]
      if (p.window_left >= 0) {
        const int64_t end = std::min<int64_t>(cols, i + p.offset - p.window_left - j0);
        for (int64_t c = 0; c < end; ++c) s[c] = kNegInf<T>;
      }
      if (p.window_right >= 0) {
        for (int64_t c = std::max<int64_t>(0, i + p.offset + p.window_right + 1 - j0); c < cols; ++c) s[c] = kNegInf<T>;
      }
    }
  }

  void softcap_row(T* s, int64_t n, T* t) const {
    using Vec = Vectorized<T>;
    const T cap = T(p.softcap), inv = T(1) / cap;
    const Vec vcap(cap), vinv(inv);
    int64_t c = 0;
    for (; c + Vec::size() <= n; c += Vec::size()) {
      const Vec th = (Vec::loadu(s + c) * vinv).tanh();
      th.store(t + c);
      (th * vcap).store(s + c);
    }
    for (; c < n; ++c) {
      t[c] = std::tanh(s[c] * inv);
      s[c] = cap * t[c];
    }
  }

  // keep[r, c] (row stride ld) = 1 if dropout keeps score (i0 + r, j0 + c).
  void dropout_keep(uint8_t* keep, int64_t ld, int64_t i0, int64_t rows, int64_t j0, int64_t cols) const {
    for (int64_t r = 0; r < rows; ++r) rng.keep_flags(uint64_t(bh), uint64_t(i0 + r), j0, cols, keep + r * ld);
  }
};

// ---- per-thread tiles ---------------------------------------------------------------------------

// n elements of E, from a buffer each thread keeps between calls (grow-only; per thread a few
// (query block x key block) tiles, about 2 MiB at most: 256 queries, D 256). Vectors made afresh each
// call can come back from malloc as pages that the thread's arena trimmed, to fault in again (the
// launcher's scratch, attention.cpp, has the measurement). Contents are stale: every user writes
// an element before it reads it. kSlot tells a kernel's buffers of one type apart (the forward and
// the backward share them, never at the same time on one thread).
template <typename E>
struct Tile {
  E* ptr;
  int64_t n;
  E* data() const { return ptr; }
  E* begin() const { return ptr; }
  E* end() const { return ptr + n; }
  E& operator[](int64_t i) const { return ptr[i]; }
};

template <typename E, int kSlot>
Tile<E> thread_tile(int64_t n) {
  thread_local std::vector<E> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return {buf.data(), n};
}

// ---- forward -----------------------------------------------------------------------------------

template <typename T, Products kP>
void forward(const AttnParams& p) {
  constexpr bool kBf16 = kP == Products::brgemm_bf16;
  const int64_t BQ = fwd_block_q(p);
  const int64_t n_qblocks = (p.Nq + BQ - 1) / BQ;
  const bool dropout = p.dropout_p > 0;
  const T keep_scale = dropout ? T(1) / T(1 - p.dropout_p) : T(1);
  at::parallel_for(0, p.B * p.Hq * n_qblocks, 1, [&](int64_t begin, int64_t end) {
    const Tile<T> S = thread_tile<T, 0>(BQ * kFwdBlockK), acc = thread_tile<T, 1>(BQ * p.Dv);
    const Tile<T> m = thread_tile<T, 2>(BQ), l = thread_tile<T, 3>(BQ);
    const Tile<T> tanh_buf = thread_tile<T, 4>(p.softcap > 0 ? BQ * kFwdBlockK : 0);
    const Tile<uint8_t> keep = thread_tile<uint8_t, 0>(dropout ? BQ * kFwdBlockK : 0);
    const Tile<at::BFloat16> Pb = thread_tile<at::BFloat16, 0>(kBf16 ? BQ * kFwdBlockK : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t qb = item % n_qblocks, bh = item / n_qblocks;
      const Head<T, kP> head(p, bh / p.Hq, bh % p.Hq);
      const int64_t i0 = qb * BQ, rows = std::min(BQ, p.Nq - i0);
      const auto [klo, khi] = head.key_range(i0, i0 + rows);
      std::fill(m.begin(), m.end(), kNegInf<T>);
      std::fill(l.begin(), l.end(), T(0));
      std::fill(acc.begin(), acc.end(), T(0));

      for (int64_t j0 = klo; j0 < khi; j0 += kFwdBlockK) {
        const int64_t cols = std::min(kFwdBlockK, khi - j0);
        head.scores(S.data(), kFwdBlockK, i0, rows, j0, cols, tanh_buf.data());
        if (dropout) head.dropout_keep(keep.data(), kFwdBlockK, i0, rows, j0, cols);
        // online softmax: P = exp(S - m_new); the running output and sum scale by exp(m_old - m_new)
        // (bf16 mode: P rounded to bf16 into Pb, with the zero column an odd cols needs)
        for (int64_t r = 0; r < rows; ++r) {
          T* s = S.data() + r * kFwdBlockK;
          at::BFloat16* pb = kBf16 ? Pb.data() + r * kFwdBlockK : nullptr;
          if (kBf16 && cols % 2) pb[cols] = at::BFloat16(0.0f);
          const T m_new = std::max(m[r], row_max(s, cols) * head.pending_scale);
          if (m_new == kNegInf<T>) {  // nothing attended yet: P is 0 (and exp(-inf - -inf) is NaN)
            std::fill(s, s + cols, T(0));
            if (kBf16) std::fill(pb, pb + cols, at::BFloat16(0.0f));
            continue;
          }
          const T rescale = std::exp(m[r] - m_new);
          T sum;
          if constexpr (kBf16) {
            sum = dropout ? exp_shift_sum(s, cols, m_new, head.pending_scale)
                          : exp_shift_sum_bf16(s, cols, m_new, head.pending_scale, pb);
          } else {
            sum = exp_shift_sum(s, cols, m_new, head.pending_scale);
          }
          l[r] = l[r] * rescale + sum;
          if (rescale != T(1)) scale_row(acc.data() + r * p.Dv, p.Dv, rescale);
          m[r] = m_new;
          if (dropout) {  // the sum above keeps every score: dropout acts on the normalized P
            const uint8_t* kr = keep.data() + r * kFwdBlockK;
            for (int64_t c = 0; c < cols; ++c) s[c] = kr[c] ? s[c] * keep_scale : T(0);
            if (kBf16) at::vec::convert(s, pb, cols);
          }
        }
        // acc (rows, Dv) += P (rows, cols) @ V[j0 : j0 + cols] (cols, Dv)
        if constexpr (kP == Products::blas) {
          blas::gemm(false, false, rows, p.Dv, cols, T(1), S.data(), kFwdBlockK, head.v + j0 * p.v_sn, p.v_sn,
                     T(1), acc.data(), p.Dv);
        } else if constexpr (kBf16) {
          blas::brgemm(rows, p.Dv, cols + cols % 2, Pb.data(), kFwdBlockK, head.vb + j0 * head.vb_ld, head.vb_ld,
                       true, acc.data(), p.Dv);
        } else {
          blas::brgemm(rows, p.Dv, cols, S.data(), kFwdBlockK, head.vb + j0 * head.vb_ld, head.vb_ld, true,
                       acc.data(), p.Dv);
        }
      }

      // out = acc / l; lse + lse_lo = m + log(l); rows with nothing attended: out 0, lse -inf
      T* out = static_cast<T*>(p.out) + head.b * p.out_sb + head.h * p.out_sh + i0 * p.out_sn;
      T* lse = static_cast<T*>(p.lse) + bh * p.Nq + i0;
      T* lse_lo = static_cast<T*>(p.lse_lo) + bh * p.Nq + i0;
      for (int64_t r = 0; r < rows; ++r) {
        const bool any = l[r] > T(0);
        std::copy_n(acc.data() + r * p.Dv, p.Dv, out + r * p.out_sn);
        scale_row(out + r * p.out_sn, p.Dv, any ? T(1) / l[r] : T(0));
        std::tie(lse[r], lse_lo[r]) = any ? two_sum(m[r], std::log(l[r])) : std::pair<T, T>{kNegInf<T>, T(0)};
      }
    }
    if constexpr (kBf16) blas::brgemm_release();
  });
}

// ---- backward ----------------------------------------------------------------------------------

template <typename T, Products kP>
void backward(const AttnParams& p) {
  constexpr bool kBf16 = kP == Products::brgemm_bf16;
  constexpr int64_t kPair = Head<T, kP>::kPair;
  constexpr int64_t BK = kBwdBlockK;
  const int64_t BQ = attention_block_q(p);
  const int64_t n_qblocks = (p.Nq + BQ - 1) / BQ;
  const int64_t chunks = p.q_chunks;
  const bool dropout = p.dropout_p > 0;
  const T keep_scale = dropout ? T(1) / T(1 - p.dropout_p) : T(1);
  const T scale = T(p.scale);
  at::parallel_for(0, p.B * p.Hq * chunks, 1, [&](int64_t begin, int64_t end) {
    const Tile<T> P = thread_tile<T, 0>(BQ * BK), dS = thread_tile<T, 1>(BQ * BK);
    const Tile<T> dq_acc = thread_tile<T, 2>(BQ * p.D), delta = thread_tile<T, 3>(BQ);
    const Tile<T> tanh_buf = thread_tile<T, 4>(p.softcap > 0 ? BQ * BK : 0);
    const Tile<T> Pd = thread_tile<T, 5>(dropout ? BQ * BK : 0);
    const Tile<uint8_t> keep = thread_tile<uint8_t, 0>(dropout ? BQ * BK : 0);
    // bf16 mode: P rounded and packed by row pairs, dS rounded (rows x cols, padded to even cols)
    // and packed by row pairs
    const Tile<at::BFloat16> Pv = thread_tile<at::BFloat16, 0>(kBf16 ? (BQ + 1) * BK : 0);
    const Tile<at::BFloat16> dSb = thread_tile<at::BFloat16, 1>(kBf16 ? BQ * BK : 0);
    const Tile<at::BFloat16> dSv = thread_tile<at::BFloat16, 2>(kBf16 ? (BQ + 1) * BK : 0);
    const Tile<T> do_row = thread_tile<T, 6>(kBf16 ? p.Dv : 0);
    // brgemm modes: this query block's Q^T (D, BQ) and dO^T (Dv, BQ), zero columns past its rows
    using E = Operand<T, kP>;
    const Tile<E> q_t = thread_tile<E, 7>(kP != Products::blas ? p.D * BQ : 0);
    const Tile<E> do_t = thread_tile<E, 8>(kP != Products::blas ? p.Dv * BQ : 0);
    for (int64_t item = begin; item < end; ++item) {
      // item = (bh, chunk): query blocks [qb_begin, qb_end) of head bh, dK/dV into its own part
      const int64_t bh = item / chunks, chunk = item % chunks;
      const int64_t qb_begin = chunk * n_qblocks / chunks, qb_end = (chunk + 1) * n_qblocks / chunks;
      const Head<T, kP> head(p, bh / p.Hq, bh % p.Hq);
      const T* dout = static_cast<const T*>(p.dout) + head.b * p.do_sb + head.h * p.do_sh;
      const T* o = static_cast<const T*>(p.o) + head.b * p.o_sb + head.h * p.o_sh;
      const T* lse = static_cast<const T*>(p.lse) + bh * p.Nq;
      const T* lse_lo = static_cast<const T*>(p.lse_lo) + bh * p.Nq;
      const T* dlse = p.dlse ? static_cast<const T*>(p.dlse) + bh * p.Nq : nullptr;
      T* dq = static_cast<T*>(p.dq) + head.b * p.dq_sb + head.h * p.dq_sh;
      T* dk = static_cast<T*>(p.dk_parts) + item * p.Nk * p.D;
      T* dv = static_cast<T*>(p.dv_parts) + item * p.Nk * p.Dv;
      std::fill(dk, dk + p.Nk * p.D, T(0));
      std::fill(dv, dv + p.Nk * p.Dv, T(0));

      for (int64_t qb = qb_begin; qb < qb_end; ++qb) {
        const int64_t i0 = qb * BQ, rows = std::min(BQ, p.Nq - i0);
        const auto [klo, khi] = head.key_range(i0, i0 + rows);
        const T* q_blk = head.q + i0 * p.q_sn;
        const T* do_blk = dout + i0 * p.do_sn;
        // delta = rowsum(dO * O): the softmax backward's correction term (O includes dropout).
        // A gradient on the returned lse adds dlse * P to dS (d lse / d s = P): delta -= dlse.
        for (int64_t r = 0; r < rows; ++r) {
          if constexpr (kBf16) {
            at::vec::convert(head.doe + (i0 + r) * p.do_sn, do_row.data(), p.Dv);
            delta[r] = dot(do_row.data(), o + (i0 + r) * p.o_sn, p.Dv);
          } else {
            delta[r] = dot(do_blk + r * p.do_sn, o + (i0 + r) * p.o_sn, p.Dv);
          }
          if (dlse) delta[r] -= dlse[i0 + r];
        }
        std::fill(dq_acc.begin(), dq_acc.end(), T(0));
        if constexpr (kP != Products::blas) {
          vnni::transpose(head.qe + i0 * p.q_sn, p.q_sn, rows, p.D, q_t.data(), BQ);
          vnni::transpose(head.doe + i0 * p.do_sn, p.do_sn, rows, p.Dv, do_t.data(), BQ);
        }

        for (int64_t j0 = klo; j0 < khi; j0 += BK) {
          const int64_t cols = std::min(BK, khi - j0);
          // P = exp(S - lse - lse_lo): the forward's probabilities, recomputed
          head.scores(P.data(), BK, i0, rows, j0, cols, tanh_buf.data());
          for (int64_t r = 0; r < rows; ++r) {
            T* pr = P.data() + r * BK;
            if (lse[i0 + r] == kNegInf<T>) {  // row attends nothing: P = 0, and so every gradient
              std::fill(pr, pr + cols, T(0));
            } else {
              exp_minus_lse(pr, cols, lse[i0 + r], lse_lo[i0 + r], head.pending_scale);
            }
          }
          const T* p_used = P.data();  // the probabilities that multiplied V in the forward
          if (dropout) {
            head.dropout_keep(keep.data(), BK, i0, rows, j0, cols);
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < cols; ++c)
                Pd[r * BK + c] = keep[r * BK + c] ? P[r * BK + c] * keep_scale : T(0);
            p_used = Pd.data();
          }
          // dV[j0:] (cols, Dv) += P_used^T (cols, rows) @ dO (rows, Dv)
          // dP (rows, cols) = dO (rows, Dv) @ V[j0:]^T (Dv, cols)
          if constexpr (kP == Products::blas) {
            blas::gemm(true, false, cols, p.Dv, rows, T(1), p_used, BK, do_blk, p.do_sn, T(1), dv + j0 * p.Dv, p.Dv);
            blas::gemm(false, true, rows, cols, p.Dv, T(1), do_blk, p.do_sn, head.v + j0 * p.v_sn, p.v_sn, T(0),
                       dS.data(), BK);
          } else {  // dV^T (Dv, cols) += dO^T (Dv, rows) @ P_used (rows, cols)
            if constexpr (kBf16) {
              vnni::pack_row_pairs(p_used, BK, rows, cols, Pv.data(), BK);
              blas::brgemm(p.Dv, cols, rows + rows % 2, do_t.data(), BQ, Pv.data(), BK, true, dv + j0, p.Nk);
            } else {
              blas::brgemm(p.Dv, cols, rows, do_t.data(), BQ, p_used, BK, true, dv + j0, p.Nk);
            }
            blas::brgemm(rows, cols, p.Dv, head.doe + i0 * p.do_sn, p.do_sn, head.vt + kPair * j0, p.Nk, false,
                         dS.data(), BK);
          }
          // dS = P * (dP - delta), through dropout and the softcap's tanh (brgemm modes: times scale,
          // which brgemm cannot apply)
          const T ds_scale = kP == Products::blas ? T(1) : scale;
          for (int64_t r = 0; r < rows; ++r) {
            T* ds = dS.data() + r * BK;
            const T* pr = P.data() + r * BK;
            for (int64_t c = 0; c < cols; ++c) {
              T dp = ds[c];
              if (dropout) dp = keep[r * BK + c] ? dp * keep_scale : T(0);
              T g = pr[c] * (dp - delta[r]);
              if (p.softcap > 0) {
                const T t = tanh_buf[r * BK + c];
                g *= T(1) - t * t;
              }
              ds[c] = g * ds_scale;
            }
          }
          // dQ (rows, D) += scale * dS (rows, cols) @ K[j0:] (cols, D)
          // dK[j0:] (cols, D) += scale * dS^T (cols, rows) @ Q (rows, D)
          if constexpr (kP == Products::blas) {
            blas::gemm(false, false, rows, p.D, cols, scale, dS.data(), BK, head.k + j0 * p.k_sn, p.k_sn, T(1),
                       dq_acc.data(), p.D);
            blas::gemm(true, false, cols, p.D, rows, scale, dS.data(), BK, q_blk, p.q_sn, T(1), dk + j0 * p.D, p.D);
          } else {  // dK^T (D, cols) += Q^T (D, rows) @ dS (rows, cols)
            if constexpr (kBf16) {
              round_rows(dS.data(), BK, rows, cols, dSb.data(), BK);
              blas::brgemm(rows, p.D, cols + cols % 2, dSb.data(), BK, head.kb + j0 * head.kb_ld, head.kb_ld, true,
                           dq_acc.data(), p.D);
              vnni::pack_row_pairs(dSb.data(), BK, rows, cols, dSv.data(), BK);
              blas::brgemm(p.D, cols, rows + rows % 2, q_t.data(), BQ, dSv.data(), BK, true, dk + j0, p.Nk);
            } else {
              blas::brgemm(rows, p.D, cols, dS.data(), BK, head.kb + j0 * head.kb_ld, head.kb_ld, true,
                           dq_acc.data(), p.D);
              blas::brgemm(p.D, cols, rows, q_t.data(), BQ, dS.data(), BK, true, dk + j0, p.Nk);
            }
          }
        }
        for (int64_t r = 0; r < rows; ++r) std::copy_n(dq_acc.data() + r * p.D, p.D, dq + (i0 + r) * p.dq_sn);
      }
    }
    if constexpr (kBf16) blas::brgemm_release();
  });
}

// ---- the launchers' packs (Pack, attention.h) -------------------------------------------------

// make(x_head, out_head) fills one head of out (B, H, ...), contiguous of type Out.
template <typename In, typename Out, typename Make>
void per_head(const at::Tensor& x, at::Tensor& out, const Make& make) {
  const int64_t H = x.size(1), per = x.size(0) * H > 0 ? out.numel() / (x.size(0) * H) : 0;
  const auto* src = x.data_ptr<In>();
  auto* dst = out.data_ptr<Out>();
  at::parallel_for(0, x.size(0) * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) make(src + (i / H) * x.stride(0) + (i % H) * x.stride(1), dst + i * per);
  });
}

}  // namespace

void attention_pack(Pack kind, const at::Tensor& x, at::Tensor& out) {
  using at::BFloat16;
  const int64_t A = x.size(2), X = x.size(3), ld = row_stride(x);  // one head: A rows of X
  switch (kind) {
    case Pack::transposed:
      return per_head<float, float>(x, out, [&](const float* s, float* d) { vnni::transpose(s, ld, A, X, d, A); });
    case Pack::transposed_bf16:
      return per_head<float, BFloat16>(x, out, [&](const float* s, BFloat16* d) { vnni::transpose(s, ld, A, X, d, A); });
    case Pack::pairs_t:
      return per_head<BFloat16, BFloat16>(x, out,
                                          [&](const BFloat16* s, BFloat16* d) { vnni::pack_col_pairs(s, ld, A, X, d); });
    case Pack::pairs:
      return per_head<BFloat16, BFloat16>(
          x, out, [&](const BFloat16* s, BFloat16* d) { vnni::pack_row_pairs(s, ld, A, X, d, X); });
  }
}

void attention_fwd_kernel(const AttnParams& p) {
  if (p.dtype == at::kDouble) return forward<double, Products::blas>(p);
  switch (p.products) {
    case Products::brgemm_bf16: return forward<float, Products::brgemm_bf16>(p);
    case Products::brgemm_f32: return forward<float, Products::brgemm_f32>(p);
    default: return forward<float, Products::blas>(p);
  }
}

void attention_bwd_kernel(const AttnParams& p) {
  if (p.dtype == at::kDouble) return backward<double, Products::blas>(p);
  switch (p.products) {
    case Products::brgemm_bf16: return backward<float, Products::brgemm_bf16>(p);
    case Products::brgemm_f32: return backward<float, Products::brgemm_f32>(p);
    default: return backward<float, Products::blas>(p);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace zenattn::cpu
