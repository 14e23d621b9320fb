"""How the harness measures: time (side by side, in shuffled turns), peak memory, the device's own
ceilings and, on Linux, how much of the CPU other processes took meanwhile.

- CPU: ``time.perf_counter`` around each call; the thread count goes with the results.
- CUDA: CUDA events around each call, with the L2 cache flushed before it (a 256 MiB write), so
  no provider reads its inputs from the cache another one warmed.
- Peak memory of one call above what was allocated before it: ``torch.cuda.max_memory_allocated``
  on CUDA; on the CPU, the allocation events of ``torch.profiler`` (``profile_memory=True``)
  replayed in time order (allocations that bypass torch's allocator, such as a kernel's own
  ``std::vector``, are not seen).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import statistics
import time
from typing import Callable, Optional

import torch

from zenattn.bench.cases import DTYPES

L2_FLUSH_BYTES = 256 * 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: list) -> dict:
    """Median, 20/80 percentiles and minimum (seconds) of a list of times."""
    if len(times) == 1:
        return {"median": times[0], "p20": times[0], "p80": times[0], "min": times[0], "n": 1}
    q = statistics.quantiles(times, n=10, method="inclusive")
    return {"median": statistics.median(times), "p20": q[1], "p80": q[7], "min": min(times), "n": len(times)}


class Timer:
    """Times one call of a function on ``device``; CUDA events with an L2 flush on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self._flush = (torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
                       if device.type == "cuda" else None)

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        self._flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def time_side_by_side(fns: dict, device: torch.device, reps: int, warmup: int = 1, block: int = 5,
                      seed: int = 0) -> dict:
    """Median and 20/80 percentiles (seconds) of each function of ``fns``, from ``reps`` calls each.

    The functions take turns in blocks of ``block`` calls, in a shuffled order per round, so a
    noisy stretch of a shared machine hits all of them alike; blocks rather than single calls keep
    one provider's allocation pattern from landing on the next one's every call."""
    timer = Timer(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(seed)
    block = max(1, min(block, reps))
    while min(len(t) for t in times.values()) < reps:
        rng.shuffle(order)
        for name in order:
            for _ in range(min(block, reps - len(times[name]))):
                times[name].append(timer(fns[name]))
    sync(device)
    return {name: summarize(ts) for name, ts in times.items()}


def reps_for(seconds_per_call: dict, budget_s: float, min_reps: int, max_reps: int) -> int:
    """Calls per provider so that all of them together take about ``budget_s``."""
    total = sum(seconds_per_call.values()) or 1e-9
    return max(min_reps, min(max_reps, int(budget_s / total)))


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes allocated at the peak of one call of ``fn`` above what was allocated before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        sync(device)
        del result
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's start/stop lines written to the process's stderr (fd 2)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class OtherLoad:
    """Cores that other processes (or the hypervisor) took while a block of work ran, from
    /proc/stat minus this process's own CPU time; None where /proc/stat does not exist."""

    def __enter__(self):
        self._start = self._now()
        return self

    def __exit__(self, *exc):
        end = self._now()
        self.cores = None
        if self._start is not None and end is not None:
            (busy0, self0, t0), (busy1, self1, t1) = self._start, end
            self.cores = max(0.0, (busy1 - busy0) - (self1 - self0)) / max(t1 - t0, 1e-9)

    @staticmethod
    def _now():
        try:
            with open("/proc/stat") as fh:
                fields = list(map(int, fh.readline().split()[1:9]))
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return ((user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"),
                usage.ru_utime + usage.ru_stime, time.perf_counter())


def matmul_rate(device: torch.device, dtype: torch.dtype, reps: int = 10) -> float:
    """FLOP/s of a square ``torch.mm`` in ``dtype`` (2048 on the CPU, 8192 on a GPU), from its
    fastest call (a ceiling is what the machine can do; on a shared machine the median wanders):
    the ceiling attention and the model step are judged against."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    stats = time_side_by_side({"mm": lambda: torch.mm(a, b)}, device, reps=reps, warmup=2)
    return 2.0 * n**3 / stats["mm"]["min"]


def copy_bandwidth(device: torch.device, reps: int = 10) -> float:
    """Bytes/s (read + write) of copying a 256 MiB buffer into another (1 GiB on a GPU): the
    ceiling the norms are judged against. Fastest call, as for the matmul rate."""
    numel = (2**28 if device.type == "cuda" else 2**26)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    stats = time_side_by_side({"copy": lambda: dst.copy_(src)}, device, reps=reps, warmup=2)
    return 2.0 * numel * 4 / stats["copy"]["min"]


def ceilings(device: torch.device, dtypes: list, reps: int = 10) -> dict:
    """The device's own ceilings: {"matmul": {dtype name: FLOP/s}, "copy": bytes/s}."""
    return {"matmul": {d: matmul_rate(device, DTYPES[d], reps) for d in dtypes},
            "copy": copy_bandwidth(device, reps)}
