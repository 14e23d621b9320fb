"""The harness's cases as a pytest-benchmark suite: one benchmark per (case, provider).

    pytest benchmarks/ --benchmark-only                       # the default sweep, every default provider
    ZENATTN_BENCH_SWEEP=quick pytest benchmarks/ --benchmark-only --benchmark-json out.json
    pytest benchmarks/ --benchmark-only -k "attention and zenattn" --benchmark-compare

The cases and providers are those of ``zenattn-bench`` (zenattn/bench/): ``ZENATTN_BENCH_SWEEP``
picks the sweep (default, quick, gpu), on CUDA if present. Each benchmark first runs the harness's
check against the float64 reference (with the case's baseline provider beside it, for the bound)
and fails if the provider's result is wrong; the timed call synchronizes the device inside it.
FLOPs or bytes of one call go into ``extra_info``.
"""

from __future__ import annotations

import os

import pytest

from zenattn import bench
from zenattn.bench import measure
from zenattn.bench.runner import prepare

DEVICE = bench.default_device()
SWEEP = os.environ.get("ZENATTN_BENCH_SWEEP", "default")


def _params():
    params = []
    for case in bench.sweep(SWEEP):
        chosen, _ = bench.select(case, DEVICE)
        params += [pytest.param(case, p, id=f"{case.label()} [{p.name}]".replace(" ", "-")) for p in chosen]
    return params


@pytest.mark.parametrize("case, provider", _params())
def test_benchmark(benchmark, case, provider):
    baseline = [p for p in bench.select(case, DEVICE)[0] if p.baseline and p.name != provider.name]
    checked = {r["provider"]: r for r in bench.run_case(
        case, [provider] + baseline[:1], DEVICE, bench.Settings(budget_s=0.0, min_reps=1, max_reps=1, memory=False))}
    row = checked[provider.name]
    assert row["status"] == "ok", f"{provider.name} on {case.label()}: {row['status']} {row['error'] or row['wrong']}"

    calls, _, failures = prepare(case, [provider], DEVICE)
    assert not failures, failures
    call = calls[provider.name]
    amount, unit = bench.work(case)
    benchmark.extra_info.update(op=case.op, mode=case.mode, dtype=case.dtype, shape=case.shape,
                                provider=provider.name, version=provider.version, work=amount, unit=unit,
                                device=str(DEVICE))

    def timed():
        call()
        measure.sync(DEVICE)
    benchmark(timed)
