// Parameters of the CUDA LayerNorm / RMSNorm kernels (csrc/cuda/norm_fwd.cu, norm_bwd.cu). Plain
// structs and a stream: the kernel files include no torch header, so nvcc compiles each in seconds
// (DESIGN.md section 7); csrc/cuda/norm.cpp fills them from tensors.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace zenattn {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Dropout on the input before the residual add: element (row, j) is kept when its Philox draw
// (csrc/common/philox.h, DropoutRng::keep4 at (0, row, j / 4)) passes `threshold`, and scaled.
struct NormDropout {
  bool on;
  uint64_t seed;
  uint32_t threshold;      // DropoutRng::threshold_for(p)
  float scale;             // 1 / (1 - p)
};

// One row per thread block: y[r] = norm(s[r]) * w (+ b) over n columns, s = dropout(x) (+ res). Rows are
// `x_row_stride` / `res_row_stride` elements apart with a unit column stride; y, sum are contiguous.
// LayerNorm when rms is false (mean and rstd written), RMSNorm otherwise (rstd written, mean null).
struct NormFwdParams {
  DType dtype;
  bool rms;
  int64_t rows, n;
  const void* x;
  int64_t x_row_stride;
  const void* res;         // residual, or null
  int64_t res_row_stride;
  const void* w;           // weight (n), or null
  const void* b;           // bias (n), or null (always null for RMSNorm)
  void* y;                 // (rows, n)
  void* sum;               // s rounded to the dtype (rows, n), written when res is given or dropout is on
  float* mean;             // (rows), LayerNorm only
  float* rstd;             // (rows)
  float eps;
  NormDropout dropout;
};

// Backward over `programs` thread blocks (1 <= programs <= rows), each taking rows blk,
// blk + programs, ...: dx of every row, and the weight / bias gradients of its rows as float32
// partials (programs, n), written (not accumulated: no zero-fill needed) from the block's first
// row on; the caller sums them in a fixed order (deterministic: no atomics).
struct NormBwdParams {
  DType dtype;
  bool rms;
  int64_t rows, n, programs;
  float eps;               // RMSNorm with n == 1 needs it: dx = g * eps * rstd^3 exactly
  const void* dy;          // (rows, n) contiguous
  const void* dsum;        // gradient of the returned sum (rows, n), or null
  const void* x;           // the normalized input (s when fused), contiguous
  const void* w;           // or null
  const float* mean;       // LayerNorm only
  const float* rstd;
  void* dx;                // (rows, n): the input's gradient (through the dropout mask when on)
  void* dres;              // (rows, n): the residual's gradient, written when dropout is on; or null
  NormDropout dropout;     // the forward's
  float* dw_part;          // (programs, n), or null without weight
  float* db_part;          // (programs, n), or null without bias
};

cudaError_t launch_norm_fwd(const NormFwdParams& p, cudaStream_t stream);
cudaError_t launch_norm_bwd(const NormBwdParams& p, cudaStream_t stream);

// Threads per block for rows of n columns: about 8 columns per thread, a power of two from 32 to
// max_threads (the kernel's __launch_bounds__).
inline int norm_threads(int64_t n, int max_threads) {
  int t = 32;
  while (t < max_threads && int64_t(t) * 8 < n) t *= 2;
  return t;
}

}  // namespace cuda
}  // namespace zenattn
