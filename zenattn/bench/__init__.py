"""zenattn's benchmark harness: every zenattn backend against PyTorch and its peers, side by side.

    zenattn-bench                      # the default sweep on whatever device is present
    python -m zenattn.bench --help     # ops, modes, dtypes, sweeps, providers, outputs

As a library::

    from zenattn import bench
    result = bench.run(bench.sweep("quick", ops=["layer_norm"]), out="bench-out")
    result["rows"]       # one dict per (case, provider): times, throughput, fraction of ceiling, check

Layout: :mod:`~zenattn.bench.cases` (what is measured, FLOP/byte formulas, sweeps),
:mod:`~zenattn.bench.providers` (who), :mod:`~zenattn.bench.measure` (timing, memory, ceilings),
:mod:`~zenattn.bench.runner` (check then time one case), :mod:`~zenattn.bench.report` (outputs).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch

import zenattn
from zenattn.bench import measure, report
from zenattn.bench.cases import DTYPES, MODES, OPS, SWEEPS, Case, attention_flops, norm_bytes, sweep, work
from zenattn.bench.providers import Provider, all_providers, select
from zenattn.bench.runner import Settings, run_case


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_name() -> str:
    """This CPU's model name (from /proc/cpuinfo on Linux; else the machine type) and core count:
    results from different CPUs of the same architecture must not read alike."""
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    """Device name, thread count and versions: recorded with every result."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name()
    triton = zenattn.info().get("triton")
    return {"device": name, "device_type": device.type, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "zenattn": zenattn.__version__, "triton": triton,
            "cuda": torch.version.cuda, "cpu_isa": zenattn.info()["extension"].get("cpu_isa"),
            "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def run(cases: list, *, device: Optional[Union[str, torch.device]] = None, providers: Optional[list] = None,
        settings: Optional[Settings] = None, out: Optional[Union[str, Path]] = None, tag: Optional[str] = None,
        plots: bool = True, sweep_name: str = "custom", extra_providers: Optional[list] = None,
        progress: Optional[Callable[[int, int, Case], None]] = None,
        log: Callable[[str], None] = lambda msg: None) -> dict:
    """Measure the device's ceilings, then check and time every case with every provider.

    ``providers``: names to run (None: every available one that is not opt-in). ``extra_providers``:
    further :class:`Provider` objects (a test's deliberately wrong one, say). With ``out``, the rows
    are appended to ``out/results.csv`` and ``out/results.jsonl`` and the run is written as
    ``out/<stem>.json``, ``out/<stem>.md`` and ``out/<stem>-<op>.png``. Returns {"meta",
    "ceilings", "rows", "skipped", "files"}; "skipped" gives, per provider left out of some
    cases, each reason with its count of cases."""
    device = torch.device(device) if device is not None else default_device()
    settings = settings or Settings()
    start = time.perf_counter()
    meta = environment(device)
    meta["sweep"] = sweep_name
    known = all_providers() + list(extra_providers or [])
    if providers is not None:
        unknown = set(providers) - {p.name for p in known}
        if unknown:
            raise ValueError(f"unknown providers {sorted(unknown)}; known here: {sorted(p.name for p in known)}")
    dtypes = sorted({c.dtype for c in cases}, key=list(DTYPES).index)
    log("measuring the device's ceilings (matmul rate per dtype, copy bandwidth)")
    ceilings = measure.ceilings(device, dtypes, reps=10)
    rows, skipped = [], {}
    for i, case in enumerate(cases):
        if progress is not None:
            progress(i, len(cases), case)
        chosen, why = select(case, device, providers, known)
        for name, reason in why.items():
            counts = skipped.setdefault(name, {})
            counts[reason] = counts.get(reason, 0) + 1
        if chosen:
            case_rows = run_case(case, chosen, device, settings, log)
            report.finish_rows(case_rows, ceilings, meta)
            if out is not None:  # appended as they come: a run cut short keeps what it measured
                report.append_rows(case_rows, Path(out))
            rows += case_rows
    if progress is not None:
        progress(len(cases), len(cases), None)
    meta["wall_s"] = time.perf_counter() - start
    skipped = {name: [f"{reason} ({n} of {len(cases)} cases)" for reason, n in reasons.items()]
               for name, reasons in skipped.items()}
    result = {"meta": meta, "ceilings": ceilings, "rows": rows, "skipped": skipped, "files": []}
    if out is not None:
        result["files"] = write(result, Path(out), tag, plots, append_rows=False)
    return result


def write(result: dict, out: Path, tag: Optional[str] = None, plots: bool = True,
          append_rows: bool = True) -> list[Path]:
    """Write a run's <stem>.json, <stem>.md and plots, and append its rows to results.csv/.jsonl
    (``run`` has already appended them case by case: it passes ``append_rows=False``)."""
    import json  # noqa: PLC0415

    meta = result["meta"]
    stem = f"bench-{meta['device_type']}-{meta['date'][:10]}" + (f"-{tag}" if tag else "")
    out.mkdir(parents=True, exist_ok=True)
    files = list(report.append_rows(result["rows"], out)) if append_rows else \
        [out / "results.csv", out / "results.jsonl"]
    (out / f"{stem}.json").write_text(json.dumps({k: v for k, v in result.items() if k != "files"},
                                                 indent=1, default=str))
    (out / f"{stem}.md").write_text(report.markdown(result["rows"], meta, result["ceilings"], result["skipped"]))
    files += [out / f"{stem}.json", out / f"{stem}.md"]
    if plots:
        files += report.plot(result["rows"], result["ceilings"], out, stem)
    return files


__all__ = ["Case", "Provider", "Settings", "OPS", "MODES", "DTYPES", "SWEEPS", "sweep", "run", "write",
           "run_case", "all_providers", "select", "attention_flops", "norm_bytes", "work", "environment",
           "default_device", "measure", "report"]
