"""The reliability checklist items that need more than one call: memory growing linearly in N,
tensors past 2^31 elements, bitwise determinism over 50 repeats on every backend (and under
``torch.use_deterministic_algorithms``), and concurrent calls from several Python threads."""

from __future__ import annotations

import concurrent.futures
import threading
import warnings

import pytest
import torch

import zenattn
from zenattn.bench.measure import peak_memory
from zenattn.reference import attention_ref, layer_norm_ref

from parity import ALL_BACKENDS, ALL_NORM_BACKENDS, KERNELS, TEST_DEVICE, interpreted

CPU_ONLY = pytest.mark.skipif(TEST_DEVICE != "cpu", reason="measures the CPU kernels' host memory")


def _available_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _need_memory(nbytes: int) -> None:
    have = _available_bytes()
    if have < nbytes:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB of free memory, this machine has {have / 2**30:.1f} GiB available")


# ---- memory ---------------------------------------------------------------------------------------

def _fwd_bwd_peak(backend: str, n: int, heads: int = 1, d: int = 16) -> int:
    q, k, v = (torch.randn(1, heads, n, d, requires_grad=True) for _ in range(3))
    dout = torch.randn(1, heads, n, d)

    def step():
        out = zenattn.attention(q, k, v, causal=True, backend=backend)
        return torch.autograd.grad(out, (q, k, v), dout)
    step()  # warm-up: thread pool, lazy initialization
    if backend == "cpu":  # the launchers' kept scratch: counted in the measured call, not left over from the warm-up
        assert zenattn.empty_cache() <= 16 << 20
    return peak_memory(step, torch.device("cpu"))


@CPU_ONLY
def test_attention_memory_grows_linearly_in_n():
    """Peak memory of one forward+backward (torch's allocator, through torch.profiler) at N = 4k..32k:
    each doubling of N at most doubles it (plus slack), and at 32k it is under 1/64 of one N x N fp32
    score matrix (4 GiB). Seen: 5, 10, 20, 40 MiB (outputs o, dq, dk, dv, lse and the per-chunk dK/dV
    partials of the parallel backward)."""
    peaks = {n: _fwd_bwd_peak("cpu", n) for n in (4096, 8192, 16384, 32768)}
    for n in (8192, 16384, 32768):
        assert peaks[n] <= 2.2 * peaks[n // 2], f"peak memory {peaks}: grows faster than N at N={n}"
    assert peaks[32768] <= 32768**2 * 4 / 64, f"peak {peaks[32768] / 2**20:.1f} MiB at N=32768"


@CPU_ONLY
def test_empty_cache_lets_go_of_the_kept_scratch():
    """zenattn.empty_cache() releases the cpu launchers' kept scratch: after calls that needed some
    (the backward's packs and dK/dV partials of a 1 x 4 x 256 x 64 fp32 case: 1.5 MiB, under the
    16 MiB cap) empty_cache reports it, a second empty_cache finds nothing, and the calls before
    and after it (fresh buffer, kept buffer, fresh again) agree bitwise."""
    q, k, v = (torch.randn(1, 4, 256, 64, requires_grad=True) for _ in range(3))
    dout = torch.randn(1, 4, 256, 64)

    def step():
        out = zenattn.attention(q, k, v, causal=True, backend="cpu")
        return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout))
    zenattn.empty_cache()
    first, second = step(), step()
    held = zenattn.empty_cache()
    assert 1 << 20 <= held <= 16 << 20, held
    assert zenattn.empty_cache() == 0
    for got, want, again in zip(step(), first, second):
        assert torch.equal(got, want) and torch.equal(again, want)


@CPU_ONLY
def test_memory_measurement_sees_quadratic_growth():
    """The measurement above can fail: the torch backend materializes the N x N scores and its peak
    grows about 4x per doubling of N."""
    small, large = _fwd_bwd_peak("torch", 512, heads=4), _fwd_bwd_peak("torch", 1024, heads=4)
    assert large >= 3.2 * small, (small, large)


