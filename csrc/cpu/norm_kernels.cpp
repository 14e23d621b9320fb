// LayerNorm / RMSNorm row kernels for the CPU, vectorized with ATen's at::vec and threaded with
// at::parallel_for. This file is compiled once per instruction set (CMakeLists.txt defines
// CPU_CAPABILITY = DEFAULT | AVX2 | AVX512), so everything here lives in zenattn::cpu::<ISA>.
//
// Numerics: statistics in the opmath type (fp32 for fp16/bf16/fp32, fp64 for fp64).
//  - LayerNorm: a first pass takes shift = x[0] + mean(x - x[0]), the row mean to within rounding
//    (a shift by a value of the row keeps rows with a large common offset, mean 1e6 and std 1,
//    exact, where a plain sum of x would lose every digit of the deviation). The deviations are
//    then (x - shift) - delta with delta = mean(x - shift): rounded at the scale of the deviations
//    themselves, as x - mean would be, not at the scale of x[0] (which cost 2-3x torch's fp32 error).
//  - Constant rows have variance exactly 0, so y = bias (finite for any eps > 0).
// Fused pre-norm input: s = dropout(x) + residual (each part optional) is formed in the opmath type,
// rounded once to T, written out and normalized. The dropout mask is Philox of (seed, row, column)
// (csrc/common/philox.h, the attention kernels' stream), so the backward redraws it.
#include "cpu/norm.h"
#include "common/philox.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace zenattn::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Loads and stores one "step" of a row: kLoads vectors of T, seen as kVecs vectors of the
// opmath type (fp16/bf16 vectors hold twice as many lanes as fp32 ones). Four opmath vectors per
// step give four independent accumulator chains in the reductions, which hides FMA latency.
template <typename T>
struct Step {
  using A = at::opmath_type<T>;
  using AVec = Vectorized<A>;
  static constexpr bool kReduced = !std::is_same_v<T, A>;
  static constexpr int kLoads = kReduced ? 2 : 4;
  static constexpr int kVecs = kReduced ? 2 * kLoads : kLoads;
  static constexpr int64_t kSize = kLoads * Vectorized<T>::size();
  static_assert(kSize == kVecs * AVec::size(), "unexpected vector widths");

  static inline void load(const T* p, AVec (&v)[kVecs]) {
    for (int i = 0; i < kLoads; ++i) {
      if constexpr (kReduced) {
        auto [lo, hi] = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p + i * Vectorized<T>::size()));
        v[2 * i] = lo;
        v[2 * i + 1] = hi;
      } else {
        v[i] = AVec::loadu(p + i * AVec::size());
      }
    }
  }
  // A step's store, non-temporal when `stream` (then p must satisfy stream_ok).
  static inline void store(T* p, const AVec (&v)[kVecs], bool stream) {
    if (stream) {
      store<true>(p, v);
    } else {
      store<false>(p, v);
    }
  }
  template <bool kStream = false>
  static inline void store(T* p, const AVec (&v)[kVecs]) {
    for (int i = 0; i < kLoads; ++i) {
      if constexpr (kReduced) {
        put<kStream>(p + i * Vectorized<T>::size(), at::vec::convert_from_float<T>(v[2 * i], v[2 * i + 1]));
      } else {
        put<kStream>(p + i * AVec::size(), v[i]);
      }
    }
  }
  // One vector store; kStream: non-temporal (the line goes to memory without first being read
  // into the cache), for which p must be aligned to the vector's size (see stream_ok).
  template <bool kStream, typename Vec>
  static inline void put(T* p, const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kStream && std::is_same_v<T, float>) return _mm512_stream_ps(p, v);
    if constexpr (kStream && std::is_same_v<T, double>) return _mm512_stream_pd(p, v);
    if constexpr (kStream && sizeof(T) == 2) return _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (kStream && std::is_same_v<T, float>) return _mm256_stream_ps(p, v);
    if constexpr (kStream && std::is_same_v<T, double>) return _mm256_stream_pd(p, v);
    if constexpr (kStream && sizeof(T) == 2) return _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
