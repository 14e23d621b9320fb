"""The CPU attention kernel's tile products, one thread: MKL's sgemm_ against oneDNN's brgemm.

    python benchmarks/bench_tile_products.py                          # prints the table
    python benchmarks/bench_tile_products.py --out benchmarks/results --tag tile-products-cpu-DATE

Why the kernel (csrc/cpu/blas.cpp) runs its products on ``at::native::cpublas::brgemm``: at the
shapes the kernel multiplies (query block x key block x head dim, and the other three products of
the backward), this measures GFLOP/s of
  sgemm_        C = A B with MKL's Fortran sgemm (what the kernel used before), fp32;
  brgemm fp32   the same product through ATen's fp32 brgemm (B row-major, as the kernel packs it);
  brgemm bf16   bf16 A and B (B in VNNI pairs) with an fp32 C, where this CPU and torch have it.
Each call is timed in a C++ loop (a small extension built at first run with torch's cpp_extension:
needs a C++ compiler), one thread, the best of 5 batches; results are checked against an fp32 (or
bf16-rounded fp32) product first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>
#include <chrono>

extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);

template <typename F>
double seconds_per_call(int64_t reps, F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < reps; ++r) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// c (m x n) = a (m x k) b (k x n), all row-major contiguous float.
double sgemm(torch::Tensor a, torch::Tensor b, torch::Tensor c, int64_t reps) {
  const int m = a.size(0), k = a.size(1), n = b.size(1);
  const float one = 1, zero = 0;
  return seconds_per_call(reps, [&] {  // row-major C = A B is column-major C^T = B^T A^T
    sgemm_("N", "N", &n, &m, &k, &one, b.data_ptr<float>(), &n, a.data_ptr<float>(), &k, &zero,
           c.data_ptr<float>(), &n);
  });
}

bool has_brgemm_f32() {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  return true;
#else
  return false;
#endif
}

double brgemm_f32(torch::Tensor a, torch::Tensor b, torch::Tensor c, int64_t reps) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  return seconds_per_call(reps, [&] {
    at::native::cpublas::brgemm(m, n, k, k, n, n, false, a.data_ptr<float>(), b.data_ptr<float>(),
                                c.data_ptr<float>());
  });
#else
  TORCH_CHECK(false, "this torch has no fp32 brgemm");
#endif
}

// b_vnni: (k / 2, n, 2) bf16, the VNNI pair layout
double brgemm_bf16(torch::Tensor a, torch::Tensor b_vnni, torch::Tensor c, int64_t reps) {
  const int64_t m = a.size(0), k = a.size(1), n = b_vnni.size(1);
  const auto* pa = a.data_ptr<at::BFloat16>();
  const auto* pb = b_vnni.data_ptr<at::BFloat16>();
  const double s = seconds_per_call(reps, [&] {
    at::native::cpublas::brgemm(m, n, k, k, n, n, false, pa, pb, c.data_ptr<float>());
  });
  at::native::cpublas::brgemm_release();
  return s;
}
"""

# (M, N, K) of the kernel's products: scores and P V (forward, 256-query blocks, 64-256 keys),
# and the backward's dP, dV^T, dQ, dK^T at 256 x 256 tiles, head dims 64 and 128.
SHAPES = [(256, 256, 64), (256, 256, 128), (256, 64, 256), (256, 128, 256), (64, 256, 256),
          (128, 256, 256), (64, 256, 64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the JSON/markdown results")
    parser.add_argument("--tag", default=f"tile-products-cpu-{dt.date.today()}")
    parser.add_argument("--reps", type=int, default=500, help="calls per timed batch")
    args = parser.parse_args()

    ext = load_inline("zenattn_bench_tile_products", [SOURCE],
                      functions=["sgemm", "has_brgemm_f32", "brgemm_f32", "brgemm_bf16"],
                      extra_cflags=["-O3"])
    torch.set_num_threads(1)
    bf16 = torch.backends.mkldnn.is_available() and "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    rows = []
    for m, n, k in SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        want = a @ b
        row = {"m": m, "n": n, "k": k}
        cases = [("sgemm_", ext.sgemm, a, b, want, 1e-4)]
        if ext.has_brgemm_f32():
            cases.append(("brgemm fp32", ext.brgemm_f32, a, b, want, 1e-4))
        if bf16:
            ab, bb = a.bfloat16(), b.bfloat16()
            b_vnni = bb.view(k // 2, 2, n).transpose(1, 2).contiguous()
            cases.append(("brgemm bf16", ext.brgemm_bf16, ab, b_vnni, ab.float() @ bb.float(), 1e-3))
        for name, fn, x, y, ref, tol in cases:
            c = torch.zeros(m, n)
            fn(x, y, c, 1)
            err = ((c - ref).abs().max() / ref.abs().max()).item()
            assert err < tol, f"{name} {m}x{n}x{k}: relative error {err:.1e}"
            fn(x, y, c, 20)  # warm-up (oneDNN compiles its kernel at the first call)
            best = min(fn(x, y, c, args.reps) for _ in range(5))
            row[name] = 2 * m * n * k / best / 1e9
        rows.append(row)

    names = [k for k in ("sgemm_", "brgemm fp32", "brgemm bf16") if k in rows[0]]
    lines = [f"# Attention tile products, one thread ({dt.date.today()})", "",
             f"torch {torch.__version__}, {platform.machine()}, {platform.processor() or 'cpu'}; "
             f"GFLOP/s, best of 5 batches of {args.reps} calls; C = A B, fp32 C.", "",
             "| M x N x K | " + " | ".join(names) + " | brgemm fp32 / sgemm_ |",
             "|---|" + "---|" * (len(names) + 1)]
    for r in rows:
        ratio = f"{r['brgemm fp32'] / r['sgemm_']:.2f}x" if "brgemm fp32" in r else "-"
        lines.append(f"| {r['m']} x {r['n']} x {r['k']} | " + " | ".join(f"{r[k]:.0f}" for k in names)
                     + f" | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"date": dt.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
                "machine": platform.machine(), "reps": args.reps}
        (args.out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (args.out / f"{args.tag}.md").write_text(text)
        print(f"wrote {args.out / args.tag}.json and .md")


if __name__ == "__main__":
    main()
