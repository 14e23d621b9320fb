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

// Tile products on oneDNN's brgemm micro-kernels, through ATen's at::native::cpublas::brgemm:
// C[M x N] (+)= A[M x K] * B[K x N], A row-major with row stride lda, C fp32 row-major with row
// stride ldc, overwritten or (accumulate) added to. Single-threaded. Measured on the project's VM
// (one thread, the attention kernel's tile shapes): fp32 1.13-1.18x sgemm_, bf16 (AVX512-BF16 dot
// products) 2.2-2.4x sgemm_. oneDNN compiles a kernel for each new (M, N, K, ld) shape (cached).
//
// fp32: B row-major with row stride ldb. Computes correctly with any torch (without the API, or
// with oneDNN switched off, it is an sgemm); f32_brgemm_available() says whether it is brgemm:
// this torch has the API and ZENATTN_CPU_BRGEMM is not 0.
bool f32_brgemm_available();
// ZENATTN_CPU_BRGEMM=1: the launchers take fp32 brgemm wherever it is available, not only where
// it was measured faster than sgemm_ on this instruction set (csrc/cpu/attention.cpp).
bool f32_brgemm_forced();
void brgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
            bool accumulate, float* c, int64_t ldc);

// bf16: B in VNNI pairs, the layout brgemm takes: element (k, n) at
// b_vnni[(k / 2) * 2 * ldb + 2 * n + k % 2], K even. Only where bf16_available(): this torch has the
// API, it computes correctly here (checked once against a product with a known result), oneDNN is
// enabled (torch.backends.mkldnn.enabled) and ZENATTN_CPU_BRGEMM is not 0.
bool bf16_available();
void brgemm(int64_t m, int64_t n, int64_t k, const c10::BFloat16* a, int64_t lda, const c10::BFloat16* b_vnni,
            int64_t ldb, bool accumulate, float* c, int64_t ldc);

// Ends a thread's run of bf16 brgemm calls (frees the micro-kernels' hardware state, e.g. AMX tiles).
void brgemm_release();

}  // namespace zenattn::cpu::blas