# ---- past 2^31 elements (int64 offsets) -----------------------------------------------------------

@CPU_ONLY
def test_layer_norm_over_2_31_elements():
    rows, hidden = 2**31 // 1024 + 3, 1024      # 2^31 + 3072 elements, bf16: 4 GiB in, 4 GiB out
    _need_memory(int(1.1 * 2 * rows * hidden * 2))  # x and y; mean and rstd are small
    x = torch.empty(rows, hidden, dtype=torch.bfloat16)
    x[:] = 1.0
    picks = torch.tensor([0, rows // 2, rows - 2, rows - 1])
    x[picks] = torch.randn(len(picks), hidden).to(torch.bfloat16)  # distinct rows at both ends
    w, b = torch.randn(hidden).to(torch.bfloat16), torch.randn(hidden).to(torch.bfloat16)
    y = zenattn.layer_norm(x, (hidden,), w, b, backend="cpu")
    ref = layer_norm_ref(x[picks].double(), (hidden,), w.double(), b.double())
    torch.testing.assert_close(y[picks].double(), ref, atol=2e-2, rtol=1e-2)
    assert torch.equal(y[1], y[rows - 3])          # constant rows in between: the bias
    del x, y


@CPU_ONLY
def test_attention_over_2_31_elements():
    """q and out with 2^31 + 2048 elements (8 GiB each in fp32; k and v broadcast over the batch with
    stride 0, read in place): offsets into q and out pass 2^31."""
    batch, d = 2**23 + 8, 256
    _need_memory(int(1.1 * 2 * batch * d * 4))    # q and out; k, v and lse are small
    q = torch.empty(batch, 1, 1, d)
    q[:] = 0.5
    picks = torch.tensor([0, batch // 2, batch - 1])
    q[picks] = torch.randn(len(picks), 1, 1, d)
    k, v = torch.randn(1, 1, 2, d).expand(batch, 1, 2, d), torch.randn(1, 1, 2, d).expand(batch, 1, 2, d)
    out = zenattn.attention(q, k, v, backend="cpu")
    ref = attention_ref(q[picks].double(), k[picks].double(), v[picks].double())
    torch.testing.assert_close(out[picks].double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1], out[batch - 2])
    del q, out


# ---- determinism ----------------------------------------------------------------------------------


def repeats(backend: str) -> int:
    """The checklist's 50 passes where programs run in parallel (threads, GPU blocks); a few in
    Triton's interpreter, which runs them one at a time in a fixed order (parity.interpreted) at
    about a second per pass here."""
    return 3 if interpreted(backend) else 50


def _attention_step(backend: str, deterministic: bool):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 33, 16, requires_grad=True)
    k, v = (torch.randn(2, 2, 47, 16, requires_grad=True) for _ in range(2))
    dout, mask = torch.randn(2, 4, 33, 16), torch.randn(33, 47)

    def step():
        torch.manual_seed(1)  # the dropout seed
        out, lse = zenattn.attention(q, k, v, attn_mask=mask, causal=True, alignment="bottom_right", dropout_p=0.2,
                                     return_lse=True, deterministic=deterministic, backend=backend)
        return (out, lse, *torch.autograd.grad((out, lse), (q, k, v), (dout, torch.ones_like(lse))))
    return step


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_attention_bitwise_repeatable_over_many_runs(backend):
    """deterministic=True (GQA, so dk/dv are sums over head groups; dropout; a mask): repeats(backend)
    forward and backward passes give bitwise identical outputs, lse and gradients."""
    step = _attention_step(backend, deterministic=True)
    first = step()
    for _ in range(repeats(backend) - 1):
        for got, want in zip(step(), first):
            assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ALL_NORM_BACKENDS)
def test_norm_bitwise_repeatable_over_many_runs(backend):
    """LayerNorm and RMSNorm forward and backward (dW/dB from per-program partials): repeats(backend)
    passes give bitwise identical results."""
    x = torch.randn(67, 300, requires_grad=True)
    w, b = torch.randn(300, requires_grad=True), torch.randn(300, requires_grad=True)
    dy = torch.randn(67, 300)

    def step():
        y = zenattn.layer_norm(x, (300,), w, b, backend=backend)
        z = zenattn.rms_norm(x, (300,), w, backend=backend)
        return (y, z, *torch.autograd.grad((y, z), (x, w, b), (dy, dy)))
    first = step()
    for _ in range(repeats(backend) - 1):
        for got, want in zip(step(), first):
            assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_deterministic_algorithms_mode(backend, monkeypatch):
    """Under torch.use_deterministic_algorithms(True), every backend runs without a warning or an
    error (none of them has a non-deterministic path: no atomics anywhere), repeats bitwise, and the
    request reaches the kernels as deterministic=True even when the call does not ask."""
    seen = []
    real = zenattn.ops.attention.attention  # what the functional API calls: the op, or its eager path

    def spy(*args):
        seen.append(args[12])          # the schema's `deterministic`
        return real(*args)
    monkeypatch.setattr(zenattn.ops.attention, "attention", spy)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            step = _attention_step(backend, deterministic=False)
            first = step()
            for got, want in zip(step(), first):
                assert torch.equal(got, want)
    finally:
        torch.use_deterministic_algorithms(previous)
    if backend != "torch":
        assert seen and all(seen), seen


# ---- concurrency ----------------------------------------------------------------------------------

def _work(backend: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = 20 + seed                                   # a different shape per task
    q = torch.randn(1, 2, n, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(1, 2, n + 3, 16, generator=g, requires_grad=True) for _ in range(2))
    x = torch.randn(n, 96, generator=g, requires_grad=True)
    w = torch.randn(96, generator=g)
    out = zenattn.attention(q, k, v, causal=True, backend=backend)
    y = zenattn.layer_norm(x, (96,), w, None, backend=backend)
    grads = torch.autograd.grad((out.sum() + y.square().sum()), (q, k, v, x))
    return (out.detach(), y.detach(), *grads)


@pytest.mark.parametrize("backend", KERNELS)
def test_concurrent_calls_from_threads(backend):
    """Eight tasks on four Python threads at once (different shapes, so the Triton kernels' caches are
    filled concurrently) give bitwise the results of running them one after another."""
    tasks = list(range(8))
    alone = {t: _work(backend, t) for t in tasks}
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        together = dict(zip(tasks, pool.map(lambda t: _work(backend, t), tasks)))
    for t in tasks:
        for got, want in zip(together[t], alone[t]):
            assert torch.equal(got, want), f"task {t}"


@CPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_concurrent_cpu_calls_sharing_the_kept_scratch(dtype):
    """The cpu launchers keep one scratch buffer between calls (the brgemm packs and dK/dV partials,
    from 64 queries: test_concurrent_calls_from_threads' shapes stay below that) and each kernel
    thread its tiles: calls running at once from several Python threads (the backward runs without
    the GIL) must each get the result they get alone, bitwise, whichever call holds the buffer."""
    shapes = [(2, 4, 131, 32), (1, 8, 256, 64), (3, 2, 77, 16)]
    inputs = []
    for shape in shapes:
        q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
        inputs.append((q, k, v, torch.randn(*shape, dtype=dtype)))

    def run(i):
        q, k, v, dout = inputs[i]
        out = zenattn.attention(q, k, v, causal=True, backend="cpu")
        return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout))

    alone = [run(i) for i in range(len(shapes))]
    errors = []

    def worker(i):
        try:
            for _ in range(15):
                for a, b in zip(run(i), alone[i]):
                    assert torch.equal(a, b)
        except Exception as e:  # reported below, from the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(shapes))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]
