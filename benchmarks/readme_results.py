"""Generate the README's results tables from the committed results files in benchmarks/results/.

    python benchmarks/readme_results.py           # rewrite the generated blocks of README.md
    python benchmarks/readme_results.py --check   # exit 1 if README.md is not what the files give

Each table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in README.md;
the prose around them is written by hand. Blocks:

- ``harness``: every ``bench-*.json`` run of ``zenattn-bench`` (device, date, versions, ceilings; per
  case zenattn's fastest backend against the fastest other correct provider);
- ``norm-targets``, ``attention-targets``, ``attention-memory``, ``model-targets``: the target runs of
  benchmarks/bench_norm.py, bench_attention.py and bench_model.py, every committed run side by side
  ("a / b / ...").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _link(stem: str, label: str) -> str:
    return f"[{label}](benchmarks/results/{stem}.md)"


def _runs(kind: str) -> list[tuple[str, dict]]:
    """(letter, results) of every committed run ``<kind>-<date>-run-<letter>.json``, by date and
    letter; the letters run on across dates. Each results dict gets its file's stem as "_stem"."""
    runs = []
    for path in sorted(RESULTS.glob(f"{kind}-????-??-??-run-*.json")):
        data = json.loads(path.read_text())
        data["_stem"] = path.stem
        runs.append((path.stem.rsplit("-", 1)[1], data))
    return runs


def _runs_sentence(runs: list) -> str:
    return "Runs " + ", ".join(f"{_link(d['_stem'], k)} ({d['meta']['date'][:16]})" for k, d in runs)


def _versions(meta: dict) -> str:
    triton = f", triton {meta['triton']}" if meta.get("triton") else ""
    return f"torch {meta['torch']}, zenattn {meta['zenattn']}{triton}, {meta['threads']} threads"


# --- zenattn-bench runs --------------------------------------------------------------------------

def harness() -> str:
    runs = sorted(RESULTS.glob("bench-*.json"))
    if not runs:
        return "No `zenattn-bench` run is committed yet."
    out = []
    for path in runs:
        run = json.loads(path.read_text())
        meta, ceilings = run["meta"], run["ceilings"]
        mm = ", ".join(f"{d} {v / 1e9:,.0f} GFLOP/s" for d, v in ceilings["matmul"].items())
        providers = sorted({r["provider"] for r in run["rows"]})
        out += [f"{_link(path.stem, path.stem)}: {meta['device']}, {meta['date'][:10]}; {_versions(meta)}; "
                f"sweep `{meta['sweep']}` in {meta['wall_s']:.0f} s. Ceilings: matmul {mm}, copy "
                f"{ceilings['copy'] / 1e9:,.1f} GB/s. Providers: {', '.join(providers)}.", "",
                "| op | mode | dtype | shape | zenattn (ms) | fastest other (ms) | speed-up | zenattn of ceiling "
                "| wrong or failed |", "|---|---|---|---|---|---|---|---|---|"]
        cases: dict = {}
        for r in run["rows"]:
            cases.setdefault((r["op"], r["mode"], r["dtype"], r["shape"]), []).append(r)
        for (op, mode, dtype, shape), rows in cases.items():
            ok = [r for r in rows if r["status"] == "ok" and r["median_s"]]
            ours = min((r for r in ok if r["provider"].startswith("zenattn")), key=lambda r: r["median_s"], default=None)
            other = min((r for r in ok if not r["provider"].startswith("zenattn")), key=lambda r: r["median_s"],
                        default=None)
            bad = ", ".join(f"{r['provider']} ({r['status']})" for r in rows if r["status"] != "ok") or "-"
            cell = (lambda r: f"{r['median_s'] * 1e3:.3g} ({r['provider']})" if r else "-")
            speed = f"**{other['median_s'] / ours['median_s']:.2f}x**" if ours and other else "-"
            frac = f"{ours['fraction_of_ceiling']:.0%}" if ours and ours.get("fraction_of_ceiling") else "-"
            out.append(f"| {op} | {mode} | {dtype} | {shape} | {cell(ours)} | {cell(other)} | {speed} | {frac} | {bad} |")
        out.append("")
    return "\n".join(out).rstrip()


# --- the target runs of the per-op scripts -------------------------------------------------------

def _cell(values: list) -> str:
    return " / ".join(f"{v:.2f}x" for v in values)


