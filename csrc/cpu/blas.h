// Row-major matrix products for the CPU kernels, on the BLAS that torch itself links (MKL in the
// x86-64 wheels, OpenBLAS elsewhere), found at load time; ATen's at::mm where none is exported
// (or when ZENATTN_CPU_BLAS=aten asks for it).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace zenattn::cpu::blas {

// C[M x N] = alpha * op(A)[M x K] * op(B)[K x N] + beta * C, all row-major with the given row
// strides (lda, ldb, ldc, in elements). op(X) is X, or X transposed when trans_x is set (X is then
// stored as K x M, or N x K). Single-threaded: the kernels call it from inside their own
// at::parallel_for.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// Which of the two paths runs, for zenattn.info().
const char* backend_name();

// bfloat16 tile products with fp32 results, on oneDNN's brgemm micro-kernels through ATen's
// at::native::cpublas::brgemm (AVX512-BF16 dot products where the CPU has them: 2.2-2.4x sgemm_ at
// the attention kernel's tile shapes on the project's VM, one thread).
//
// bf16_available(): this torch has the API, it computes correctly here (checked once against a
// product with a known result), oneDNN is enabled (torch.backends.mkldnn.enabled) and
// ZENATTN_CPU_BF16_GEMM is not 0.
bool bf16_available();

// C[M x N] (+)= A[M x K] * B[K x N]: A row-major bf16 with row stride lda; B in VNNI pairs, the
// layout brgemm takes: element (k, n) at b_vnni[(k / 2) * 2 * ldb + 2 * n + k % 2], K even; C
// fp32 row-major with row stride ldc, overwritten or (accumulate) added to. Single-threaded.
void gemm_bf16(int64_t m, int64_t n, int64_t k, const c10::BFloat16* a, int64_t lda,
               const c10::BFloat16* b_vnni, int64_t ldb, bool accumulate, float* c, int64_t ldc);

// Ends a thread's run of gemm_bf16 calls (frees the micro-kernels' hardware state, e.g. AMX tiles).
void bf16_release();

}  // namespace zenattn::cpu::blas
