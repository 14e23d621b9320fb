"""What the harness writes: the terminal table (rich), result rows appended to CSV and JSON-lines
files, the run's own JSON and markdown summary, and PNG plots (throughput against sequence length
or hidden size per provider, with the fraction of the device's ceiling on the right axis).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

# The flat columns of results.csv (one row per case and provider); results.jsonl has everything.
CSV_COLUMNS = ["timestamp", "op", "provider", "version", "mode", "shape", "dtype", "status", "metric",
               "median", "p20", "p80", "reps", "throughput", "throughput_unit", "fraction_of_ceiling",
               "ceiling", "peak_bytes", "speedup", "speedup_vs", "worst_err_ratio", "other_load", "error",
               "device", "threads", "torch", "zenattn", "triton"]


def ceiling_of(row: dict, ceilings: dict) -> tuple[Optional[float], str]:
    """(ceiling, its name) a row's throughput is judged against: the matmul rate in its dtype for
    attention and the model step, the copy bandwidth for the norms."""
    if row["unit"] == "FLOP":
        rate = ceilings["matmul"].get(row["dtype"])
        return rate, f"{row['dtype']} matmul"
    return ceilings["copy"], "copy"


def finish_rows(rows: list, ceilings: dict, meta: dict) -> None:
    """Add the ceiling fraction, the worst error ratio and the run's metadata to each row."""
    for r in rows:
        ceiling, name = ceiling_of(r, ceilings)
        r["ceiling"] = name
        r["fraction_of_ceiling"] = (r["throughput"] / ceiling) if r.get("throughput") and ceiling else None
        ratios = [r["max_err"][t] / r["bound"][t] for t in r.get("max_err", {}) if r["bound"].get(t)]
        r["worst_err_ratio"] = max(ratios) if ratios else None
        for key in ("device", "threads", "torch", "zenattn", "triton"):
            r[key] = meta.get(key)


def _rate(row: dict) -> str:
    if not row.get("throughput"):
        return "-"
    if row["unit"] == "FLOP":
        return f"{row['throughput'] / 1e12:.3g} TFLOP/s" if row["throughput"] >= 1e12 else \
            f"{row['throughput'] / 1e9:.3g} GFLOP/s"
    return f"{row['throughput'] / 1e9:.3g} GB/s"


def _ms(row: dict) -> str:
    if row.get("median_s") is None:
        return "-"
    return f"{row['median_s'] * 1e3:.3g} [{row['p20_s'] * 1e3:.3g}-{row['p80_s'] * 1e3:.3g}]"


def _status(row: dict, width: Optional[int] = None) -> str:
    if row["status"] == "failed":
        text = f"failed: {row['error']}"
        return text if width is None or len(text) <= width else text[:width - 3] + "..."
    if row["status"] == "WRONG":
        return "WRONG (" + ", ".join(f"{t} {row['max_err'][t]:.1e} > {row['bound'][t]:.1e}" for t in row["wrong"]) + ")"
    return "ok"


def _cells(row: dict, width: Optional[int] = None) -> list[str]:
    frac = row.get("fraction_of_ceiling")
    speed = f"{row['speedup']:.2f}x vs {row['speedup_vs']}" if row.get("speedup") else ""
    peak = f"{row['peak_bytes'] / 2**20:.1f}" if row.get("peak_bytes") is not None else "-"
    return [row["provider"], _ms(row), _rate(row), f"{frac:.0%}" if frac is not None else "-", peak, speed,
            _status(row, width)]


HEADERS = ["provider", "median ms [p20-p80]", "throughput", "of ceiling", "peak MiB", "zenattn speed-up",
           "check"]


def _by_case(rows: list) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["op"], r["mode"], r["dtype"], r["shape"]), []).append(r)
    return groups


def rich_table(rows: list, title: str):
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title, show_lines=False)
    table.add_column("case", no_wrap=True)
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("provider", "check") else "right", no_wrap=h != "check")
    style = {"ok": None, "WRONG": "red", "failed": "yellow"}
    for i, ((op, mode, dtype, shape), group) in enumerate(_by_case(rows).items()):
        if i:
            table.add_section()
        for j, r in enumerate(sorted(group, key=lambda r: (r["median_s"] is None, r["median_s"] or 0))):
            case = f"{op} {mode} {dtype} {shape}" if j == 0 else ""
            table.add_row(case, *_cells(r, width=60), style=style.get(r["status"]))
    return table