def norm_targets() -> str:
    runs = _runs("norm-cpu")
    cols = [(4096, 1024, "fp32"), (4096, 1024, "bf16"), (8192, 4096, "fp32"), (8192, 4096, "bf16")]
    index = [{(r["op"], r["mode"], r["rows"], r["hidden"], r["dtype"]): r for r in d["results"]} for _, d in runs]
    first = runs[0][1]
    out = [f"{_runs_sentence(runs)}: {first['meta']['device']}; {_versions(first['meta'])}, "
           f"{first['meta']['cpu_isa']} kernels. Cell: torch's time / zenattn's, run "
           f"{' / '.join(k for k, _ in runs)} (target in brackets).", "",
           "| op | mode | " + " | ".join(f"{r}×{h} {d}" for r, h, d in cols) + " |", "|---|---" + "|---" * len(cols) + "|"]
    for op in ("layer_norm", "rms_norm"):
        for mode in ("fwd", "fwd+bwd"):
            cells = []
            for rows, hidden, dtype in cols:
                rs = [ix[(op, mode, rows, hidden, dtype)] for ix in index]
                target = f" (≥{rs[0]['target_speedup']:.1f})" if rs[0]["target_speedup"] is not None else ""
                cells.append(_cell([r["speedup"] for r in rs]) + target)
            out.append(f"| {op} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def attention_targets(kind: str = "attention-cpu") -> str:
    runs = _runs(kind)
    cols = [(1024, 64), (1024, 128), (4096, 64), (4096, 128)]
    index = [{(r["mode"], r["dtype"], r["causal"], r["n"], r["d"]): r for r in d["results"]} for _, d in runs]
    first = runs[0][1]
    out = [f"{_runs_sentence(runs)}: {first['meta']['device']}; {_versions(first['meta'])}; "
           f"{first['meta']['shape']}. Cell: torch SDPA's time / zenattn's, run {' / '.join(k for k, _ in runs)}; "
           f"all {len(first['results'])} cases of each run are in the files.", "",
           "| mode | dtype | causal | " + " | ".join(f"N={n} D={d}" for n, d in cols) + " | target |",
           "|---|---|---" + "|---" * len(cols) + "|---|"]
    for mode in ("fwd", "fwd+bwd"):
        for dtype in ("fp32", "bf16"):
            for causal in (False, True):
                cells = [_cell([ix[(mode, dtype, causal, n, d)]["speedup"] for ix in index]) for n, d in cols]
                target = index[0][(mode, dtype, causal, 1024, 64)]["target_speedup"]
                out.append(f"| {mode} | {dtype} | {'yes' if causal else 'no'} | " + " | ".join(cells) +
                           f" | {'≥%.1f' % target if target is not None else '–'} |")
    return "\n".join(out)


def attention_memory(kind: str = "attention-cpu") -> str:
    runs = [(k, d) for k, d in _runs(kind) if d.get("memory")]
    letters = " / ".join(k for k, _ in runs)
    out = ["Peak memory of one fp32 forward+backward (B=1, H=8, D=64, non-causal; fresh subprocess, peak RSS "
           "minus the RSS with the inputs allocated; includes the outputs o, dq, dk, dv). Cell: run "
           f"{letters}.", "",
           "| N | zenattn (MiB) | torch SDPA (MiB) | o+dq+dk+dv (MiB) | zenattn growth vs N/2 |", "|---|---|---|---|---|"]

    def row(d, provider, n):
        return next(r for r in d["memory"] if r["provider"] == provider and r["n"] == n)

    for n in sorted({r["n"] for r in runs[-1][1]["memory"]}):
        zs = [row(d, "zenattn", n) for _, d in runs]
        ts = [row(d, "torch", n) for _, d in runs]
        mib = lambda rs: " / ".join(f"{r['increase'] / 2**20:.0f}" for r in rs)
        growth = " / ".join(f"{z['growth']:.2f}x" for z in zs) if "growth" in zs[-1] else "-"
        out.append(f"| {n} | {mib(zs)} | {mib(ts)} | {zs[-1]['outputs_bytes'] / 2**20:.0f} | {growth} |")
    return "\n".join(out)


def model_targets(kind: str = "model-cpu") -> str:
    runs = _runs(kind)
    targets = {"fp32": 1.1, "bf16": 1.5}
    first = runs[0][1]
    letters = " / ".join(k for k, _ in runs)
    out = [f"{_runs_sentence(runs)}: {_versions(first['meta'])}. One training step (forward, loss, "
           "backward, clipping, AdamW); speed-up = torch modules' median step / zenattn modules'.", "",
           f"| preset | dtype | B × L | speed-up run {letters} | target | zenattn MFU run {letters} |",
           "|---|---|---|---|---|---|"]
    for i, r in enumerate(first["rows"]):
        rs = [d["rows"][i] for _, d in runs]
        out.append(f"| {r['preset']} | {r['dtype']} | {r['batch']} × {r['seq_len']} | "
                   f"{_cell([x['speedup'] for x in rs])} | ≥{targets[r['dtype']]} | "
                   + " / ".join(f"{x['zenattn']['mfu']:.1%}" for x in rs) + " |")
    return "\n".join(out)


# Runs on the AVX2-only VM (AMD EPYC, no AVX-512, no bf16 instructions) are kept apart from the
# AVX-512 VM's: "<kind>-avx2-<date>-run-<letter>" files, their own tables.
BLOCKS = {"harness": harness, "norm-targets": norm_targets, "attention-targets": attention_targets,
          "attention-memory": attention_memory, "model-targets": model_targets,
          "attention-targets-avx2": lambda: attention_targets("attention-cpu-avx2"),
          "attention-memory-avx2": lambda: attention_memory("attention-cpu-avx2"),
          "model-targets-avx2": lambda: model_targets("model-cpu-avx2")}


def render(readme: str) -> str:
    """``readme`` with every generated block replaced by what the results files give."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no block <!-- generated:{name} --> ... <!-- /generated:{name} -->")
        readme = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the results files")
    args = ap.parse_args()
    current = README.read_text()
    wanted = render(current)
    if args.check:
        if current != wanted:
            print("README.md's generated results differ from benchmarks/results/: run "
                  "python benchmarks/readme_results.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
