#include "cpu/blas.h"

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace zenattn::cpu::blas {
namespace {

// The Fortran BLAS interface (LP64: 32-bit integers), as exported by torch's libtorch_cpu.
template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int*, const int*, const int*, const T*,
                             const T*, const int*, const T*, const int*, const T*, T*, const int*);

// ZENATTN_CPU_BLAS=aten skips the BLAS symbols and takes the at::mm fallback (tests use it to
// check that path on machines whose torch does export them).
bool fallback_forced() {
  static const bool forced = [] {
    const char* v = std::getenv("ZENATTN_CPU_BLAS");
    return v != nullptr && std::string(v) == "aten";
  }();
  return forced;
}

template <typename T>
FortranGemm<T> lookup(const char* symbol) {
  if (fallback_forced()) return nullptr;
  // libtorch_cpu is already loaded (this extension links it), so the default namespace finds it.
  return reinterpret_cast<FortranGemm<T>>(dlsym(RTLD_DEFAULT, symbol));
}

FortranGemm<float> sgemm() {
  static const auto fn = lookup<float>("sgemm_");
  return fn;
}

FortranGemm<double> dgemm() {
  static const auto fn = lookup<double>("dgemm_");
  return fn;
}

// MKL runs a BLAS call on one thread when it is made from inside an OpenMP parallel region, which
// is how the kernels call it; nothing to configure.

template <typename T>
void gemm_fallback(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto mat = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<T*>(p), trans ? at::IntArrayRef{cols, rows} : at::IntArrayRef{rows, cols},
                                 {ld, 1}, opts);
    return trans ? t.t() : t;
  };
  at::Tensor cm = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  at::Tensor prod = at::mm(mat(a, m, k, lda, ta), mat(b, k, n, ldb, tb));
  if (beta == T(0)) {
    cm.copy_(prod.mul_(alpha));
  } else {
    cm.mul_(beta).add_(prod, alpha);
  }
}

template <typename T>
void gemm_impl(FortranGemm<T> fn, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (fn == nullptr) return gemm_fallback(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major X with row
  // stride ld is the column-major X^T with leading dimension ld: so swap the operands.
  const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
  const int im = int(n), in = int(m), ik = int(k);
  // BLAS wants leading dimensions >= the stored row length even when a dimension is 1.
  const int ilda = int(std::max<int64_t>(lda, ta ? m : k));
  const int ildb = int(std::max<int64_t>(ldb, tb ? k : n));
  const int ildc = int(std::max<int64_t>(ldc, n));
  if (k == 0) {  // BLAS would scale C by beta; keep that behaviour explicit
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  fn(&opb, &opa, &im, &in, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
}

}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm_impl(sgemm(), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  gemm_impl(dgemm(), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

namespace {

// ZENATTN_CPU_BRGEMM: "0" keeps every product on sgemm_ (tests compare the two paths with it),
// "1" takes fp32 brgemm wherever the launchers could (f32_brgemm_forced), unset or anything else
// leaves the choice to them.
const char* brgemm_env() {
  static const char* v = std::getenv("ZENATTN_CPU_BRGEMM");
  return v;
}
bool brgemm_enabled() {
  static const bool enabled = !(brgemm_env() != nullptr && std::string(brgemm_env()) == "0");
  return enabled;
}

// A product with nothing to multiply (M, N or K zero): C = 0 unless accumulating. Returns whether
// that was the case, i.e. whether the product is done.
bool empty_product(int64_t m, int64_t n, int64_t k, bool accumulate, float* c, int64_t ldc) {
  if (m != 0 && n != 0 && k != 0) return false;
  if (k == 0 && !accumulate)
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
  return true;
}

}  // namespace

bool f32_brgemm_forced() {
  static const bool forced = brgemm_env() != nullptr && std::string(brgemm_env()) == "1";
  return forced;
}

#ifdef CPUBLAS_BRGEMM_F32F32F32
bool f32_brgemm_available() { return brgemm_enabled(); }
#else
bool f32_brgemm_available() { return false; }
#endif

void brgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
            bool accumulate, float* c, int64_t ldc) {
  if (empty_product(m, n, k, accumulate, c, ldc)) return;
#ifdef CPUBLAS_BRGEMM_F32F32F32
  // (torch's own fallback, with oneDNN off or no kernel for this CPU, is a plain gemm: correct)
  if (brgemm_enabled()) return at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c);
#endif
  gemm(false, false, m, n, k, 1.0f, a, lda, b, ldb, accumulate ? 1.0f : 0.0f, c, ldc);
}

#ifdef CPUBLAS_BRGEMM_BF16BF16F32
namespace {

// One product with a known result, VNNI-packed by hand: catches a torch whose brgemm would take
// another path on this CPU (its fallback reads B unpacked) or fail.
bool bf16_selftest() {
  try {
    constexpr int64_t M = 3, N = 5, K = 4;
    c10::BFloat16 a[M * K], b[K * N];
    float c[M * N], want[M * N] = {};
    for (int64_t i = 0; i < M * K; ++i) a[i] = c10::BFloat16(float(i % 7) - 3.0f);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) {
        const float x = float((k * N + n) % 5) - 2.0f;
        b[(k / 2) * 2 * N + 2 * n + k % 2] = c10::BFloat16(x);
        for (int64_t m = 0; m < M; ++m) want[m * N + n] += float(a[m * K + k]) * x;
      }
    at::native::cpublas::brgemm(M, N, K, K, N, N, false, a, b, c);
    at::native::cpublas::brgemm_release();
    return std::equal(c, c + M * N, want);
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

bool bf16_available() {
  static const bool usable = brgemm_enabled() && bf16_selftest();
  // brgemm falls back to an unpacked product when oneDNN is switched off: check on every call.
  return usable && at::globalContext().userEnabledMkldnn();
}

void brgemm(int64_t m, int64_t n, int64_t k, const c10::BFloat16* a, int64_t lda, const c10::BFloat16* b_vnni,
            int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  if (empty_product(m, n, k, accumulate, c, ldc)) return;
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b_vnni, c);
}

void brgemm_release() { at::native::cpublas::brgemm_release(); }
#else
bool bf16_available() { return false; }
void brgemm(int64_t, int64_t, int64_t, const c10::BFloat16*, int64_t, const c10::BFloat16*, int64_t, bool, float*,
            int64_t) {
  TORCH_CHECK(false, "zenattn: this torch has no bf16 brgemm (at::native::cpublas::brgemm)");
}
void brgemm_release() {}
#endif

const char* backend_name() {
  if (sgemm() != nullptr) return "sgemm_/dgemm_ from torch's BLAS";
  return fallback_forced() ? "at::mm (ZENATTN_CPU_BLAS=aten)" : "at::mm (no BLAS symbol found)";
}

}  // namespace zenattn::cpu::blas
