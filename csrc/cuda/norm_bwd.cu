// LayerNorm / RMSNorm backward on CUDA: `programs` thread blocks, each taking rows blk,
// blk + programs, ... With g = dy * w and xhat = (x - mean) * rstd (RMSNorm: x * rstd):
//   LayerNorm  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm    dx = rstd * (g - xhat * mean(g * xhat))
// plus the gradient of the returned sum when the residual add was fused. With dropout, that is the
// residual's gradient (written to dres) and the input's is it times the forward's mask and scale. The weight and bias
// gradients of a block's rows accumulate in its own fp32 row of dw_part / db_part, each column
// owned by one thread (no atomics; the block's first row writes, the later ones add); the caller
// sums the rows in a fixed order.
#include "norm_common.cuh"

namespace zenattn {
namespace cuda {
namespace {

// 512 (not 1024) threads at most: 128 registers per thread keep the fp32 kernels from spilling.
constexpr int kBwdMaxThreads = 512;

template <typename T, int V, bool RMS>
__global__ void __launch_bounds__(kBwdMaxThreads, 1) norm_bwd_kernel(NormBwdParams p) {
  __shared__ float scratch[32][2];
  const int64_t n = p.n;
  const int64_t step = int64_t(blockDim.x) * V;
  const T* w = static_cast<const T*>(p.w);
  float* dw = p.dw_part ? p.dw_part + int64_t(blockIdx.x) * n : nullptr;
  float* db = p.db_part ? p.db_part + int64_t(blockIdx.x) * n : nullptr;
  for (int64_t row = blockIdx.x; row < p.rows; row += p.programs) {
    const T* x = static_cast<const T*>(p.x) + row * n;
    const T* dy = static_cast<const T*>(p.dy) + row * n;
    const T* dsum = p.dsum ? static_cast<const T*>(p.dsum) + row * n : nullptr;
    T* dx = static_cast<T*>(p.dx) + row * n;
    T* dres = p.dres ? static_cast<T*>(p.dres) + row * n : nullptr;
    const float mean = RMS ? 0.0f : p.mean[row];
    const float rstd = p.rstd[row];

    // Pass 1: sum(g * xhat) and sum(g).
    float acc[2] = {0.0f, 0.0f};
    for (int64_t j = int64_t(threadIdx.x) * V; j < n; j += step) {
      float xv[V], g[V], wv[V];
      load<T, V>(x + j, xv);
      load<T, V>(dy + j, g);
      if (w) load<T, V>(w + j, wv);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        if (w) g[i] *= wv[i];
        acc[0] += g[i] * (xv[i] - mean) * rstd;
        acc[1] += g[i];
      }
    }
    block_sum<2>(acc, scratch);
    const float c_gx = acc[0] / float(n), c_g = RMS ? 0.0f : acc[1] / float(n);

    // Pass 2: dx, and this block's weight / bias gradient partials.
    for (int64_t j = int64_t(threadIdx.x) * V; j < n; j += step) {
      float xv[V], dyv[V], wv[V], ds[V], out[V];
      load<T, V>(x + j, xv);
      load<T, V>(dy + j, dyv);
      if (w) load<T, V>(w + j, wv);
      if (dsum) load<T, V>(dsum + j, ds);
      const bool first = row == int64_t(blockIdx.x);  // the block's first row writes its partials
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float xhat = (xv[i] - mean) * rstd;
        const float g = w ? dyv[i] * wv[i] : dyv[i];
        // RMSNorm over one column: 1 - xhat^2 cancels in fp32; its exact value is eps * rstd^2.
        out[i] = RMS && n == 1 ? g * p.eps * rstd * rstd * rstd : rstd * (g - c_g - xhat * c_gx);
        if (dsum) out[i] += ds[i];
        if (dw) dw[j + i] = (first ? 0.0f : dw[j + i]) + dyv[i] * xhat;
        if (db) db[j + i] = (first ? 0.0f : db[j + i]) + dyv[i];
      }
      if (p.dropout.on) {
        if (dres) store<T, V>(dres + j, out);
        float m[V];
        dropout_multipliers<V>(p.dropout, row, j, m);
#pragma unroll
        for (int i = 0; i < V; ++i) out[i] *= m[i];
      }
      store<T, V>(dx + j, out);
    }
  }
}

}  // namespace

cudaError_t launch_norm_bwd(const NormBwdParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return cudaSuccess;
  return dispatch_dtype(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    const bool vec = p.n % (16 / sizeof(T)) == 0 && aligned16(p.x) && aligned16(p.dy) && aligned16(p.dx) &&
                     (!p.dsum || aligned16(p.dsum)) && (!p.w || aligned16(p.w)) && (!p.dres || aligned16(p.dres));
    const dim3 grid(static_cast<unsigned>(p.programs));
    ZENATTN_LAUNCH_NORM_KERNEL(norm_bwd_kernel, T, vec, grid, norm_threads(p.n, kBwdMaxThreads), stream, p);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace zenattn
