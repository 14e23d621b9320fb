"""Attention: zenattn's CPU kernels vs torch SDPA, side by side in one run, on the CPU.

    python benchmarks/bench_attention.py                 # the default sweep (7-8 min), writes bench-out/
    python benchmarks/bench_attention.py --quick         # N in {512, 1024}, few repeats, no memory (under a minute)
    python benchmarks/bench_attention.py --n 4096 --d 128 --dtype bf16 --mode fwd+bwd --causal false
    python benchmarks/bench_attention.py --out benchmarks/results --tag NAME   # a run to commit

Providers: ``zenattn.scaled_dot_product_attention(q, k, v, is_causal=..., backend="cpu")`` and
``torch.nn.functional.scaled_dot_product_attention`` (on the CPU a flash kernel too), for B=1, H=8,
N in {512, 1024, 2048, 4096}, D in {64, 128}, causal and not, fp32 and bf16, in two modes:
  fwd      the forward alone (inputs without requires_grad);
  fwd+bwd  forward then backward with a fixed upstream gradient (``torch.autograd.grad``), the
           whole step timed, q/k/v with requires_grad.
For each case it prints the median time and 20/80 percentiles of each provider, the GFLOP/s of each,
the speed-up of zenattn over torch (torch time / zenattn time, > 1 means zenattn is faster) with the
20/80 percentiles of the paired per-turn ratios (how steady it was), and each provider's GFLOP/s as a
fraction of the machine's matmul rate, measured first in the same run (``torch.mm`` of 2048x2048
fp32 for fp32 cases, bf16 for bf16 cases; measured again at the end, to show drift).
FLOPs (DESIGN.md section 5): 4*B*H*N*N*D, x0.5 causal, x3.5 for fwd+bwd (forward 1 + backward 2.5).
Providers take turns, shuffled, so machine noise hits them alike; each case is time-bounded
(``--budget`` seconds for both providers together, between ``MIN_REPS`` and ``MAX_REPS`` calls each).
These 2-core machines are shared: the "other load" column gives the cores that other processes (or
the hypervisor) took while each case was timed, from /proc/stat minus this process's own CPU time;
cases above ``BUSY`` are flagged (yellow), and the matmul rate is measured again at the end.

Before timing, every provider's output (and, for fwd+bwd, dq/dk/dv) is checked against a float64
reference (``zenattn.reference.attention_ref`` on the same low-precision inputs, heads 0 and H-1:
heads are independent, so that is exact for those heads and keeps the N x N float64 reference
small). zenattn must meet the rule of DESIGN.md section 4 (error <= 2x torch's own error, 3x for
gradients, plus a per-dtype floor); torch must stay within a loose sanity bound. A provider that
fails is marked WRONG, not fast. That checking call is also the warm-up.

Memory (``--memory``, on by default, off under ``--quick`` unless asked): the peak memory of one
forward+backward at N in {4096, 8192, 16384} (B=1, H=8, D=64, fp32, non-causal), per provider.
Method: each measurement runs in a fresh Python subprocess, which warms the kernels up on a tiny
problem (N=256, so lazy initialization and the thread pool are not counted), allocates q, k, v and
the upstream gradient, resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``, so
VmHWM = VmRSS = the baseline), runs the step once and reads VmHWM from /proc/self/status. Reported:
peak resident set size minus the baseline, which includes the step's own outputs (o, dq, dk, dv:
4*H*N*D*4 bytes); and peak(N)/peak(N/2), about 2 for memory linear in N, about 4 for an implementation
that materializes the N x N scores (1 GiB per head in fp32 at N=16384).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# The shared timing helpers and per-dtype floors of the house benchmark (a sibling script, on
# sys.path when this file is run as a script).
from bench_norm import ATOL_FLOOR, DTYPES, RESULTS, measure

import zenattn
from zenattn.bench import cpu_name
from zenattn.bench.measure import summarize, time_side_by_side

B, H = 1, 8
SEQ_LENS = [512, 1024, 2048, 4096]
QUICK_SEQ_LENS = [512, 1024]
HEAD_DIMS = [64, 128]
MODES = ["fwd", "fwd+bwd"]
MEMORY_SEQ_LENS = [4096, 8192, 16384]
MEMORY_HEAD_DIM = 64
# Targets for the CPU (the attention benchmark issue): (mode, dtype) -> minimum speed-up over torch.
TARGETS = {("fwd", "fp32"): 1.0, ("fwd+bwd", "fp32"): 1.0, ("fwd+bwd", "bf16"): 2.0}
# The correctness rule of DESIGN.md section 4 (tests/parity.py): outputs 2x, gradients 3x torch's
# own same-dtype error, plus the per-dtype floor ATOL_FLOOR.
FACTOR = {"out": 2.0, "dq": 3.0, "dk": 3.0, "dv": 3.0}
# torch cannot be judged by a rule relative to itself; this only catches a broken torch: its error
# relative to the reference's largest magnitude (seen here: about 1e-6 in fp32, 1e-2 in bf16).
TORCH_SANITY = {"fp32": 1e-4, "bf16": 0.1}
CHECK_HEADS = [0, H - 1]
BUSY = 0.1  # cores used by other processes during a case above which the table flags it
MIN_REPS, MAX_REPS = 3, 30
MM_SIZE = 2048
SLOW_MATMUL_S = 1.0

PROVIDERS = {
    "torch": lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    "zenattn": lambda q, k, v, causal: zenattn.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                            backend="cpu"),
}


def flops(n: int, d: int, causal: bool, mode: str) -> float:
    f = 4.0 * B * H * n * n * d
    return f * (0.5 if causal else 1.0) * (3.5 if mode == "fwd+bwd" else 1.0)


def matmul_rates(warmup: int, reps: int) -> dict:
    """GFLOP/s of torch.mm on MM_SIZE x MM_SIZE, per dtype: the ceiling attention is judged against."""
    rates = {}
    for dname, dtype in DTYPES.items():
        a = torch.randn(MM_SIZE, MM_SIZE).to(dtype)
        b = torch.randn(MM_SIZE, MM_SIZE).to(dtype)
        start = time.perf_counter()
        torch.mm(a, b)
        first = time.perf_counter() - start
        # A product this slow (bf16 on a CPU without bf16 instructions, where torch takes a scalar
        # fallback: 1.3 GFLOP/s on the AVX2 VM, 13 s a call) is timed by that first call alone.
        t = first if first > SLOW_MATMUL_S else measure(lambda a=a, b=b: torch.mm(a, b), torch.device("cpu"),
                                                         warmup, reps)["median"]
        rates[dname] = 2.0 * MM_SIZE**3 / t / 1e9
    return rates


def make_inputs(n: int, d: int, dtype) -> tuple:
    """q, k, v, dy of shape (B, H, N, D); the same values (up to rounding) for every dtype."""
    torch.manual_seed(0)
    return tuple(torch.randn(B, H, n, d).to(dtype) for _ in range(4))


def reference(q, k, v, dy, causal: bool, grads: bool) -> dict:
    """float64 out (and dq, dk, dv) for heads CHECK_HEADS, from the same low-precision inputs."""
    q64, k64, v64 = (t[:, CHECK_HEADS].double().requires_grad_(grads) for t in (q, k, v))
    out = zenattn.reference.attention_ref(q64, k64, v64, causal=causal)
    ref = {"out": out.detach()}
    if grads:
        ref.update(zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q64, k64, v64), dy[:, CHECK_HEADS].double())))
    return ref


def make_runs(q, k, v, dy, causal: bool, mode: str) -> dict:
    """name -> a no-argument call running one timed step, returning {"out", ["dq", "dk", "dv"]}."""
    if mode == "fwd":
        return {name: (lambda f=f: {"out": f(q, k, v, causal)}) for name, f in PROVIDERS.items()}
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))

    def fwd_bwd(f):
        out = f(qg, kg, vg, causal)
        return dict(zip(("out", "dq", "dk", "dv"), (out, *torch.autograd.grad(out, (qg, kg, vg), dy))))

    return {name: (lambda f=f: fwd_bwd(f)) for name, f in PROVIDERS.items()}


def check(runs: dict, ref: dict, dname: str) -> tuple[dict, dict, dict]:
    """Run each provider once (also the warm-up): its time (s), its max error per tensor, and
    whether it is correct (bool) with the tensors that failed."""
    seconds, errors = {}, {}
    for name, run in runs.items():
        t0 = time.perf_counter()
        got = run()
        seconds[name] = time.perf_counter() - t0
        errors[name] = {t: (got[t][:, CHECK_HEADS].double() - ref[t]).abs().max().item()
                        if torch.isfinite(got[t]).all() else float("inf") for t in got}
    failed = {
        "zenattn": [t for t, e in errors["zenattn"].items()
                    if not e <= FACTOR[t] * errors["torch"][t] + ATOL_FLOOR[dname]],
        "torch": [t for t, e in errors["torch"].items()
                  if not e <= TORCH_SANITY[dname] * ref[t].abs().max().item()],
    }
    return seconds, errors, failed


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has spent busy or stolen by the hypervisor, from /proc/stat;
    CPU seconds of this process, all threads). Their difference over a case, divided by its wall
    time, is the load of everything else: how many cores the providers did not have."""
    with open("/proc/stat") as fh:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fh.readline().split()[1:9])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def timed(runs: dict, budget: float, seconds: dict) -> tuple[dict, dict, int]:
    """Side-by-side stats per provider, the paired per-turn speed-up stats, and the calls each.

    The number of calls fits ``budget`` (from the checking call's time), clamped to
    [MIN_REPS, MAX_REPS]; turns are blocks of up to 5 calls with at least about 4 rounds, so slow
    cases (seconds per call) still alternate. Each call's own time is also logged, to pair the
    i-th torch call with the i-th zenattn call (same round) for the spread of the ratio."""
    reps = max(MIN_REPS, min(MAX_REPS, int(budget / sum(seconds.values()))))
    block = max(1, min(5, reps // 4))
    logs = {name: [] for name in runs}

    def logged(name, run):
        def call():
            t0 = time.perf_counter()
            run()
            logs[name].append(time.perf_counter() - t0)
        return call

    stats = time_side_by_side({n: logged(n, r) for n, r in runs.items()}, torch.device("cpu"),
                              reps=reps, warmup=0, block=block)
    ratio = summarize([t / z for t, z in zip(logs["torch"], logs["zenattn"])])
    return stats, ratio, len(logs["zenattn"])


# The memory child: argv[1] is JSON {provider, n, d, h, threads}; prints one JSON line.
MEMORY_CHILD = r"""
import json, sys, time
import torch, torch.nn.functional as F
import zenattn
p = json.loads(sys.argv[1])
torch.set_num_threads(p["threads"])
if p["provider"] == "zenattn":
    f = lambda q, k, v: zenattn.scaled_dot_product_attention(q, k, v, backend="cpu")
else:
    f = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)

def inputs(n):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, p["h"], n, p["d"], requires_grad=True) for _ in range(3))
    return q, k, v, torch.randn(1, p["h"], n, p["d"])

def step(q, k, v, dy):
    out = f(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), dy))

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

step(*inputs(256))                      # warm-up: lazy init, thread pool, kernel loading
q, k, v, dy = inputs(p["n"])
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")                       # reset the peak-RSS mark: VmHWM = VmRSS now
base, base_hwm = status("VmRSS"), status("VmHWM")
t0 = time.perf_counter()
res = step(q, k, v, dy)
seconds = time.perf_counter() - t0
peak = status("VmHWM")
print(json.dumps({"base": base, "base_hwm": base_hwm, "peak": peak, "seconds": seconds}))
"""


def memory_section(threads: int, seq_lens: list, console) -> list:
    root = Path(__file__).resolve().parent.parent
    rows = []
    for provider in PROVIDERS:
        for n in seq_lens:
            params = {"provider": provider, "n": n, "d": MEMORY_HEAD_DIM, "h": H, "threads": threads}
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(params)], cwd=root,
                                  capture_output=True, text=True, check=False)
            row = dict(provider=provider, n=n, d=MEMORY_HEAD_DIM, wall_s=time.perf_counter() - t0,
                       outputs_bytes=4 * B * H * n * MEMORY_HEAD_DIM * 4)
            if proc.returncode != 0:
                row["error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            else:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                row["increase"] = row["peak"] - row["base"]
            rows.append(row)
            console.print(f"  memory {provider} N={n}: " + (f"+{row['increase'] / 2**20:.0f} MiB"
                          if "increase" in row else f"failed: {row['error']}") +
                          f" ({row['wall_s']:.0f} s)", highlight=False)
    for row in rows:  # peak(N) / peak(N/2), same provider
        prev = [r for r in rows if r["provider"] == row["provider"] and r["n"] * 2 == row["n"]]
        if prev and "increase" in row and "increase" in prev[0]:
            row["growth"] = row["increase"] / prev[0]["increase"]
    return rows


def fmt_ms(s: dict) -> str:
    return f"{s['median']*1e3:.1f} [{s['p20']*1e3:.1f}-{s['p80']*1e3:.1f}]"


def markdown(meta: dict, mm: dict, mm_end: dict, rows: list, memory: list) -> str:
    """The results as a markdown page (the committed form of a run)."""
    judged = [r for r in rows if r["target_speedup"] is not None]
    busy = [r for r in rows if r["other_load"] > BUSY]
    md = [f"# zenattn attention benchmark ({meta['date']})", "",
          (f"Device: {meta['device']}, {meta['threads']} threads; torch {meta['torch']}; "
           f"zenattn {meta['zenattn']} ({meta['cpu_isa']} kernels, built {meta['extension_mtime']}); "
           f"Python {meta['python']}."),
          (f"zenattn `scaled_dot_product_attention(backend=\"cpu\")` vs "
           f"`torch.nn.functional.scaled_dot_product_attention`, B={B}, H={H}. FLOPs 4*B*H*N*N*D, x0.5 causal, "
           f"x3.5 fwd+bwd. Matmul rate (torch.mm {MM_SIZE}x{MM_SIZE}) measured in the same run: "
           f"fp32 {mm['fp32']:.1f}, bf16 {mm['bf16']:.1f} GFLOP/s at the start, "
           f"{mm_end['fp32']:.1f} / {mm_end['bf16']:.1f} at the end. Median of the calls shown per provider "
           f"(shuffled turns, {meta['budget_s']:g} s per case, {MIN_REPS}-{MAX_REPS} calls), after one checked "
           f"warm-up call; speed-up = torch / zenattn, with the 20/80 percentiles of the paired per-turn ratios. "
           f"Other load: cores used by other processes (or stolen by the hypervisor) while the case was timed, "
           f"from /proc/stat; above {BUSY} the case's times are not to be trusted."), "",
          ("| mode | dtype | causal | N | D | torch ms | zenattn ms | torch GFLOP/s | zenattn GFLOP/s "
           "| speed-up [p20-p80] | target | torch % mm | zenattn % mm | calls | other load (cores) | correct |"),
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = ("-" if r["target_speedup"] is None else
                  f">= {r['target_speedup']:.1f}x {'PASS' if r['target_met'] else 'MISS'}")
        correct = ("yes" if not r["wrong"] else
                   "WRONG: " + "; ".join(f"{p} {','.join(f)}" for p, f in r["wrong"].items()))
        md.append(f"| {r['mode']} | {r['dtype']} | {'yes' if r['causal'] else 'no'} | {r['n']} | {r['d']} | "
                  f"{r['torch']['median']*1e3:.1f} | {r['zenattn']['median']*1e3:.1f} | "
                  f"{r['gflops']['torch']:.1f} | {r['gflops']['zenattn']:.1f} | "
                  f"{r['speedup']:.2f}x [{r['pair_ratio']['p20']:.2f}-{r['pair_ratio']['p80']:.2f}] | {target} | "
                  f"{100*r['frac_matmul']['torch']:.0f}% | {100*r['frac_matmul']['zenattn']:.0f}% | "
                  f"{r['reps']} | {r['other_load']:.2f} | {correct} |")
    md += ["", (f"Targets: {sum(r['target_met'] for r in judged)} of {len(judged)} cases PASS; wrong: "
                f"{sum(bool(r['wrong']) for r in rows)} of {len(rows)}; {len(busy)} cases timed with other load "
                f"above {BUSY} core (not to be trusted).")]
    if memory:
        md += ["", (f"Peak memory of one fwd+bwd (B={B}, H={H}, D={MEMORY_HEAD_DIM}, fp32, non-causal). Each in a "
                    "fresh subprocess: warm-up on N=256, inputs allocated, peak-RSS mark reset "
                    "(/proc/self/clear_refs), one step, then VmHWM minus the RSS before the step. Includes the "
                    "step's outputs o, dq, dk, dv."), "",
               ("| provider | N | peak increase (MiB) | o+dq+dk+dv (MiB) | growth vs N/2 "
                "| N x N fp32, all heads (GiB) |"),
               "|---|---|---|---|---|---|"]
        for r in memory:
            peak = f"{r['increase'] / 2**20:.0f}" if "increase" in r else r["error"]
            growth = f"{r['growth']:.2f}x" if "growth" in r else "-"
            md.append(f"| {r['provider']} | {r['n']} | {peak} | {r['outputs_bytes'] / 2**20:.0f} | {growth} | "
                      f"{B * H * r['n'] ** 2 * 4 / 2**30:.1f} |")
    return "\n".join(md) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N in {512, 1024}, few repeats: a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON/markdown results")
    ap.add_argument("--tag", default=None, help="file name stem (default: attention-cpu-<date>)")
    ap.add_argument("--n", type=int, nargs="+", help=f"sequence lengths (default {SEQ_LENS})")
    ap.add_argument("--d", type=int, nargs="+", default=HEAD_DIMS, help="head dims")
    ap.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--mode", nargs="+", choices=MODES, default=MODES)
    ap.add_argument("--causal", nargs="+", choices=["false", "true"], default=["false", "true"])
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of timed calls per case, both providers (default 7, quick 1.5)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                    help="peak memory of fwd+bwd at N in {4096, 8192, 16384} (default: on, off with --quick)")
    args = ap.parse_args()
    seq_lens = args.n or (QUICK_SEQ_LENS if args.quick else SEQ_LENS)
    budget = args.budget or (1.5 if args.quick else 7.0)
    do_memory = args.memory if args.memory is not None else not args.quick

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=220)
    start = time.perf_counter()
    ext_file = Path(zenattn.backends.extension().__file__)
    ext_mtime = ext_file.stat().st_mtime
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "zenattn": zenattn.__version__,
        "cpu_isa": zenattn.info()["extension"].get("cpu_isa"),
        "python": sys.version.split()[0],
        "extension_mtime": dt.datetime.fromtimestamp(ext_mtime, dt.timezone.utc).isoformat(timespec="seconds"),
        "shape": f"B={B}, H={H}", "budget_s": budget, "min_reps": MIN_REPS, "max_reps": MAX_REPS,
        "checked_heads": CHECK_HEADS,
        "loadavg_at_start": os.getloadavg()[0],  # other work on the machine before this run began
    }
    console.print(f"[bold]zenattn attention benchmark[/] on {meta['device']}, {meta['threads']} threads, "
                  f"torch {meta['torch']}, kernels {meta['cpu_isa']} (built {meta['extension_mtime']}), "
                  f"load average {meta['loadavg_at_start']:.2f}")
    mm_warmup, mm_reps = (1, 5) if args.quick else (2, 10)
    mm = matmul_rates(mm_warmup, mm_reps)
    console.print(f"matmul rate (torch.mm {MM_SIZE}x{MM_SIZE}): fp32 {mm['fp32']:.1f} GFLOP/s, "
                  f"bf16 {mm['bf16']:.1f} GFLOP/s")

    rows_out = []
    grads = "fwd+bwd" in args.mode
    for dname in args.dtype:
        for causal in (c == "true" for c in args.causal):
            for d in args.d:
                for n in seq_lens:
                    q, k, v, dy = make_inputs(n, d, DTYPES[dname])
                    ref = reference(q, k, v, dy, causal, grads)
                    for mode in args.mode:
                        runs = make_runs(q, k, v, dy, causal, mode)
                        seconds, errors, failed = check(runs, ref, dname)
                        (busy0, self0), t0 = cpu_seconds(), time.perf_counter()
                        stats, ratio, reps = timed(runs, budget, seconds)
                        (busy1, self1), wall = cpu_seconds(), time.perf_counter() - t0
                        other = max(0.0, (busy1 - busy0) - (self1 - self0)) / wall
                        fl = flops(n, d, causal, mode)
                        gflops = {p: fl / stats[p]["median"] / 1e9 for p in stats}
                        speedup = stats["torch"]["median"] / stats["zenattn"]["median"]
                        target = TARGETS.get((mode, dname))
                        row = dict(mode=mode, dtype=dname, causal=causal, b=B, h=H, n=n, d=d, flops=fl,
                                   reps=reps, torch=stats["torch"], zenattn=stats["zenattn"],
                                   gflops=gflops, frac_matmul={p: g / mm[dname] for p, g in gflops.items()},
                                   speedup=speedup, pair_ratio=ratio, target_speedup=target,
                                   target_met=None if target is None else speedup >= target,
                                   max_err=errors, wrong={p: f for p, f in failed.items() if f},
                                   other_load=other)
                        rows_out.append(row)
                        console.print(f"  done {mode} {dname} {'causal' if causal else 'full'} N={n} D={d}: "
                                      f"{speedup:.2f}x ({reps} calls each, other load {other:.2f} cores, "
                                      f"{time.perf_counter() - start:.0f} s)", highlight=False)
                    del q, k, v, dy, ref, runs

    table = Table(title=escape(f"zenattn vs torch SDPA, B={B} H={H} (median ms [p20-p80]; GFLOP/s; % of the "
                               f"matmul rate; speed-up = torch/zenattn [p20-p80 of paired turns])"))
    for col in ("mode", "dtype", "causal", "N", "D", "torch ms", "zenattn ms", "torch GF/s", "zen GF/s",
                "speed-up", "target", "torch %mm", "zen %mm", "calls", "other load", "worst err zen/torch"):
        table.add_column(col, justify="right")
    order = {m: i for i, m in enumerate(MODES)}
    rows_out.sort(key=lambda r: (order[r["mode"]], r["dtype"] != "fp32", r["causal"], r["d"], r["n"]))
    for r in rows_out:
        zen_err, torch_err = r["max_err"]["zenattn"], r["max_err"]["torch"]
        worst = max(zen_err, key=lambda t: zen_err[t] / (FACTOR[t] * torch_err[t] + ATOL_FLOOR[r["dtype"]]))
        ok = "[red]WRONG " if "zenattn" in r["wrong"] else ""
        if r["target_speedup"] is None:
            target = "-"
        else:
            target = f">={r['target_speedup']}x " + ("[green]PASS" if r["target_met"] else "[red]MISS")
        table.add_row(
            r["mode"], r["dtype"], "yes" if r["causal"] else "no", str(r["n"]), str(r["d"]),
            ("[red]WRONG " if "torch" in r["wrong"] else "") + fmt_ms(r["torch"]), fmt_ms(r["zenattn"]),
            f"{r['gflops']['torch']:.1f}", f"{r['gflops']['zenattn']:.1f}",
            f"{ok}{r['speedup']:.2f}x [{r['pair_ratio']['p20']:.2f}-{r['pair_ratio']['p80']:.2f}]", target,
            f"{100 * r['frac_matmul']['torch']:.0f}%", f"{100 * r['frac_matmul']['zenattn']:.0f}%", str(r["reps"]),
            ("[yellow]" if r["other_load"] > BUSY else "") + f"{r['other_load']:.2f}",
            f"{worst} {zen_err[worst]:.1e}/{torch_err[worst]:.1e}")
    console.print(table)
    judged = [r for r in rows_out if r["target_speedup"] is not None]
    busy = [r for r in rows_out if r["other_load"] > BUSY]
    console.print(f"targets: {sum(r['target_met'] for r in judged)} of {len(judged)} cases PASS; "
                  f"wrong: {sum(bool(r['wrong']) for r in rows_out)} of {len(rows_out)} cases; "
                  f"{len(busy)} cases timed while other processes used more than {BUSY} core (other load, "
                  "yellow): their times are not to be trusted, rerun them on a quiet machine")

    memory = []
    if do_memory:
        console.print(f"peak memory of one fwd+bwd, B={B} H={H} D={MEMORY_HEAD_DIM} fp32 non-causal: each in a "
                      "fresh subprocess; peak RSS (VmHWM) minus the RSS after the inputs are allocated "
                      "(peak mark reset there via /proc/self/clear_refs)")
        memory = memory_section(meta["threads"], MEMORY_SEQ_LENS, console)
        mtable = Table(title="peak memory increase of one fwd+bwd (includes o, dq, dk, dv)")
        for col in ("provider", "N", "peak increase", "of which o+dq+dk+dv", "growth vs N/2",
                    "N x N fp32, all heads", "step s"):
            mtable.add_column(col, justify="right")
        for r in memory:
            mtable.add_row(r["provider"], str(r["n"]),
                           f"{r['increase']:,} B ({r['increase'] / 2**20:.0f} MiB)" if "increase" in r else r["error"],
                           f"{r['outputs_bytes'] / 2**20:.0f} MiB",
                           f"{r['growth']:.2f}x" if "growth" in r else "-",
                           f"{B * H * r['n'] ** 2 * 4 / 2**30:.1f} GiB", f"{r.get('seconds', float('nan')):.1f}")
        console.print(mtable)

    mm_end = matmul_rates(mm_warmup, mm_reps)
    changed = ext_file.stat().st_mtime != ext_mtime
    drift = {d: mm_end[d] / mm[d] for d in mm}
    wall = time.perf_counter() - start
    console.print(f"matmul rate at the end: fp32 {mm_end['fp32']:.1f}, bf16 {mm_end['bf16']:.1f} GFLOP/s; "
                  f"wall time {wall:.0f} s")
    if any(abs(r - 1) > 0.15 for r in drift.values()):
        console.print("[yellow]the matmul rate changed by more than 15% during the run: the machine was not "
                      "quiet (see the other load column)")
    if changed:
        console.print("[red]the extension file changed during the run (rebuilt?): the memory subprocesses "
                      "may have run a newer build than the timings")
    meta.update(wall_s=round(wall, 1), extension_changed_during_run=changed)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.tag or f"attention-cpu-{meta['date'][:10]}"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "matmul_gflops": {"start": mm, "end": mm_end}, "results": rows_out,
         "memory": memory}, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(meta, mm, mm_end, rows_out, memory))
    console.print(f"wrote {args.out / (stem + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
