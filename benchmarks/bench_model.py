"""Training step of the reference Transformer on zenattn's modules vs torch's, side by side in one run.

    python benchmarks/bench_model.py                                # CPU or GPU, whatever is present
    python benchmarks/bench_model.py --out benchmarks/results --tag run-a

For each preset (``tiny``: the trainer's default model; ``small``: E=256, 4 layers, 8 heads, L=256)
and dtype (fp32; bf16 under autocast), the same model with the same weights is built twice: on
zenattn's attention and norms, and on torch's SDPA and norms (``attn="torch", norm_impl="torch"``).
Each step is forward, cross-entropy, backward, gradient clipping and AdamW, on random tokens. The
two take turns for ``--reps`` steps after ``--warmup`` steps each; reported: the median step time
with its 20/80 percentiles, tokens/s, model FLOPs utilisation (``flops_per_token`` of
zenattn/models/transformer.py x tokens/s, over the matmul rate measured first in the same run:
``torch.mm`` of 2048^2 on the CPU, 8192^2 on a GPU, in the step's dtype), and the speed-up of
zenattn (torch's median / zenattn's). Writes JSON + markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

import torch

import zenattn
from zenattn.bench import cpu_name, measure
from zenattn.bench.runner import training_step
from zenattn.models.transformer import Transformer, TransformerConfig, flops_per_token

PRESETS = {
    "tiny": (dict(dim=128, n_layers=2, n_heads=4, max_len=256), 16, 128),     # (model, batch, seq_len)
    "small": (dict(dim=256, n_layers=4, n_heads=8, max_len=512), 8, 256),
}


def make_step(model: Transformer, batch: int, seq_len: int, device: torch.device, amp):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, seq_len), generator=g).to(device)
    y = torch.randint(0, 256, (batch, seq_len), generator=g).to(device)
    return training_step(model, x, y, amp)


def bench_case(preset: str, dtype_name: str, device: torch.device, warmup: int, reps: int, rate: float) -> dict:
    model_opts, batch, seq_len = PRESETS[preset]
    amp = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    cfg = TransformerConfig(**model_opts)
    models = {"zenattn": Transformer(cfg).to(device)}
    models["torch"] = Transformer(dataclasses.replace(cfg, attn="torch", norm_impl="torch")).to(device)
    models["torch"].load_state_dict(models["zenattn"].state_dict())
    steps = {name: make_step(m, batch, seq_len, device, amp) for name, m in models.items()}
    first = {name: step().item() for name, step in steps.items()}   # the same first loss: same model
    for _ in range(warmup - 1):
        for step in steps.values():
            step()
    # Take turns one step at a time, in a shuffled order per round (zenattn.bench.measure).
    stats = measure.time_side_by_side(steps, device, reps=reps, warmup=0, block=1)
    tokens = batch * seq_len
    row = dict(preset=preset, dtype=dtype_name, batch=batch, seq_len=seq_len, parameters=sum(p.numel() for p in
               models["zenattn"].parameters()), first_loss=first, matmul_flops=rate)
    for name, st in stats.items():
        med = st["median"]
        row[name] = dict(median_s=med, p20_s=st["p20"], p80_s=st["p80"], tokens_per_s=tokens / med,
                         mfu=flops_per_token(cfg, seq_len) * tokens / med / rate)
    row["speedup"] = row["torch"]["median_s"] / row["zenattn"]["median_s"]
    return row


def markdown(meta: dict, rows: list) -> str:
    lines = [f"# Reference Transformer training step: zenattn modules vs torch modules ({meta['device']}, {meta['date']})",
             "", f"torch {meta['torch']}, zenattn {meta['zenattn']}, {meta['threads']} threads. Speed-up = torch's "
             "median step time / zenattn's (> 1: zenattn is faster). MFU against the matmul rate measured in "
             "the same run in the step's dtype.", "",
             "| preset | dtype | B x L | zenattn step ms (p20-p80) | torch step ms (p20-p80) | zenattn tok/s | "
             "torch tok/s | zenattn MFU | torch MFU | speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        z, t = r["zenattn"], r["torch"]
        lines.append(f"| {r['preset']} | {r['dtype']} | {r['batch']} x {r['seq_len']} | "
                     f"{z['median_s'] * 1e3:.1f} ({z['p20_s'] * 1e3:.1f}-{z['p80_s'] * 1e3:.1f}) | "
                     f"{t['median_s'] * 1e3:.1f} ({t['p20_s'] * 1e3:.1f}-{t['p80_s'] * 1e3:.1f}) | "
                     f"{z['tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | {z['mfu']:.1%} | {t['mfu']:.1%} | "
                     f"**{r['speedup']:.2f}x** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    device = torch.device(args.device)
    meta = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
                date=datetime.date.today().isoformat(), torch=torch.__version__, zenattn=zenattn.__version__,
                threads=torch.get_num_threads())
    rows = []
    for dtype_name in args.dtypes.split(","):
        rate = measure.matmul_rate(device, {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name])
        for preset in args.presets.split(","):
            row = bench_case(preset, dtype_name, device, args.warmup, args.reps, rate)
            rows.append(row)
            print(f"{preset} {dtype_name}: zenattn {row['zenattn']['median_s'] * 1e3:.1f} ms, torch "
                  f"{row['torch']['median_s'] * 1e3:.1f} ms, speed-up {row['speedup']:.2f}x", flush=True)
    text = markdown(meta, rows)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"model-{device.type}-{meta['date']}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