#endif
    v.store(p);
  }
  static bool stream_ok(const T* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(Vectorized<T>) == 0; }
};

// Orders this thread's non-temporal stores before whatever follows (the parallel_for join, after
// which other threads read the output).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// The sum of all lanes of V accumulators: added lane-wise first, then one shuffle reduction (a
// horizontal sum per accumulator cost more than the data work on rows of a few hundred elements).
template <typename A, int V>
inline A hsum(const Vectorized<A> (&acc)[V]) {
  Vectorized<A> t = acc[0];
  for (int v = 1; v < V; ++v) t = t + acc[v];
  return at::vec::vec_reduce_all<A>([](Vectorized<A>& a, Vectorized<A>& b) { return a + b; }, t);
}

// For fp16/bf16, a row (or a weight) converted once to the opmath type in a per-task buffer, so
// the passes after the first read fp32 from L1 instead of converting again; for fp32/fp64, the
// data itself (T is already the opmath type).
template <typename T>
struct OpmathRow {
  using A = at::opmath_type<T>;
  std::vector<A> buf;
  explicit OpmathRow(int64_t n) : buf(Step<T>::kReduced ? n : 0) {}

  const A* convert(const T* src, int64_t n) {
    if constexpr (Step<T>::kReduced) {
      A* dst = buf.data();
      int64_t j = 0;
      for (; j + Step<T>::kSize <= n; j += Step<T>::kSize) {
        typename Step<T>::AVec v[Step<T>::kVecs];
        Step<T>::load(src + j, v);
        Step<A>::store(dst + j, v);
      }
      for (; j < n; ++j) dst[j] = static_cast<A>(src[j]);
      return dst;
    } else {
      return src;
    }
  }
};

// The dropout multipliers of one row: 1 / (1 - p) where an element is kept, 0 where it is dropped
// (a multiply, not a select: a dropped inf gives NaN, as in F.dropout). Element (r, j) is kept as
// attention score (0, r, j) is: DropoutRng::keep4(0, r, j / 4), bit j % 4.
template <typename A>
struct DropoutRow {
  DropoutRng rng;
  A scale;
  std::vector<A> buf;
  DropoutRow(uint64_t seed, double p, int64_t n)
      : rng{seed, DropoutRng::threshold_for(p)}, scale(static_cast<A>(1.0 / (1.0 - p))), buf(p > 0 ? n : 0) {}

  bool on() const { return !buf.empty(); }

  const A* fill(int64_t r) {
    const int64_t n = static_cast<int64_t>(buf.size());
    rng.keep_flags(0, uint64_t(r), 0, n, buf.data());  // 1 or 0, then scaled
    for (int64_t j = 0; j < n; ++j) buf[j] *= scale;
    return buf.data();
  }
};

