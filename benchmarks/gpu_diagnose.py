"""Follow-ups of the first GPU run (benchmarks/results/gpu-h200-2026-11-29.md), for a lent GPU:

1. ``dv``: the Triton attention output (autotuned) when the value head dim differs from the query/key
   one, with both padded to the wider block (``head_dim_blocks`` on CUDA); max error against float64.
   ``dv-separate`` also runs the value block padded only to its own head dim, the first run's setting:
   wrong outputs there with the fixed configuration, and an illegal memory access while autotuning in
   the second run (so it goes last: it leaves the CUDA context unusable).
2. ``profile``: where the time of a LayerNorm forward+backward (triton, cuda, torch) and of the
   reference model's training step (zenattn and torch modules) goes: the CUDA kernels by total
   time (torch.profiler), and the wall time per call beside the GPU time (host overhead).
3. ``host``: where the host time of a Triton LayerNorm / attention forward+backward goes (about 1 ms
   per LayerNorm forward+backward in the second run, for 0.08 ms of GPU work): cProfile, by own time.

    python benchmarks/gpu_diagnose.py [dv] [profile] [host] [dv-separate]    # run in the order given
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import zenattn
import zenattn.triton.attention as tri_attn
from zenattn.reference import attention_ref


def diagnose_dv(separate_too: bool = False) -> None:
    shapes = {"D 40 Dv 24": (40, 24), "D 40 Dv 32": (40, 32), "D 64 Dv 24": (64, 24), "D 40 Dv 40": (40, 40)}
    original = tri_attn.head_dim_blocks
    separate = lambda d, dv, device: (tri_attn._head_dim_block(d), tri_attn._head_dim_block(dv))  # noqa: E731
    for dtype in (torch.bfloat16,):
        for name, (d, dv) in shapes.items():
            g = torch.Generator(device="cpu").manual_seed(0)
            q = torch.randn(2, 3, 67, d, generator=g).to("cuda", dtype)
            k = torch.randn(2, 3, 89, d, generator=g).to("cuda", dtype)
            v = torch.randn(2, 3, 89, dv, generator=g).to("cuda", dtype)
            ref = attention_ref(q.double(), k.double(), v.double(), causal=True)
            errors = {}
            variants = [("equal blocks", original)] + ([("separate blocks", separate)] if separate_too else [])
            for label, blocks in variants:
                tri_attn.head_dim_blocks = blocks
                try:
                    out = zenattn.attention(q, k, v, causal=True, backend="triton")
                    errors[label] = (out.double() - ref).abs().max().item()
                finally:
                    tri_attn.head_dim_blocks = original
            print(f"dv {str(dtype)[6:]:8s} {name}: " + ", ".join(f"{k} max err {v:.2e}" for k, v in errors.items()))


def _profile(label: str, fn, iters: int = 10) -> None:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / iters
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    gpu = sum(e.self_device_time_total for e in events) / iters / 1e3
    print(f"\n== {label}: wall {wall * 1e3:.3f} ms per call, GPU kernels {gpu:.3f} ms per call")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:8]:
        print(f"   {e.self_device_time_total / iters / 1e3:8.3f} ms  x{e.count // iters:<3d} {e.key[:110]}")


def diagnose_profile() -> None:
    for n in (1024, 8192):
        x = torch.randn(16384, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(n, device="cuda") * 0.5 + 1).to(torch.bfloat16).requires_grad_(True)
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(x)
        for backend in ("triton", "cuda", "torch-eager"):
            if backend == "torch-eager":
                def fn():
                    y = torch.nn.functional.layer_norm(x, (n,), w, b)
                    torch.autograd.grad(y, (x, w, b), dy)
            else:
                def fn(backend=backend):
                    y = zenattn.layer_norm(x, (n,), w, b, backend=backend)
                    torch.autograd.grad(y, (x, w, b), dy)
            _profile(f"layer_norm fwd+bwd bf16 16384 x {n} {backend}", fn)

    from zenattn.bench.cases import MODEL_PRESETS
    from zenattn.bench.runner import training_step
    from zenattn.models.transformer import Transformer, TransformerConfig
    fields, batch, seq_len = MODEL_PRESETS["gpt2-small"]
    tokens = torch.randint(0, 256, (2, batch, seq_len), device="cuda")
    for kernels in ("zenattn", "torch"):
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(**fields, attn=kernels, norm_impl=kernels)).cuda()
        _profile(f"model step gpt2-small bf16 autocast, {kernels} modules",
                 training_step(model, tokens[0], tokens[1], torch.bfloat16), iters=5)


def diagnose_host() -> None:
    import cProfile
    import io
    import pstats

    x = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.zeros(1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = (torch.randn(2, 8, 512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def norm():
        y = zenattn.layer_norm(x, (1024,), w, b, backend="triton")
        torch.autograd.grad(y, (x, w, b), y)

    def attention():
        o = zenattn.attention(q, k, v, causal=True, backend="triton")
        torch.autograd.grad(o, (q, k, v), o)

    for label, fn in (("triton layer_norm fwd+bwd", norm), ("triton attention fwd+bwd", attention)):
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        print(f"\n== host time of 50 x {label} (cProfile, by own time)\n{text.getvalue()}")


if __name__ == "__main__":
    print(zenattn.info()["backends"])
    steps = {"dv": diagnose_dv, "profile": diagnose_profile, "host": diagnose_host,
             "dv-separate": lambda: diagnose_dv(separate_too=True)}
    for name in sys.argv[1:] or ["dv", "profile"]:   # in the order given
        steps[name]()
