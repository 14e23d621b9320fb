// LayerNorm / RMSNorm launchers for the CPU: view inputs as (rows, cols) without copying where
// the strides allow, allocate outputs, and run the kernel built for this machine's instruction set.
// Input checks happen before this, at the pybind11 boundary (csrc/bindings.cpp).
#include "cpu/norm.h"
#include "cpu/isa.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace zenattn::cpu {
namespace {

void run_fwd(const NormFwdParams& p) { ZENATTN_ISA_DISPATCH(norm_fwd_kernel, p) }
void run_bwd(const NormBwdParams& p) { ZENATTN_ISA_DISPATCH(norm_bwd_kernel, p) }

// A fresh output of many MiB comes straight from mmap, and writing it costs one page fault per
// 4 KiB: on the VMs we measure, those faults take longer than the kernel itself (allocate-then-copy
// of 128 MiB: 50 ms; with huge pages: 12 ms). Where transparent huge pages are in "madvise" mode,
// ask for them on the output before its first touch, as c10 does under THP_MEM_ALLOC_ENABLE.
// A no-op elsewhere, and harmless on memory that is already mapped.
// ZENATTN_CPU_HUGEPAGES=0 turns this off.
bool huge_pages_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("ZENATTN_CPU_HUGEPAGES");
    return v == nullptr || std::string(v) != "0";
  }();
  return on;
}

void advise_huge_pages(const at::Tensor& t) {
#if defined(MADV_HUGEPAGE)
  if (!huge_pages_enabled()) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t base = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t bytes = t.nbytes();
  // 8 MiB and up. Buffers under 32 MiB may come from glibc's heap, already mapped, where the
  // advice changes little; measured side by side (benchmarks/results/), a 32 MiB threshold made
  // the 4096x1024 forward cases 15-25% slower than this one. The cost: a madvised region can stall
  // its first touch in the kernel's synchronous compaction (seen once: a 16 MiB LayerNorm fwd+bwd
  // at 33 ms instead of 4); ZENATTN_CPU_HUGEPAGES=0 turns the advice off.
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (base + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (base + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// The size of the last-level cache one thread sees: the highest cache level in sysfs (the cache
// this core shares with its neighbours; sysconf reports the whole package's on many-die CPUs, 10x
// too much on the 32 MiB L3 of the EPYC VMs we measure on), 32 MiB where sysfs has no answer.
int64_t last_level_cache_bytes() {
  int64_t best = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream size_file(dir + "size");
    std::string size;
    if (!(size_file >> size) || size.empty()) continue;
    int64_t bytes = std::atoll(size.c_str());
    if (size.back() == 'K') bytes <<= 10;
    if (size.back() == 'M') bytes <<= 20;
    best = std::max(best, bytes);
  }
  return best > 0 ? best : int64_t(32) << 20;
}

// A call that touches (reads plus writes) at least this many bytes writes its row outputs with
// non-temporal stores: they would not survive in the cache until the next op reads them anyway,
// and a plain store first reads each destination line from memory (measured on the 32 MiB-L3 VM,
// LayerNorm fp32 4096x1024 fwd+bwd: 1.8-2.5 ms streamed vs 2.4-3.4 ms; at 8 MiB bf16, which fits
// the cache, streaming the forward cost 20%). Default: the last-level cache's size.
std::atomic<int64_t>& stream_threshold() {
  static std::atomic<int64_t> bytes{last_level_cache_bytes()};
  return bytes;
}

bool stream_outputs(int64_t touched_bytes) {
  return touched_bytes >= stream_threshold().load(std::memory_order_relaxed);
}

at::Tensor empty_output(const at::Tensor& like) {
  at::Tensor t = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  advise_huge_pages(t);
  return t;
}

// Per-thread scratch for the dw/db partials, kept between calls: allocating and freeing these
// (up to 64 x cols floats each) between the large outputs fragments glibc's heap, which then
// hands the next large output fresh pages to fault in. Slot 0: dw, slot 1: db.
at::Tensor scratch(int slot, int64_t numel, const at::TensorOptions& options) {
  constexpr int64_t kMaxCachedBytes = int64_t(4) << 20;  // larger ones are not kept around
  if (numel * int64_t(options.dtype().itemsize()) > kMaxCachedBytes) return at::empty({numel}, options);
  thread_local at::Tensor cache[2];
  at::Tensor& t = cache[slot];
  if (!t.defined() || t.numel() < numel || t.dtype() != options.dtype()) {
    t = at::empty({std::max<int64_t>(numel, 1)}, options);
  }
  return t;
}

// View t (..., cols) as (rows, cols) with a unit last stride: a view when the leading dims
// collapse into one row stride (contiguous, row-sliced or row-expanded tensors), else a copy.
at::Tensor as_rows(const at::Tensor& t, int64_t cols) {
  const int64_t rows = cols == 0 ? 0 : t.numel() / cols;
  at::Tensor m = t.reshape({rows, cols});
  if (cols > 1 && m.stride(1) != 1) m = m.contiguous();
  return m;
}

std::vector<int64_t> leading_shape(const at::Tensor& x) {
  auto s = x.sizes().vec();
  s.pop_back();
  return s;
}

}  // namespace

std::vector<at::Tensor> norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                 double eps, bool rms, int64_t seed, double dropout_p) {
  const int64_t cols = x.size(-1);
  const at::Tensor x2 = as_rows(x, cols);
  const int64_t rows = x2.size(0);
  const auto stat_dtype = at::toOpMathType(x.scalar_type());
  at::Tensor y = empty_output(x);
  at::Tensor mean = rms ? at::Tensor() : at::empty(leading_shape(x), x.options().dtype(stat_dtype));
  at::Tensor rstd = at::empty(leading_shape(x), x.options().dtype(stat_dtype));

  NormFwdParams p{};
  p.dtype = x.scalar_type();
  p.rms = rms;
  p.rows = rows;
  p.cols = cols;
  p.eps = eps;
  p.x = x2.data_ptr();
  p.x_stride = x2.stride(0);
  at::Tensor res2, sum;
  if (residual.has_value()) {
    res2 = as_rows(*residual, cols);
    p.residual = res2.data_ptr();
    p.residual_stride = res2.stride(0);
  }
  p.dropout_seed = static_cast<uint64_t>(seed);
  p.dropout_p = dropout_p;
  if (residual.has_value() || dropout_p > 0) {
    sum = empty_output(x);
    p.sum = sum.data_ptr();
  }
  // Weight and bias are 1-D and tiny: make them contiguous rather than carry a stride.
  at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  p.weight = w.defined() ? w.data_ptr() : nullptr;
  p.bias = b.defined() ? b.data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.mean = rms ? nullptr : mean.data_ptr();
  p.rstd = rstd.data_ptr();
  // Touched: x (+ residual) read, y (+ sum) written.
  p.stream = stream_outputs(y.nbytes() * (2 + (residual.has_value() ? 1 : 0) + (sum.defined() ? 1 : 0)));
  run_fwd(p);
  return {y, sum, mean, rstd};
}

