// LayerNorm / RMSNorm forward on CUDA: one thread block per row, fp32 statistics.
//
// Pass 1 reads the row (x, or s = dropout(x) + residual: that sum is rounded to the dtype, written
// out and is what gets normalized) and sums it (LayerNorm) or its squares (RMSNorm). LayerNorm's pass 2 sums
// the squared deviations from the mean (two passes: exact for rows far from zero, such as a mean
// offset of 1e6, where sum-of-squares formulas cancel). The last pass writes y. Each thread reads
// the same columns in every pass, so the later passes read what it wrote (the sum) or what the
// cache holds.
#include "norm_common.cuh"

namespace zenattn {
namespace cuda {
namespace {

constexpr int kFwdMaxThreads = 1024;

template <typename T, int V, bool RMS>
__global__ void __launch_bounds__(kFwdMaxThreads) norm_fwd_kernel(NormFwdParams p) {
  __shared__ float scratch[32][1], scratch2[32][2];
  const int64_t row = blockIdx.x;
  const int64_t n = p.n;
  const T* x = static_cast<const T*>(p.x) + row * p.x_row_stride;
  const T* res = p.res ? static_cast<const T*>(p.res) + row * p.res_row_stride : nullptr;
  const bool fused = res || p.dropout.on;  // s differs from x: written out, and read by later passes
  T* sum = fused ? static_cast<T*>(p.sum) + row * n : nullptr;
  const T* src = fused ? sum : x;
  const T* w = static_cast<const T*>(p.w);
  const T* b = static_cast<const T*>(p.b);
  T* y = static_cast<T*>(p.y) + row * n;
  const int64_t step = int64_t(blockDim.x) * V;

  // Pass 1: the sum (LayerNorm; of v - x0, the row's first value of s, so that a row far from zero
  // sums small numbers) or the sum of squares (RMSNorm); writes s.
  float shift = 0.0f;  // LayerNorm: x0 here, then x0 + mean(v - x0), the row mean to within rounding
  if (!RMS) {
    float s0[1] = {to_float(x[0])};
    if (p.dropout.on) {
      float m[1];
      dropout_multipliers<1>(p.dropout, row, 0, m);
      s0[0] *= m[0];
    }
    if (res) s0[0] += to_float(res[0]);
    shift = fused ? to_float(from_float<T>(s0[0])) : s0[0];
  }
  float acc[1] = {0.0f};
  for (int64_t j = int64_t(threadIdx.x) * V; j < n; j += step) {
    float v[V];
    load<T, V>(x + j, v);
    if (fused) {
      if (p.dropout.on) {  // a multiply, not a select: a dropped inf gives NaN, as in F.dropout
        float m[V];
        dropout_multipliers<V>(p.dropout, row, j, m);
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] *= m[i];
      }
      if (res) {
        float r[V];
        load<T, V>(res + j, r);
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] += r[i];
      }
#pragma unroll
      for (int i = 0; i < V; ++i) v[i] = to_float(from_float<T>(v[i]));  // s rounded to T
      store<T, V>(sum + j, v);
    }
#pragma unroll
    for (int i = 0; i < V; ++i) acc[0] += RMS ? v[i] * v[i] : v[i] - shift;
  }
  block_sum<1>(acc, scratch);
  // Deviations are taken as (v - shift) - delta with delta = mean(v - shift), never v - mean: the
  // mean rounded to fp32 is off by up to half its spacing (0.03 at 1e6), which would land on every
  // deviation; and shift is the mean to within rounding, so v - shift rounds at the deviations'
  // own scale (a shift of x0 rounded them at |x0|'s: 2-3x torch's fp32 error on N(0, 1) rows).
  float delta = 0.0f, rstd;
  if (RMS) {
    rstd = rsqrtf(acc[0] / float(n) + p.eps);
  } else {
    shift += acc[0] / float(n);
    float dev[2] = {0.0f, 0.0f};  // sum(v - shift), sum((v - shift)^2)
    for (int64_t j = int64_t(threadIdx.x) * V; j < n; j += step) {
      float v[V];
      load<T, V>(src + j, v);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float c = v[i] - shift;
        dev[0] += c;
        dev[1] += c * c;
      }
    }
    block_sum<2>(dev, scratch2);
    delta = dev[0] / float(n);
    // mean((v - shift)^2) - delta^2 = mean(((v - shift) - delta)^2); delta is tiny: no cancellation.
    rstd = rsqrtf(fmaxf(dev[1] / float(n) - delta * delta, 0.0f) + p.eps);
  }
  if (threadIdx.x == 0) {
    p.rstd[row] = rstd;
    if (!RMS) p.mean[row] = shift + delta;
  }

  // Last pass: y = ((v - shift) - delta) * rstd * w + b  (shift = delta = 0 for RMSNorm).
  for (int64_t j = int64_t(threadIdx.x) * V; j < n; j += step) {
    float v[V], wv[V], bv[V];
    load<T, V>(src + j, v);
    if (w) load<T, V>(w + j, wv);
    if (b) load<T, V>(b + j, bv);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      v[i] = ((v[i] - shift) - delta) * rstd;
      if (w) v[i] *= wv[i];
      if (b) v[i] += bv[i];
    }
    store<T, V>(y + j, v);
  }
}

}  // namespace

cudaError_t launch_norm_fwd(const NormFwdParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return cudaSuccess;
  return dispatch_dtype(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int64_t kVec = 16 / sizeof(T);
    const bool vec = p.n % kVec == 0 && p.x_row_stride % kVec == 0 && aligned16(p.x) && aligned16(p.y) &&
                     (!p.res || (p.res_row_stride % kVec == 0 && aligned16(p.res))) && (!p.sum || aligned16(p.sum)) &&
                     (!p.w || aligned16(p.w)) && (!p.b || aligned16(p.b));
    const dim3 grid(static_cast<unsigned>(p.rows));
    ZENATTN_LAUNCH_NORM_KERNEL(norm_fwd_kernel, T, vec, grid, norm_threads(p.n, kFwdMaxThreads), stream, p);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace zenattn
