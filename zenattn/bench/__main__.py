"""zenattn-bench: every zenattn backend against PyTorch and its peers, on whatever device is present.

With no arguments it runs the default sweep (attention, LayerNorm, RMSNorm and the reference
model's training step; a few minutes on a 2-core CPU), prints a table and writes results to
bench-out/. Examples:

    zenattn-bench --ops attention --modes fwd+bwd --dtypes bf16 --seq-lens 1024 4096 --head-dims 128
    zenattn-bench --ops layer_norm rms_norm --hidden 1024 4096 16384 --providers zenattn-cpu torch-eager torch-compile
    zenattn-bench --sweep gpu --out benchmarks/results --tag h200
    zenattn-bench --list-providers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from zenattn import bench
from zenattn.bench.cases import DTYPES, MODES, OPS, SWEEPS


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _window(text: str):
    return None if text.lower() == "none" else int(text)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zenattn-bench", description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", choices=list(SWEEPS), default="default",
                    help="the base set of cases (default: the short default sweep)")
    ap.add_argument("--ops", nargs="+", choices=OPS, help="ops to run (default: all of the sweep's)")
    ap.add_argument("--providers", nargs="+", metavar="NAME",
                    help="run only these providers (opt-in ones included); see --list-providers")
    ap.add_argument("--list-providers", action="store_true", help="list providers and whether they run here")
    sweeps = ap.add_argument_group("case parameters (each replaces the sweep's list)")
    sweeps.add_argument("--modes", nargs="+", choices=MODES)
    sweeps.add_argument("--dtypes", nargs="+", choices=list(DTYPES))
    sweeps.add_argument("--seq-lens", nargs="+", type=int, dest="seq_len", metavar="N")
    sweeps.add_argument("--head-dims", nargs="+", type=int, dest="head_dim", metavar="D")
    sweeps.add_argument("--batch", nargs="+", type=int, metavar="B")
    sweeps.add_argument("--heads", nargs="+", type=int, metavar="H")
    sweeps.add_argument("--kv-heads", nargs="+", type=int, dest="kv_heads", metavar="HKV", help="GQA")
    sweeps.add_argument("--causal", nargs="+", type=_bool, metavar="BOOL")
    sweeps.add_argument("--window", nargs="+", type=_window, metavar="W|none", help="local attention window")
    sweeps.add_argument("--hidden", nargs="+", type=int, metavar="E", help="norm hidden sizes")
    sweeps.add_argument("--rows", nargs="+", type=int, metavar="M", help="norm rows")
    sweeps.add_argument("--residual", nargs="+", type=_bool, metavar="BOOL",
                        help="norms: with the fused residual add (normalize x + r)")
    sweeps.add_argument("--presets", nargs="+", dest="preset", metavar="NAME", help="model presets")
    run = ap.add_argument_group("measurement and output")
    run.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    run.add_argument("--budget", type=float, default=None,
                     help="seconds of timed calls per case, all providers together (default 1; gpu sweep 0.5)")
    run.add_argument("--min-reps", type=int, default=3)
    run.add_argument("--max-reps", type=int, default=50)
    run.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                     help="peak memory of one call per provider")
    run.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    run.add_argument("--out", type=Path, default=Path("bench-out"), help="results folder (default bench-out/)")
    run.add_argument("--tag", default=None, help="suffix of this run's file names")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415
    except ImportError:
        sys.exit("zenattn-bench needs rich: pip install 'zenattn[bench]'")
    console = Console(width=max(160, Console().width))
    try:
        device = bench.default_device() if args.device is None else torch.device(args.device)
    except RuntimeError as e:
        sys.exit(f"zenattn-bench: --device {args.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("zenattn-bench: --device cuda, but torch sees no CUDA device here")
    if device.type not in ("cpu", "cuda"):
        sys.exit(f"zenattn-bench: --device must be cpu or cuda, got {args.device!r}")
    if args.list_providers:
        return _list_providers(console, device)
    overrides = {}
    for key, attr in (("mode", "modes"), ("dtype", "dtypes"), ("seq_len", "seq_len"), ("head_dim", "head_dim"),
                      ("batch", "batch"), ("heads", "heads"), ("kv_heads", "kv_heads"), ("causal", "causal"),
                      ("window", "window"), ("hidden", "hidden"), ("rows", "rows"), ("residual", "residual"),
                      ("preset", "preset")):
        if getattr(args, attr) is not None:
            overrides[key] = getattr(args, attr)
    try:
        cases = bench.sweep(args.sweep, args.ops, overrides)
    except ValueError as e:
        sys.exit(f"zenattn-bench: {e}")
    budget = args.budget if args.budget is not None else (0.5 if args.sweep == "gpu" else 1.0)
    settings = bench.Settings(budget_s=budget, min_reps=args.min_reps, max_reps=args.max_reps, memory=args.memory)
    env = bench.environment(device)
    console.print(f"[bold]zenattn-bench[/] {len(cases)} cases on {env['device']}, {env['threads']} threads; "
                  f"torch {env['torch']}, zenattn {env['zenattn']}, triton {env['triton'] or 'absent'}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("ceilings", total=len(cases))

        def progress(i, total, case):
            bar.update(task, completed=i, description=case.label() if case is not None else "done")
        try:
            result = bench.run(cases, device=device, providers=args.providers, settings=settings, out=args.out,
                               tag=args.tag, plots=args.plots, sweep_name=args.sweep, progress=progress)
        except ValueError as e:
            sys.exit(f"zenattn-bench: {e}")
    mm = ", ".join(f"{d} {v / 1e9:,.0f} GFLOP/s" for d, v in result["ceilings"]["matmul"].items())
    console.print(f"ceilings: matmul {mm}; copy {result['ceilings']['copy'] / 1e9:,.1f} GB/s")
    console.print(bench.report.rich_table(result["rows"], "zenattn-bench (checked against float64 first; "
                                          "speed-up = fastest other provider's median / zenattn's)"))
    for name, whys in sorted(result["skipped"].items()):
        for why in whys:
            console.print(f"  not run: {name}: {why}", highlight=False)
    bad = [r for r in result["rows"] if r["status"] != "ok"]
    console.print(f"{len(result['rows'])} results, {len(bad)} wrong or failed; {result['meta']['wall_s']:.0f} s. "
                  f"Wrote {', '.join(str(f) for f in result['files'])}", highlight=False)
    return 0


def _list_providers(console, device) -> int:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"providers on {device}")
    for col in ("name", "op", "version", "here"):
        table.add_column(col)
    probes = {"attention": bench.Case("attention", "fwd", "fp32"), "norm": bench.Case("layer_norm", "fwd", "fp32"),
              "model": bench.Case("model", "fwd+bwd", "fp32")}
    for p in bench.all_providers():
        why = p.why_not(probes[p.op], device)
        opt = p.opt_in(device)
        here = f"no: {why}" if why else (f"on request: {opt}" if opt else "yes")
        table.add_row(p.name, p.op, p.version, here)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