std::vector<at::Tensor> norm_bwd(const at::Tensor& dy, const std::optional<at::Tensor>& dsum, const at::Tensor& x,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mean,
                                 const at::Tensor& rstd, bool has_bias, double eps, bool rms, int64_t seed,
                                 double dropout_p, bool has_residual) {
  const int64_t cols = x.size(-1);
  const at::Tensor x2 = as_rows(x, cols);
  const at::Tensor dy2 = as_rows(dy, cols);
  const int64_t rows = x2.size(0);
  const auto stat_dtype = at::toOpMathType(x.scalar_type());
  at::Tensor dx = empty_output(x);
  const at::Tensor mean_c = mean.has_value() ? mean->contiguous() : at::Tensor();
  const at::Tensor rstd_c = rstd.contiguous();

  NormBwdParams p{};
  p.dtype = x.scalar_type();
  p.rms = rms;
  p.rows = rows;
  p.cols = cols;
  p.eps = eps;
  p.dy = dy2.data_ptr();
  p.dy_stride = dy2.stride(0);
  at::Tensor ds2;
  if (dsum.has_value()) {
    ds2 = as_rows(*dsum, cols);
    p.dsum = ds2.data_ptr();
    p.dsum_stride = ds2.stride(0);
  }
  p.x = x2.data_ptr();
  p.x_stride = x2.stride(0);
  at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  p.weight = w.defined() ? w.data_ptr() : nullptr;
  p.mean = mean_c.defined() ? mean_c.data_ptr() : nullptr;
  p.rstd = rstd_c.data_ptr();
  p.dx = dx.data_ptr();
  at::Tensor dres;
  if (has_residual && dropout_p > 0) {
    dres = empty_output(x);
    p.dres = dres.data_ptr();
  }
  p.dropout_seed = static_cast<uint64_t>(seed);
  p.dropout_p = dropout_p;
  p.num_chunks = norm_bwd_num_chunks(rows);

  at::Tensor dw, db, dw_part, db_part;
  if (w.defined()) {
    dw = at::empty({cols}, w.options());
    dw_part = scratch(0, p.num_chunks * cols, x.options().dtype(stat_dtype));
    p.dweight = dw.data_ptr();
    p.dweight_partial = dw_part.data_ptr();
  }
  if (has_bias && !rms) {
    db = at::empty({cols}, x.options());
    db_part = scratch(1, p.num_chunks * cols, x.options().dtype(stat_dtype));
    p.dbias = db.data_ptr();
    p.dbias_partial = db_part.data_ptr();
  }
  // Touched: x, dy (+ dsum) read, dx (+ dres) written.
  p.stream = stream_outputs(dx.nbytes() * (3 + (dsum.has_value() ? 1 : 0) + (dres.defined() ? 1 : 0)));
  run_bwd(p);
  return {dx, dw, db, dres};
}

int64_t set_norm_stream_threshold(int64_t bytes) {
  return stream_threshold().exchange(bytes < 0 ? last_level_cache_bytes() : bytes);
}

int64_t norm_bwd_num_chunks(int64_t rows) {
  // Enough chunks to keep many threads busy, few enough that zeroing and reducing the
  // (chunks, cols) partials stays small next to the rows themselves.
  constexpr int64_t kMaxChunks = 64;
  return std::min(rows, kMaxChunks);
}

}  // namespace zenattn::cpu