// Calls f(std::integral_constant<bool, cond>{}) so `cond` becomes a compile-time constant.
template <typename F>
inline void bool_switch(bool cond, F&& f) {
  if (cond) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ---------------------------------------------------------------------------------------------
// Forward: rows [r0, r1).
// ---------------------------------------------------------------------------------------------
template <typename T, bool kRms, bool kFused, bool kWeight, bool kBias>
void norm_fwd_rows(const NormFwdParams& p, int64_t r0, int64_t r1) {
  using S = Step<T>;
  using A = typename S::A;
  using AVec = typename S::AVec;
  constexpr int V = S::kVecs;
  const int64_t N = p.cols;
  const int64_t n_vec = N - N % S::kSize;  // elements handled by full vector steps
  using SA = Step<A>;  // the same step size as S, over opmath data
  static_assert(SA::kSize == S::kSize && SA::kVecs == V, "steps must line up");
  OpmathRow<T> w_row(kWeight ? N : 0), b_row(kBias ? N : 0), x_row(N);
  DropoutRow<A> drop(p.dropout_seed, kFused ? p.dropout_p : 0.0, N);
  const A* w = kWeight ? w_row.convert(static_cast<const T*>(p.weight), N) : nullptr;
  const A* b = kBias ? b_row.convert(static_cast<const T*>(p.bias), N) : nullptr;

  for (int64_t r = r0; r < r1; ++r) {
    const T* x_in = static_cast<const T*>(p.x) + r * p.x_stride;
    T* y = static_cast<T*>(p.y) + r * N;
    const bool stream = p.stream && S::stream_ok(y);

    // Step 1 (pre-norm): s = dropout(x) + residual, stored in T; the stored (rounded) sum is what
    // gets normalized, exactly like `layer_norm(x + residual)` in T.
    if constexpr (kFused) {
      const T* res = p.residual ? static_cast<const T*>(p.residual) + r * p.residual_stride : nullptr;
      const A* m = drop.on() ? drop.fill(r) : nullptr;
      T* s = static_cast<T*>(p.sum) + r * N;
      int64_t j = 0;
      for (; j < n_vec; j += S::kSize) {
        AVec a[V], c[V];
        S::load(x_in + j, a);
        if (m) {
          SA::load(m + j, c);
          for (int v = 0; v < V; ++v) a[v] = a[v] * c[v];
        }
        if (res) {
          S::load(res + j, c);
          for (int v = 0; v < V; ++v) a[v] = a[v] + c[v];
        }
        S::store(s + j, a);
      }
      for (; j < N; ++j) {
        A a = static_cast<A>(x_in[j]);
        if (m) a = a * m[j];
        if (res) a = a + static_cast<A>(res[j]);
        s[j] = static_cast<T>(a);
      }
      x_in = s;
    }
    const A* x = x_row.convert(x_in, N);

    // Step 2: statistics (see the file comment). LayerNorm: shift = x[0] + mean(x - x[0]), the row
    // mean to within rounding; then delta = mean(x - shift), a tiny correction, and the variance from
    // the deviations (x - shift) - delta. RMSNorm: shift = delta = 0.
    A shift = 0, delta = 0;
    if constexpr (!kRms) {
      const A x0 = static_cast<A>(x[0]);
      AVec acc[V] = {}, x0_v(x0);
      int64_t j = 0;
      for (; j < n_vec; j += S::kSize) {
        AVec a[V];
        SA::load(x + j, a);
        for (int v = 0; v < V; ++v) acc[v] = acc[v] + (a[v] - x0_v);
      }
      A total = 0;
      total += hsum(acc);
      for (; j < N; ++j) total += x[j] - x0;
      shift = x0 + total / static_cast<A>(N);
    }
    A sq = 0;
    {
      AVec acc[V] = {}, acc_d[V] = {}, shift_v(shift);
      int64_t j = 0;
      for (; j < n_vec; j += S::kSize) {
        AVec a[V];
        SA::load(x + j, a);
        for (int v = 0; v < V; ++v) {
          AVec c = kRms ? a[v] : a[v] - shift_v;
          if constexpr (!kRms) acc_d[v] = acc_d[v] + c;
          acc[v] = at::vec::fmadd(c, c, acc[v]);
        }
      }
      A total_d = 0;
      sq += hsum(acc);
      total_d += hsum(acc_d);
      for (; j < N; ++j) {
        A c = kRms ? x[j] : x[j] - shift;
        total_d += c;
        sq += c * c;
      }
      if constexpr (!kRms) delta = total_d / static_cast<A>(N);
    }
    const A center = shift + delta;  // the row mean
    // mean((x - shift)^2) - delta^2 = mean(((x - shift) - delta)^2); delta is tiny, so nothing cancels.
    const A var = std::max(sq / static_cast<A>(N) - delta * delta, A(0));
    const A rstd = A(1) / std::sqrt(var + static_cast<A>(p.eps));
    if constexpr (!kRms) static_cast<A*>(p.mean)[r] = center;
    static_cast<A*>(p.rstd)[r] = rstd;

    // Step 3: y = (x - mean) * rstd * w + b.
    {
      AVec shift_v(shift), delta_v(delta), rstd_v(rstd);
      int64_t j = 0;
      for (; j < n_vec; j += S::kSize) {
        AVec a[V], wv[V], bv[V];
        SA::load(x + j, a);
        if constexpr (kWeight) SA::load(w + j, wv);
        if constexpr (kBias) SA::load(b + j, bv);
        for (int v = 0; v < V; ++v) {
          AVec c = kRms ? a[v] : (a[v] - shift_v) - delta_v;
          c = c * rstd_v;
          if constexpr (kWeight) c = c * wv[v];
          if constexpr (kBias) c = c + bv[v];
          a[v] = c;
        }
        S::store(y + j, a, stream);
      }
      for (; j < N; ++j) {
        A c = kRms ? x[j] : (x[j] - shift) - delta;
        c = c * rstd;
        if constexpr (kWeight) c = c * w[j];
        if constexpr (kBias) c = c + b[j];
        y[j] = static_cast<T>(c);
      }
    }
  }
}

template <typename T>
void norm_fwd_typed(const NormFwdParams& p) {
  // At least ~32k elements per task so small problems do not pay for waking threads.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, p.cols));
  bool_switch(p.rms, [&](auto rms) {
    bool_switch(p.residual != nullptr || p.dropout_p > 0, [&](auto fused) {
      bool_switch(p.weight != nullptr, [&](auto w) {
        bool_switch(p.bias != nullptr && !rms, [&](auto b) {
          at::parallel_for(0, p.rows, grain, [&](int64_t r0, int64_t r1) {
            norm_fwd_rows<T, rms, fused, w, b>(p, r0, r1);
            if (p.stream) stream_fence();
          });
        });
      });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Backward: rows [r0, r1), accumulating dw/db into one partial row (this chunk's).
//   xhat = (x - mean) * rstd,  g = dy * w
//   dx   = rstd * (g - xhat * mean(g * xhat) - mean(g))     (RMSNorm: no mean(g) term)
//   dw  += dy * xhat,          db += dy
// ---------------------------------------------------------------------------------------------
template <typename T, bool kRms, bool kWeight, bool kBias, bool kDsum>
void norm_bwd_rows(const NormBwdParams& p, int64_t r0, int64_t r1,
                   at::opmath_type<T>* dw_part, at::opmath_type<T>* db_part) {
  using S = Step<T>;
  using A = typename S::A;
  using AVec = typename S::AVec;
  constexpr int V = S::kVecs;
  constexpr int L = AVec::size();
  using SA = Step<A>;
  const int64_t N = p.cols;
  const int64_t n_vec = N - N % S::kSize;
  const A inv_n = A(1) / static_cast<A>(N);
  const T* w = static_cast<const T*>(p.weight);
  DropoutRow<A> drop(p.dropout_seed, p.dropout_p, N);

  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
    const T* dy = static_cast<const T*>(p.dy) + r * p.dy_stride;
    T* dx = static_cast<T*>(p.dx) + r * N;
    const bool stream = p.stream && S::stream_ok(dx);
    // dx below is first the gradient of s: the residual's (dres, when dropout makes it differ);
    // the input's passes back through the forward's keep mask and scale (m).
    T* dres = p.dres ? static_cast<T*>(p.dres) + r * N : nullptr;
    const A* m = drop.on() ? drop.fill(r) : nullptr;
    const A mean = kRms ? A(0) : static_cast<const A*>(p.mean)[r];
    const A rstd = static_cast<const A*>(p.rstd)[r];
    const AVec mean_v(mean), rstd_v(rstd);

    // Pass 1: the two row sums, and this row's share of dw/db.
    A sum_gx = 0, sum_g = 0;
    {
      AVec acc_gx[V] = {}, acc_g[V] = {};
      int64_t j = 0;
      for (; j < n_vec; j += S::kSize) {
        AVec xv[V], dyv[V], wv[V];
        S::load(x + j, xv);
        S::load(dy + j, dyv);
        if constexpr (kWeight) S::load(w + j, wv);
        for (int v = 0; v < V; ++v) {
          AVec xhat = (xv[v] - mean_v) * rstd_v;
          AVec g = kWeight ? dyv[v] * wv[v] : dyv[v];
          acc_gx[v] = at::vec::fmadd(g, xhat, acc_gx[v]);
          if constexpr (!kRms) acc_g[v] = acc_g[v] + g;
          if constexpr (kWeight) {
            A* pw = dw_part + j + v * L;
            at::vec::fmadd(dyv[v], xhat, AVec::loadu(pw)).store(pw);
          }
          if constexpr (kBias) {
            A* pb = db_part + j + v * L;
            (AVec::loadu(pb) + dyv[v]).store(pb);
          }
        }
      }
      sum_gx += hsum(acc_gx);
      sum_g += hsum(acc_g);
      for (; j < N; ++j) {
        const A xhat = (static_cast<A>(x[j]) - mean) * rstd;
        const A d = static_cast<A>(dy[j]);
        const A g = kWeight ? d * static_cast<A>(w[j]) : d;
        sum_gx += g * xhat;
        if constexpr (!kRms) sum_g += g;
        if constexpr (kWeight) dw_part[j] += d * xhat;
        if constexpr (kBias) db_part[j] += d;
      }
    }
    const A c1 = sum_gx * inv_n;
    const A c2 = kRms ? A(0) : sum_g * inv_n;
    // RMSNorm of a single element: dx = g * rstd * (1 - xhat^2), where xhat^2 is within rounding
    // of 1 and the difference cancels catastrophically. 1 - xhat^2 = eps * rstd^2 exactly.
    if (kRms && N == 1) {
      const A xg = kWeight ? static_cast<A>(dy[0]) * static_cast<A>(w[0]) : static_cast<A>(dy[0]);
      A out = xg * static_cast<A>(p.eps) * rstd * rstd * rstd;
      if constexpr (kDsum) out += static_cast<A>(static_cast<const T*>(p.dsum)[r * p.dsum_stride]);
      if (dres) dres[0] = static_cast<T>(out);
      dx[0] = static_cast<T>(m ? out * m[0] : out);
      continue;
    }

    // Pass 2: dx (+ the gradient that reached the fused residual sum directly).
    {
      const T* ds = kDsum ? static_cast<const T*>(p.dsum) + r * p.dsum_stride : nullptr;
      const AVec c1_v(c1), c2_v(c2);
      int64_t j = 0;
      for (; j < n_vec; j += S::kSize) {
        AVec xv[V], dyv[V], wv[V], dsv[V];
        S::load(x + j, xv);
        S::load(dy + j, dyv);
        if constexpr (kWeight) S::load(w + j, wv);
        if constexpr (kDsum) S::load(ds + j, dsv);
        for (int v = 0; v < V; ++v) {
          AVec xhat = (xv[v] - mean_v) * rstd_v;
          AVec g = kWeight ? dyv[v] * wv[v] : dyv[v];
          AVec d = (g - xhat * c1_v - c2_v) * rstd_v;
          if constexpr (kDsum) d = d + dsv[v];
          xv[v] = d;
        }
        if (m) {
          if (dres) S::store(dres + j, xv);
          SA::load(m + j, dyv);
          for (int v = 0; v < V; ++v) xv[v] = xv[v] * dyv[v];
        }
        S::store(dx + j, xv, stream);
      }
      for (; j < N; ++j) {
        const A xhat = (static_cast<A>(x[j]) - mean) * rstd;
        const A d = static_cast<A>(dy[j]);
        const A g = kWeight ? d * static_cast<A>(w[j]) : d;
        A out = (g - xhat * c1 - c2) * rstd;
        if constexpr (kDsum) out += static_cast<A>(ds[j]);
        if (dres) dres[j] = static_cast<T>(out);
        dx[j] = static_cast<T>(m ? out * m[j] : out);
      }
    }
  }
}

// dst[j] = sum over chunks c (in order) of part[c * N + j], converted to T.
template <typename T>
void reduce_partials(const at::opmath_type<T>* part, int64_t chunks, int64_t N, T* dst) {
  using A = at::opmath_type<T>;
  using AVec = Vectorized<A>;
  constexpr int64_t L = AVec::size();
  at::parallel_for(0, N, 1024, [&](int64_t c0, int64_t c1) {
    int64_t j = c0;
    for (; j + L <= c1; j += L) {
      AVec acc(A(0));
      for (int64_t c = 0; c < chunks; ++c) acc = acc + AVec::loadu(part + c * N + j);
      alignas(64) A lanes[L];
      acc.store(lanes);
      for (int64_t l = 0; l < L; ++l) dst[j + l] = static_cast<T>(lanes[l]);
    }
    for (; j < c1; ++j) {
      A acc = 0;
      for (int64_t c = 0; c < chunks; ++c) acc += part[c * N + j];
      dst[j] = static_cast<T>(acc);
    }
  });
}

template <typename T>
void norm_bwd_typed(const NormBwdParams& p) {
  using A = at::opmath_type<T>;
  const int64_t rows_per_chunk = (p.rows + p.num_chunks - 1) / std::max<int64_t>(1, p.num_chunks);
  A* dw_part = static_cast<A*>(p.dweight_partial);
  A* db_part = static_cast<A*>(p.dbias_partial);
  bool_switch(p.rms, [&](auto rms) {
    bool_switch(p.weight != nullptr, [&](auto w) {
      bool_switch(p.dbias != nullptr && !rms, [&](auto b) {
        bool_switch(p.dsum != nullptr, [&](auto ds) {
          // One task per chunk of rows; each chunk owns one partial row of dw/db.
          at::parallel_for(0, p.num_chunks, 1, [&](int64_t k0, int64_t k1) {
            for (int64_t k = k0; k < k1; ++k) {
              A* dwk = w ? dw_part + k * p.cols : nullptr;
              A* dbk = b ? db_part + k * p.cols : nullptr;
              if (dwk) std::fill(dwk, dwk + p.cols, A(0));
              if (dbk) std::fill(dbk, dbk + p.cols, A(0));
              const int64_t r0 = k * rows_per_chunk;
              const int64_t r1 = std::min(p.rows, r0 + rows_per_chunk);
              norm_bwd_rows<T, rms, w, b, ds>(p, r0, r1, dwk, dbk);
            }
            if (p.stream) stream_fence();
          });
        });
      });
    });
  });
  if (p.dweight) reduce_partials<T>(dw_part, p.num_chunks, p.cols, static_cast<T*>(p.dweight));
  if (p.dbias) reduce_partials<T>(db_part, p.num_chunks, p.cols, static_cast<T*>(p.dbias));
}

}  // namespace

void norm_fwd_kernel(const NormFwdParams& p) {
  if (p.rows == 0 || p.cols == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.dtype, "zenattn norm_fwd",
                                  [&] { norm_fwd_typed<scalar_t>(p); });
}

void norm_bwd_kernel(const NormBwdParams& p) {
  if (p.cols == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.dtype, "zenattn norm_bwd",
                                  [&] { norm_bwd_typed<scalar_t>(p); });
}

}  // namespace CPU_CAPABILITY
}  // namespace zenattn::cpu
