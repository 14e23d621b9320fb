// LayerNorm / RMSNorm on the CPU: the parameter structs shared by the launchers (norm.cpp) and
// the kernels (norm_kernels.cpp, compiled once per instruction set), and the launcher API that
// csrc/bindings.cpp exposes to Python.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace zenattn::cpu {

// Forward over a (rows, cols) matrix, normalizing each row. Pointers are typed by `dtype`
// (x, residual, weight, bias, y, sum) or by its opmath type (mean, rstd: float, or double for
// double inputs). Row strides are in elements; the last dimension is contiguous.
struct NormFwdParams {
  at::ScalarType dtype;
  bool rms;                      // RMSNorm (no centering, no bias) instead of LayerNorm
  int64_t rows, cols;
  double eps;
  const void* x;                 // (rows, cols), row stride x_stride
  int64_t x_stride;
  const void* residual;          // (rows, cols) or null; when set, the rows normalized are x + residual
  int64_t residual_stride;
  uint64_t dropout_seed;         // dropout on x before the residual add, when dropout_p > 0
  double dropout_p;
  const void* weight;            // (cols,) or null
  const void* bias;              // (cols,) or null (always null for RMSNorm)
  void* y;                       // (rows, cols) contiguous output
  void* sum;                     // (rows, cols) contiguous x + residual, written iff residual
  void* mean;                    // (rows,) opmath, or null for RMSNorm
  void* rstd;                    // (rows,) opmath: 1 / sqrt(var + eps) (mean square for RMSNorm)
  bool stream;                   // write y with non-temporal stores (see norm.cpp; not sum, which the row reads back)
};

// Backward. `x` is the tensor that was normalized (s when the residual or dropout was fused).
// dw/db are reduced through fp32 (opmath) partials, one row per chunk of rows; chunks depend only
// on the shape, so the result is bitwise repeatable whatever the thread count.
struct NormBwdParams {
  at::ScalarType dtype;
  bool rms;
  int64_t rows, cols;
  double eps;                    // the forward's eps (RMSNorm with cols == 1 needs it, see kernel)
  const void* dy;                // (rows, cols), row stride dy_stride
  int64_t dy_stride;
  const void* dsum;              // (rows, cols) gradient of the returned sum, or null; added to dx
  int64_t dsum_stride;
  const void* x;                 // (rows, cols), row stride x_stride
  int64_t x_stride;
  const void* weight;            // (cols,) or null
  const void* mean;              // (rows,) opmath, or null for RMSNorm
  const void* rstd;              // (rows,) opmath
  void* dx;                      // (rows, cols) contiguous: the input's gradient (through the dropout mask)
  void* dres;                    // (rows, cols) contiguous: the residual's, when it differs (dropout on); or null
  uint64_t dropout_seed;         // the forward's dropout
  double dropout_p;
  void* dweight;                 // (cols,) dtype, or null when there is no weight
  void* dbias;                   // (cols,) dtype, or null when there is no bias
  int64_t num_chunks;            // rows are split into this many contiguous chunks
  void* dweight_partial;         // (num_chunks, cols) opmath scratch, or null
  void* dbias_partial;           // (num_chunks, cols) opmath scratch, or null
  bool stream;                   // write dx with non-temporal stores (see norm.cpp)
};

// Sets the number of bytes a call must touch (read + write) before it writes its outputs with
// non-temporal stores (negative: back to the default, this machine's last-level cache size);
// returns the previous value. For tests: both store paths must give the same bits.
int64_t set_norm_stream_threshold(int64_t bytes);

// Number of row chunks for the weight/bias gradient partials (a function of the shape only).
int64_t norm_bwd_num_chunks(int64_t rows);

// One kernel set per instruction set; see CMakeLists.txt.
#define ZENATTN_DECLARE_NORM_KERNELS(ISA)         \
  namespace ISA {                                 \
  void norm_fwd_kernel(const NormFwdParams& p);   \
  void norm_bwd_kernel(const NormBwdParams& p);   \
  }
ZENATTN_DECLARE_NORM_KERNELS(DEFAULT)
ZENATTN_DECLARE_NORM_KERNELS(AVX2)
ZENATTN_DECLARE_NORM_KERNELS(AVX512)
#undef ZENATTN_DECLARE_NORM_KERNELS

// Launchers: flatten to (rows, cols), allocate outputs, run the kernel for this machine's ISA.
// Inputs are already checked (csrc/bindings.cpp). Absent outputs are returned as undefined tensors
// (None in Python). They have the row-kernel signatures of zenattn/ops/norm.py's RowLaunchers:
//   norm_fwd -> {y, sum, mean, rstd}      norm_bwd -> {dx, dweight, dbias, dresidual}
std::vector<at::Tensor> norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                 double eps, bool rms, int64_t seed, double dropout_p);
std::vector<at::Tensor> norm_bwd(const at::Tensor& dy, const std::optional<at::Tensor>& dsum, const at::Tensor& x,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mean,
                                 const at::Tensor& rstd, bool has_bias, double eps, bool rms, int64_t seed,
                                 double dropout_p, bool has_residual);

// norm_fwd with its autograd attached (csrc/cpu/norm_autograd.cpp): {y, sum, mean, rstd}, absent
// outputs as 0-element placeholders; differentiable in x, weight, bias and residual. What the eager "cpu" path of zenattn/ops/norm.py calls when a gradient is tracked.
std::vector<at::Tensor> norm_autograd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                      double eps, bool rms, int64_t seed, double dropout_p);

}  // namespace zenattn::cpu