def markdown(rows: list, meta: dict, ceilings: dict, skipped: dict) -> str:
    """The run as a markdown page: device, versions and ceilings, then one table per op."""
    mm = ", ".join(f"{d} {v / 1e9:,.0f} GFLOP/s" for d, v in ceilings["matmul"].items())
    lines = [f"# zenattn benchmark: {meta['device']} ({meta['date']})", "",
             f"torch {meta['torch']}, zenattn {meta['zenattn']}, triton {meta.get('triton') or 'absent'}, "
             f"Python {meta['python']}, {meta['threads']} threads; sweep `{meta['sweep']}`, "
             f"{meta['wall_s']:.0f} s in all.", "",
             f"Ceilings measured first in the same run: matmul {mm}; copy {ceilings['copy'] / 1e9:,.1f} GB/s. "
             "Every result was checked against a float64 reference before it was timed: zenattn's by the "
             "DESIGN.md section 4 rule (at most 2x, gradients 3x, torch's own error in the same dtype), the others "
             "by a sanity bound (1e-4 of the reference's magnitude in fp32, 1e-2 fp16, 1e-1 bf16). Times: median of the calls [20th-80th percentile], "
             "providers taking turns. Speed-up: the fastest correct non-zenattn provider's median over zenattn's.",
             ""]
    for op in dict.fromkeys(r["op"] for r in rows):
        lines += [f"## {op}", "", "| case | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
        for (o, mode, dtype, shape), group in _by_case(rows).items():
            if o != op:
                continue
            for j, r in enumerate(sorted(group, key=lambda r: (r["median_s"] is None, r["median_s"] or 0))):
                case = f"{mode} {dtype} {shape}" if j == 0 else ""
                lines.append("| " + " | ".join([case, *_cells(r)]).replace("\n", " ") + " |")
        lines.append("")
    if skipped:
        lines += ["Providers not run here:", ""]
        lines += [f"- {name}: {why}" for name, whys in sorted(skipped.items()) for why in whys]
        lines.append("")
    return "\n".join(lines)


def append_rows(rows: list, out: Path) -> tuple[Path, Path]:
    """Append the rows to ``out/results.csv`` (flat columns) and ``out/results.jsonl`` (everything)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, jsonl_path = out / "results.csv", out / "results.jsonl"
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow({**r, "metric": "seconds", "median": r.get("median_s"), "p20": r.get("p20_s"),
                             "p80": r.get("p80_s"), "throughput_unit": f"{r['unit']}/s"})
    with jsonl_path.open("a") as fh:
        for r in rows:
            fh.write(json.dumps(r, default=str) + "\n")
    return csv_path, jsonl_path


def read_csv(path: Path) -> list[dict]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def plot(rows: list, ceilings: dict, out: Path, stem: str) -> list[Path]:
    """One PNG per op with a swept axis: throughput against sequence length (attention) or hidden
    size (norms), one line per provider, one panel per (mode, dtype and the other shape parameters);
    the right axis gives the same values as a fraction of the device's ceiling."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    for op in dict.fromkeys(r["op"] for r in rows if r["op"] != "model"):
        panels: dict = {}
        for r in rows:
            if r["op"] != op or not r.get("throughput") or r["status"] != "ok":
                continue
            key = _panel(r)
            panels.setdefault(key, {}).setdefault(r["provider"], []).append((r["sweep_value"], r["throughput"], r))
        panels = {k: v for k, v in panels.items() if any(len(pts) > 1 for pts in v.values())}
        if not panels:
            continue
        names = sorted({name for providers in panels.values() for name in providers})
        color = {name: f"C{i % 10}" for i, name in enumerate(names)}      # one colour per provider throughout
        cols = min(2, len(panels))
        nrows = -(-len(panels) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 3.6 * nrows), squeeze=False)
        for ax, (key, providers) in zip(axes.flat, panels.items()):
            any_row = next(iter(providers.values()))[0][2]
            top = max(p[1] for pts in providers.values() for p in pts)
            scale, unit = ((1e12, "TFLOP/s") if top >= 1e12 else (1e9, "GFLOP/s")) if any_row["unit"] == "FLOP" \
                else (1e9, "GB/s")
            for name, pts in sorted(providers.items()):
                pts.sort(key=lambda p: p[0])
                ax.plot([p[0] for p in pts], [p[1] / scale for p in pts], marker="o", color=color[name],
                        linestyle="-" if name.startswith("zenattn") else "--", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length" if op == "attention" else "hidden size")
            ax.set_ylabel(unit)
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
            ceiling, cname = ceiling_of(any_row, ceilings)
            if ceiling:
                c = ceiling / scale
                sec = ax.secondary_yaxis("right", functions=(lambda y, c=c: y / c, lambda f, c=c: f * c))
                sec.set_ylabel(f"fraction of {cname}")
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(f"zenattn benchmark: {op}")
        fig.tight_layout()
        path = out / f"{stem}-{op}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _panel(row: dict) -> str:
    """A plot panel's title: the case's fixed parameters (everything but the swept one)."""
    c = row["case"]
    if row["op"] == "attention":
        kv = f" Hkv={c['kv_heads']}" if c["kv_heads"] not in (None, c["heads"]) else ""
        win = f" window={c['window']}" if c["window"] is not None else ""
        return (f"{c['mode']} {c['dtype']} B={c['batch']} H={c['heads']}{kv} D={c['head_dim']}"
                f"{' causal' if c['causal'] else ''}{win}")
    return f"{c['mode']} {c['dtype']} rows={c['rows']}{' +residual' if c.get('residual') else ''}"
