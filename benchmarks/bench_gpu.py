"""The Triton kernels against PyTorch on an NVIDIA GPU, side by side in one run (issue #4's targets).

    python benchmarks/bench_gpu.py --out benchmarks/results --tag h200

Measures first the device's ceilings (dense bf16 matmul rate, ``torch.mm`` of 8192^3; copy
bandwidth, a 1 GiB ``copy_``), then:

- attention, bf16, B=2, H=16, D=128, N=8192 (the issue's case) non-causal and causal, forward and
  forward+backward: ``zenattn.attention(backend="triton")`` (autotuned) against
  ``F.scaled_dot_product_attention`` with each of its CUDA backends forced (flash, efficient, cuDNN).
  FLOPs 4*B*H*N^2*D (x0.5 causal, x3.5 forward+backward), DESIGN.md section 5.
- LayerNorm and RMSNorm, bf16, 8192 x 8192 with weight (and bias), forward+backward: zenattn's triton
  backend against torch eager. Bytes: read x, write y; read x and dy, write dx (5 x 2 bytes per element).

Every provider's output is first compared with a float32 reference of batch 0 / head 0 (attention)
or of the whole input (norms); a provider more than 3x the best provider's error (plus 1e-2) is
reported WRONG. Timing: ``triton.testing.do_bench`` (it flushes L2 between calls), median and 20/80
percentiles. Writes ``gpu-<date>-<tag>.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

import zenattn

QUANTILES = [0.5, 0.2, 0.8]


def timed(fn, grad_to_none=None):
    med, lo, hi = do_bench(fn, quantiles=QUANTILES, grad_to_none=grad_to_none, warmup=50, rep=300)
    return med, lo, hi


def ceilings() -> dict:
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mm_ms = timed(lambda: a @ b)[0]
    x = torch.empty(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    copy_ms = timed(lambda: y.copy_(x))[0]
    return {"bf16_matmul_tflops": 2 * n**3 / mm_ms / 1e9, "copy_gbps": 2 * x.numel() * 4 / copy_ms / 1e6}


def sdpa_providers() -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    providers = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue

        def run(q, k, v, causal, backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        providers[f"sdpa {name.split('_')[0].lower()}"] = run
    return providers


def bench_attention(ceil: dict, rows: list) -> None:
    B, H, N, D = 2, 16, 8192, 128
    providers = {"zenattn triton": lambda q, k, v, causal: zenattn.attention(q, k, v, causal=causal, backend="triton")}
    providers.update(sdpa_providers())
    for causal in (False, True):
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        dout = torch.randn_like(q)
        ref = F.scaled_dot_product_attention(q[:1, :1].float(), k[:1, :1].float(), v[:1, :1].float(), is_causal=causal)
        errors, outputs = {}, {}
        for name, fn in providers.items():
            try:
                out = fn(q, k, v, causal)
                errors[name] = (out[:1, :1].float() - ref).abs().max().item()
                outputs[name] = True
            except Exception as e:  # a provider that cannot run this case is reported, not fatal
                errors[name] = f"{type(e).__name__}: {str(e)[:120]}"
        numeric = [e for e in errors.values() if isinstance(e, float)]
        bound = 3 * min(numeric) + 1e-2 if numeric else 0.0
        flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
        for mode in ("fwd", "fwd+bwd"):
            for name, fn in providers.items():
                row = dict(op="attention", provider=name, mode=mode, shape=f"B{B} H{H} N{N} D{D}", dtype="bf16",
                           causal=causal, error=errors[name])
                if name not in outputs:
                    rows.append(dict(row, status="failed"))
                    continue
                if mode == "fwd":
                    ms = timed(lambda: fn(q, k, v, causal))
                    f = flops
                else:
                    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
                    ms = timed(lambda: fn(qg, kg, vg, causal).backward(dout), grad_to_none=[qg, kg, vg])
                    f = 3.5 * flops
                tflops = f / ms[0] / 1e9
                rows.append(dict(row, status="WRONG" if errors[name] > bound else "ok", ms=ms, tflops=tflops,
                                 frac_of_matmul=tflops / ceil["bf16_matmul_tflops"]))


def bench_norms(ceil: dict, rows: list) -> None:
    M, N = 8192, 8192
    x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(N, device="cuda", dtype=torch.bfloat16) + 0.5
    b = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    cases = {
        "layer_norm": {"zenattn triton": lambda x, w, b: zenattn.layer_norm(x, (N,), w, b, backend="triton"),
                       "torch eager": lambda x, w, b: F.layer_norm(x, (N,), w, b)},
        "rms_norm": {"zenattn triton": lambda x, w, b: zenattn.rms_norm(x, (N,), w, eps=1e-6, backend="triton"),
                     "torch eager": lambda x, w, b: F.rms_norm(x, (N,), w, eps=1e-6)},
    }
    for op, providers in cases.items():
        ref = providers["torch eager"](x.float(), w.float(), b.float())
        errors = {name: (fn(x, w, b).float() - ref).abs().max().item() for name, fn in providers.items()}
        bound = 3 * min(errors.values()) + 1e-2
        for name, fn in providers.items():
            xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
            ms = timed(lambda: fn(xg, wg, bg).backward(dy), grad_to_none=[xg, wg, bg])
            gbps = 5 * x.numel() * 2 / ms[0] / 1e6
            rows.append(dict(op=op, provider=name, mode="fwd+bwd", shape=f"{M}x{N}", dtype="bf16", error=errors[name],
                             status="WRONG" if errors[name] > bound else "ok", ms=ms, gbps=gbps,
                             frac_of_copy=gbps / ceil["copy_gbps"]))


def summary(meta: dict, ceil: dict, rows: list) -> str:
    lines = [f"# Triton kernels vs PyTorch on {meta['device']} ({meta['date']})", "",
             f"torch {meta['torch']} (CUDA {meta['cuda']}), triton {meta['triton']}, zenattn {meta['zenattn']}. "
             f"Ceilings measured in the same run: bf16 matmul {ceil['bf16_matmul_tflops']:.0f} TFLOP/s, "
             f"copy {ceil['copy_gbps']:.0f} GB/s.", "",
             "| op | mode | causal | provider | status | median ms (p20-p80) | TFLOP/s or GB/s | of ceiling | max err |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "failed":
            lines.append(f"| {r['op']} | {r['mode']} | {r.get('causal', '')} | {r['provider']} | failed | | | | {r['error']} |")
            continue
        rate = f"{r['tflops']:.0f} TFLOP/s" if "tflops" in r else f"{r['gbps']:.0f} GB/s"
        frac = r.get("frac_of_matmul", r.get("frac_of_copy"))
        med, lo, hi = r["ms"]
        lines.append(f"| {r['op']} | {r['mode']} | {r.get('causal', '')} | {r['provider']} | {r['status']} | "
                     f"{med:.3f} ({lo:.3f}-{hi:.3f}) | {rate} | {frac:.0%} | {r['error']:.2e} |")
    lines += ["", "Speed-up of zenattn over the fastest other provider (its time / ours; > 1: zenattn is faster):", ""]
    groups = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["op"], r["mode"], r.get("causal")), {})[r["provider"]] = r["ms"][0]
    for (op, mode, causal), times in groups.items():
        ours = times.pop("zenattn triton", None)
        if ours is None or not times:
            continue
        best_name = min(times, key=times.get)
        lines.append(f"- {op} {mode}{' causal' if causal else ''}: {times[best_name] / ours:.2f}x vs {best_name}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--tag", default="gpu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    meta = dict(device=torch.cuda.get_device_name(), date=datetime.date.today().isoformat(), torch=torch.__version__,
                cuda=torch.version.cuda, triton=triton.__version__, zenattn=zenattn.__version__,
                python=platform.python_version())
    ceil = ceilings()
    print(f"ceilings: {ceil}", flush=True)
    rows: list = []
    bench_attention(ceil, rows)
    bench_norms(ceil, rows)
    text = summary(meta, ceil, rows)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"gpu-{meta['date']}-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, ceilings=ceil, rows=rows), indent=1))
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
