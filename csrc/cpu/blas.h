// Row-major matrix products for the CPU kernels, on the BLAS that torch itself links (MKL in the
// x86-64 wheels, OpenBLAS elsewhere), found at load time; ATen's at::mm where none is exported
// (or when ZENATTN_CPU_BLAS=aten asks for it).
#pragma once

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

}  // namespace zenattn::cpu::blas
