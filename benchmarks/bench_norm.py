"""LayerNorm / RMSNorm: zenattn vs torch, side by side in one run, on the CPU (or the GPU if present).

    python benchmarks/bench_norm.py                 # the default shapes, writes bench-out/
    python benchmarks/bench_norm.py --quick         # fewer repeats (a smoke run)

For each case it prints the median time and 20/80 percentiles of each provider, the speed-up of
zenattn over torch, and the effective bandwidth as a fraction of two ceilings measured first in
the same run:
  copy       copying into an existing buffer (``dst.copy_(src)``): the streaming limit;
  alloc+copy allocating a fresh output then copying (``src.clone()``): what any out-of-place op
             pays, including the first-touch page faults of new memory.
Bytes moved (DESIGN.md section 5): forward reads x and writes y (weights once); forward+backward
adds reading x and dy and writing dx. Before timing, each provider's output is checked against
the float64 reference: a wrong provider is reported as wrong, not fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import zenattn
# Providers take turns in shuffled blocks of 5 calls (zenattn.bench.measure).
from zenattn.bench import cpu_name
from zenattn.bench.measure import time_side_by_side

RESULTS = Path(__file__).resolve().parent.parent / "bench-out"  # committed runs go to benchmarks/results/
SHAPES = [(4096, 1024), (8192, 4096)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Targets for the CPU (issue #2): (op, mode, dtype) -> minimum speed-up over torch.
TARGETS = {
    ("layer_norm", "fwd", "fp32"): 1.0, ("layer_norm", "fwd", "bf16"): 1.0,
    ("layer_norm", "fwd+bwd", "fp32"): 1.2, ("layer_norm", "fwd+bwd", "bf16"): 1.2,
    ("rms_norm", "fwd+bwd", "fp32"): 2.5, ("rms_norm", "fwd+bwd", "bf16"): 5.0,
}
FWD_CEILING_TARGET = 0.90  # LayerNorm forward vs the alloc+copy ceiling
# The correctness rule of DESIGN.md section 4 (tests/parity.py): zenattn's error vs the float64
# reference may be at most 2x torch's own same-dtype error plus this floor.
ATOL_FLOOR = {"fp32": 2e-6, "bf16": 1.6e-2}


def measure(fn, device, warmup: int, reps: int) -> dict:
    return time_side_by_side({"fn": fn}, device, reps=reps, warmup=warmup)["fn"]


def ceilings(device, warmup: int, reps: int) -> dict:
    """Copy bandwidths (GB/s, read + write bytes) on a 256 MiB buffer."""
    src = torch.randn(64 * 1024 * 1024, device=device)
    dst = torch.empty_like(src)
    nbytes = 2 * src.numel() * src.element_size()
    copy = measure(lambda: dst.copy_(src), device, warmup, reps)["median"]
    alloc = measure(lambda: src.clone(), device, warmup, reps)["median"]
    return {"copy": nbytes / copy / 1e9, "alloc+copy": nbytes / alloc / 1e9}


def make_case(op: str, mode: str, rows: int, hidden: int, dtype, device):
    torch.manual_seed(0)
    x = torch.randn(rows, hidden, device=device, dtype=dtype, requires_grad=mode != "fwd")
    w = torch.randn(hidden, device=device, dtype=dtype, requires_grad=mode != "fwd")
    b = torch.randn(hidden, device=device, dtype=dtype, requires_grad=mode != "fwd")
    dy = torch.randn(rows, hidden, device=device, dtype=dtype)
    if op == "layer_norm":
        providers = {
            "torch": lambda: F.layer_norm(x, (hidden,), w, b),
            "zenattn": lambda: zenattn.layer_norm(x, (hidden,), w, b),
        }
        params = (x, w, b)
        ref = lambda: zenattn.reference.layer_norm_ref(x.double(), (hidden,), w.double(), b.double())
    else:
        providers = {
            "torch": lambda: F.rms_norm(x, (hidden,), w, 1e-6),
            "zenattn": lambda: zenattn.rms_norm(x, (hidden,), w, 1e-6),
        }
        params = (x, w)
        ref = lambda: zenattn.reference.rms_norm_ref(x.double(), (hidden,), w.double(), 1e-6)
    esize = x.element_size()
    io = rows * hidden * esize
    nbytes = 2 * io + len(params[1:]) * hidden * esize
    if mode == "fwd":
        runs = {name: (lambda f=f: f()) for name, f in providers.items()}
    else:
        nbytes += 3 * io + len(params[1:]) * hidden * esize

        def fwd_bwd(f):
            return torch.autograd.grad(f(), params, dy)

        runs = {name: (lambda f=f: fwd_bwd(f)) for name, f in providers.items()}
    with torch.no_grad():
        expected = ref()
        errors = {name: (f().double() - expected).abs().max().item() for name, f in providers.items()}
    return runs, nbytes, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON/markdown results")
    ap.add_argument("--tag", default=None, help="file name stem (default: norm-<device>-<date>)")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    warmup, reps = (2, 5) if args.quick else (5, 45)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else
        cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "zenattn": zenattn.__version__,
        "cpu_isa": zenattn.info()["extension"].get("cpu_isa"),
        "python": sys.version.split()[0],
    }
    console.print(f"[bold]zenattn norm benchmark[/] on {meta['device']}, {meta['threads']} threads, "
                  f"torch {meta['torch']}, kernels {meta['cpu_isa']}")
    ceil = ceilings(device, warmup, reps)
    console.print(f"ceilings: copy {ceil['copy']:.1f} GB/s, alloc+copy {ceil['alloc+copy']:.1f} GB/s")

    table = Table(title="zenattn vs torch (median ms [p20-p80]; GB/s as % of ceilings)")
    for col in ("op", "mode", "shape", "dtype", "torch ms", "zenattn ms", "speed-up", "target",
                "zen GB/s", "% copy", "% alloc+copy", "max err zen/torch"):
        table.add_column(col, justify="right")
    rows_out = []
    for op in ("layer_norm", "rms_norm"):
        for mode in ("fwd", "fwd+bwd"):
            for (rows, hidden) in SHAPES:
                for dname, dtype in DTYPES.items():
                    runs, nbytes, errors = make_case(op, mode, rows, hidden, dtype, device)
                    stats = time_side_by_side(runs, device, reps=reps, warmup=warmup)
                    t_torch, t_zen = stats["torch"]["median"], stats["zenattn"]["median"]
                    speedup = t_torch / t_zen
                    gbs = nbytes / t_zen / 1e9
                    target = TARGETS.get((op, mode, dname))
                    row = dict(op=op, mode=mode, rows=rows, hidden=hidden, dtype=dname,
                               bytes=nbytes, torch=stats["torch"], zenattn=stats["zenattn"],
                               speedup=speedup, target_speedup=target, zen_gbs=gbs,
                               frac_copy=gbs / ceil["copy"], frac_alloc_copy=gbs / ceil["alloc+copy"],
                               max_err=errors)
                    rows_out.append(row)
                    correct = errors["zenattn"] <= 2 * errors["torch"] + ATOL_FLOOR[dname]
                    row["correct"] = correct
                    ok = "" if target is None else ("[green]" if speedup >= target else "[red]")
                    if not correct:
                        ok = "[red]WRONG "
                    ceiling_cell = f"{100*row['frac_alloc_copy']:.0f}%"
                    if (op, mode) == ("layer_norm", "fwd"):  # the ceiling target
                        good = row["frac_alloc_copy"] >= FWD_CEILING_TARGET
                        ceiling_cell = ("[green]" if good else "[red]") + ceiling_cell
                    table.add_row(
                        op, mode, f"{rows}x{hidden}", dname,
                        f"{t_torch*1e3:.2f} [{stats['torch']['p20']*1e3:.2f}-{stats['torch']['p80']*1e3:.2f}]",
                        f"{t_zen*1e3:.2f} [{stats['zenattn']['p20']*1e3:.2f}-{stats['zenattn']['p80']*1e3:.2f}]",
                        f"{ok}{speedup:.2f}x", "-" if target is None else f">={target}x",
                        f"{gbs:.1f}", f"{100*row['frac_copy']:.0f}%", ceiling_cell,
                        f"{errors['zenattn']:.1e}/{errors['torch']:.1e}")
                    console.print(f"  done {op} {mode} {rows}x{hidden} {dname}: {speedup:.2f}x", highlight=False)
    console.print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.tag or f"norm-{device.type}-{meta['date'][:10]}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "ceilings_gbs": ceil,
                                                      "results": rows_out}, indent=2))
    md = [f"# zenattn norm benchmark ({meta['date']})", "",
          f"Device: {meta['device']}, {meta['threads']} threads; torch {meta['torch']}; "
          f"zenattn {meta['zenattn']} ({meta['cpu_isa']} kernels); Python {meta['python']}.",
          f"Ceilings measured in the same run: copy {ceil['copy']:.1f} GB/s, "
          f"alloc+copy {ceil['alloc+copy']:.1f} GB/s. Median of {reps} timed calls per provider (turns of 5, shuffled) after {warmup} warm-up.", "",
          "| op | mode | shape | dtype | torch ms | zenattn ms | speed-up | target | zenattn GB/s | % copy | % alloc+copy |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows_out:
        md.append(f"| {r['op']} | {r['mode']} | {r['rows']}x{r['hidden']} | {r['dtype']} | "
                  f"{r['torch']['median']*1e3:.2f} | {r['zenattn']['median']*1e3:.2f} | "
                  f"{r['speedup']:.2f}x | {'-' if r['target_speedup'] is None else '>= %.1fx' % r['target_speedup']} | "
                  f"{r['zen_gbs']:.1f} | {100*r['frac_copy']:.0f}% | {100*r['frac_alloc_copy']:.0f}% |")
    (args.out / f"{stem}.md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {args.out / (stem + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
