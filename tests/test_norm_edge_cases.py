"""LayerNorm / RMSNorm edge cases: numerical extremes, empty inputs, gradcheck, determinism, and
every CPU instruction-set build of the kernels."""

from __future__ import annotations

import glob
import textwrap

import pytest
import torch
import torch.nn.functional as F

import zenattn
from zenattn.functional.attention import draw_seed
from zenattn.reference import layer_norm_ref, norm_dropout_keep_ref, rms_norm_ref

from parity import (NORM_KERNELS, FWD_FACTOR, GRAD_FACTOR, assert_within_rule, exact_dtype, exact_tol, interpreted,
                    run_under_isa)


@pytest.fixture(params=NORM_KERNELS)
def norm_backend(request, monkeypatch):
    """Runs a test once per kernel backend, through ZENATTN_BACKEND (triton: the interpreter on CPU)."""
    monkeypatch.setenv("ZENATTN_BACKEND", request.param)
    return request.param


# ---- numerical extremes -----------------------------------------------------------------------

@pytest.mark.parametrize("value, dtype", [
    (0.0, torch.float32),       # all zeros
    (1234.0, torch.float32),    # constant away from zero
    (0.1, torch.float32),       # constant that is not a binary fraction: the mean rounds
    (1234.0, torch.float16),
    (1e4, torch.float16),       # near the top of fp16's range
    (3.0, torch.bfloat16),
])
@pytest.mark.parametrize("hidden", [7, 1023, 4096])
@pytest.mark.usefixtures("norm_backend")
def test_layer_norm_constant_rows_give_bias(value, dtype, hidden):
    """Variance 0: output is exactly beta (finite), and dx is finite."""
    x = torch.full((5, hidden), value, dtype=dtype, requires_grad=True)
    w = torch.randn(hidden).to(dtype).requires_grad_(True)
    b = torch.randn(hidden).to(dtype).requires_grad_(True)
    y = zenattn.layer_norm(x, (hidden,), w, b)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, b.detach().expand_as(y), rtol=0, atol=0)
    (dx,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert torch.isfinite(dx).all()


@pytest.mark.parametrize("hidden", [7, 1023])
@pytest.mark.usefixtures("norm_backend")
def test_rms_norm_zero_rows_are_finite(hidden):
    x = torch.zeros(4, hidden, requires_grad=True)
    y = zenattn.rms_norm(x, (hidden,), torch.randn(hidden))
    assert torch.equal(y, torch.zeros_like(y))
    (dx,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert torch.isfinite(dx).all()


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("hidden", [7, 1500])
def test_eps_zero(norm_backend, kind, hidden):
    """eps = 0 on ordinary rows: LayerNorm output has mean 0 and variance 1."""
    dtype = exact_dtype(norm_backend, "norm")
    x = torch.randn(6, hidden, dtype=torch.float64).to(dtype)
    tol = exact_tol(dtype, 1e-7, 1e-7)
    if kind == "layer_norm":
        y = zenattn.layer_norm(x, (hidden,), eps=0.0)
        torch.testing.assert_close(y.mean(-1), torch.zeros(6, dtype=dtype), atol=exact_tol(dtype, 0, 1e-12)["atol"], rtol=0)
        torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(6, dtype=dtype), **tol)
        torch.testing.assert_close(y.double(), layer_norm_ref(x.double(), hidden, eps=0.0), **tol)
    else:
        y = zenattn.rms_norm(x, (hidden,), eps=0.0)
        torch.testing.assert_close(y.square().mean(-1), torch.ones(6, dtype=dtype), **tol)
        torch.testing.assert_close(y.double(), rms_norm_ref(x.double(), hidden, eps=0.0), **tol)


@pytest.mark.parametrize("hidden", [192, 4096])
@pytest.mark.usefixtures("norm_backend")
def test_layer_norm_large_mean_offset(hidden):
    """Rows with mean 1e6 and std 1 in fp32: the deviations must survive the mean."""
    x = (torch.randn(9, hidden) + 1e6).requires_grad_(True)
    w, b = torch.randn(hidden), torch.randn(hidden)
    ours = zenattn.layer_norm(x, (hidden,), w, b)
    theirs = F.layer_norm(x, (hidden,), w, b)
    ref = layer_norm_ref(x.detach().double(), hidden, w.double(), b.double())
    assert_within_rule("offset 1e6 y", ours.detach(), theirs.detach(), ref, FWD_FACTOR, torch.float32)
    dy = torch.randn_like(ours)
    (g_ours,) = torch.autograd.grad(ours, x, dy)
    (g_theirs,) = torch.autograd.grad(theirs, x, dy)
    xr = x.detach().double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(layer_norm_ref(xr, hidden, w.double(), b.double()), xr, dy.double())
    assert_within_rule("offset 1e6 dx", g_ours, g_theirs, g_ref, GRAD_FACTOR, torch.float32)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("scale", [1e4, 6e4])
@pytest.mark.usefixtures("norm_backend")
def test_fp16_large_values(kind, scale):
    """fp16 inputs near the top of the range: statistics in fp32 keep them finite and exact."""
    x = (torch.randn(11, 512) * scale).clamp(-65000, 65000).half()
    w = torch.randn(512).half()
    if kind == "layer_norm":
        ours, theirs = zenattn.layer_norm(x, (512,), w), F.layer_norm(x, (512,), w)
        ref = layer_norm_ref(x.double(), 512, w.double())
    else:
        ours, theirs = zenattn.rms_norm(x, (512,), w, 1e-6), F.rms_norm(x, (512,), w, 1e-6)
        ref = rms_norm_ref(x.double(), 512, w.double(), 1e-6)
    assert torch.isfinite(ours).all()
    assert_within_rule(f"{kind} fp16 x{scale:g}", ours, theirs, ref, FWD_FACTOR, torch.float16)


# ---- empty inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16)])
@pytest.mark.usefixtures("norm_backend")
def test_empty_batch(kind, shape):
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    y = zenattn.layer_norm(x, (16,), w) if kind == "layer_norm" else zenattn.rms_norm(x, (16,), w)
    assert y.shape == x.shape
    dx, dw = torch.autograd.grad(y, (x, w), torch.randn_like(y))
    assert dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(dw))  # no rows: the weight gradient is exactly zero


# ---- gradcheck in float64 ----------------------------------------------------------------------
# (In Triton's interpreter, fast_mode: the full Jacobian of hidden 37 takes hundreds of interpreted
# calls, about 20 s per case; fast_mode checks the backward along random directions instead, as
# test_attention_gradcheck does, and still fails on any wrong term.)

@pytest.mark.parametrize("hidden", [1, 5, 37])
@pytest.mark.parametrize("residual", [False, True])
def test_layer_norm_gradcheck(norm_backend, hidden, residual):
    x = torch.randn(4, hidden, dtype=torch.float64, requires_grad=True)
    w = torch.randn(hidden, dtype=torch.float64, requires_grad=True)
    b = torch.randn(hidden, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, hidden, dtype=torch.float64, requires_grad=True) if residual else None
    fn = lambda x, w, b, r: zenattn.layer_norm(x, (hidden,), w, b, 1e-5, residual=r, backend=norm_backend)
    assert torch.autograd.gradcheck(fn, (x, w, b, r), fast_mode=interpreted(norm_backend))


@pytest.mark.parametrize("hidden", [1, 5, 37])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_gradcheck(norm_backend, hidden, residual):
    x = torch.randn(4, hidden, dtype=torch.float64, requires_grad=True)
    w = torch.randn(hidden, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, hidden, dtype=torch.float64, requires_grad=True) if residual else None
    fn = lambda x, w, r: zenattn.rms_norm(x, (hidden,), w, 1e-5, residual=r, backend=norm_backend)
    assert torch.autograd.gradcheck(fn, (x, w, r), fast_mode=interpreted(norm_backend))


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("used", ["y", "sum"])
def test_residual_with_one_output_unused(norm_backend, kind, used):
    """With a residual, only y used (the last block drops the sum) or only the sum: the gradients
    still match float64 torch (norm(x + r), written out), with no gradient given for the unused
    output (autograd hands the backward None for it, not a zero tensor)."""
    dtype = exact_dtype(norm_backend, "norm")
    x, r = (torch.randn(6, 24, dtype=dtype, requires_grad=True) for _ in range(2))
    w = torch.randn(24, dtype=dtype, requires_grad=True)
    g = torch.randn(6, 24, dtype=dtype)
    if kind == "layer_norm":
        y, s = zenattn.layer_norm(x, (24,), w, None, 1e-5, residual=r, backend=norm_backend)
        y_ref = F.layer_norm(x + r, (24,), w, None, 1e-5)
    else:
        y, s = zenattn.rms_norm(x, (24,), w, 1e-5, residual=r, backend=norm_backend)
        y_ref = F.rms_norm(x + r, (24,), w, 1e-5)
    out, out_ref = (y, y_ref) if used == "y" else (s, x + r)
    got = torch.autograd.grad(out, (x, r, w), g, allow_unused=True)
    want = torch.autograd.grad(out_ref, (x, r, w), g, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:  # the sum does not depend on the weight
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, b, **exact_tol(dtype, 1e-9, 1e-9))


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("residual", [False, True])
def test_dropout_gradcheck(norm_backend, kind, residual):
    """With the generator reseeded on every call, the dropped function is fixed and smooth. (Fast
    mode, random directional derivatives: the interpreted Philox makes each Triton call slow.)"""
    x = torch.randn(3, 13, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 13, dtype=torch.float64, requires_grad=True) if residual else None

    def fn(x, w, r):
        torch.manual_seed(7)
        if kind == "layer_norm":
            return zenattn.layer_norm(x, (13,), w, None, 1e-5, residual=r, dropout_p=0.4, backend=norm_backend)
        return zenattn.rms_norm(x, (13,), w, 1e-5, residual=r, dropout_p=0.4, backend=norm_backend)
    assert torch.autograd.gradcheck(fn, (x, w, r), fast_mode=True)


def test_gradcheck_noncontiguous_input():
    base = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, dtype=torch.float64, requires_grad=True)
    fn = lambda base, w: zenattn.layer_norm(base.t(), (9,), w, backend="cpu")  # last-dim stride 6
    assert torch.autograd.gradcheck(fn, (base, w))


# ---- dropout: the mask, its rate, its reproducibility ---------------------------------------------

@pytest.mark.parametrize("backend", NORM_KERNELS + ["torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dropout_draws_the_reference_mask(backend, dtype):
    """s = dropout(ones) + 0 is exactly keep / (1 - p) with the mask norm_dropout_keep_ref gives for the
    seed drawn from torch's generator: every backend draws the same mask, element for element, over
    a (2, 3, 37)-shaped input (rows flattened) and odd widths (columns not a multiple of 4)."""
    p = 0.3
    x = torch.ones(2, 3, 37, dtype=dtype)
    torch.manual_seed(11)
    _, s = zenattn.layer_norm(x, (37,), residual=torch.zeros_like(x), dropout_p=p, backend=backend)
    torch.manual_seed(11)
    keep = norm_dropout_keep_ref(int(draw_seed()), 6, 37, p).reshape(x.shape)
    assert torch.equal(s, (keep.to(dtype) * (1 / (1 - p))).to(dtype))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_rate_and_scale(p):
    """Over 2^22 elements the dropped fraction is within 0.01 of p, and kept values are x / (1 - p)."""
    x = torch.full((1024, 4096), 2.0)
    _, s = zenattn.rms_norm(x, (4096,), residual=torch.zeros_like(x), dropout_p=p, backend="cpu")
    dropped = (s == 0).float().mean().item()
    assert abs(dropped - p) < 0.01, dropped
    assert torch.equal(s[s != 0].unique(), torch.tensor([2.0 / (1 - p)]))


@pytest.mark.parametrize("backend", NORM_KERNELS + ["torch"])
def test_dropout_reproducible_from_the_generator(backend):
    """Same torch seed: the same output and gradients; another seed: another mask."""
    x = torch.randn(9, 64, requires_grad=True)
    r = torch.randn(9, 64, requires_grad=True)

    def run(seed):
        torch.manual_seed(seed)
        y, s = zenattn.layer_norm(x, (64,), residual=r, dropout_p=0.5, backend=backend)
        gx, gr = torch.autograd.grad((y * y).sum() + s.sum(), (x, r))
        return y, gx, gr

    first, again, other = run(3), run(3), run(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    # the input's gradient is zero exactly where the input was dropped; the residual's is not masked
    dropped = first[1] == 0
    assert 0.3 < dropped.float().mean() < 0.7
    assert (first[2][dropped] != 0).all()


def test_dropout_zero_is_no_dropout():
    x = torch.randn(5, 32)
    assert torch.equal(zenattn.layer_norm(x, (32,), dropout_p=0.0, backend="cpu"),
                       zenattn.layer_norm(x, (32,), backend="cpu"))


def test_dropout_compiles_fullgraph():
    """The seed is drawn inside the graph (a tensor, not a constant baked in): with the eager
    generator (aot_eager) the compiled function gives eager's output, and a new mask every call."""
    torch._dynamo.reset()
    x = torch.randn(6, 40)
    w = torch.randn(40)
    fn = lambda x, w: zenattn.rms_norm(x, (40,), w, dropout_p=0.25, backend="cpu")
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.manual_seed(2)
    eager = fn(x, w)
    torch.manual_seed(2)
    assert torch.equal(compiled(x, w), eager)
    assert not torch.equal(compiled(x, w), eager)  # the generator moved on: a fresh mask


# ---- determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_weight_grad_bitwise_repeatable_across_thread_counts(kind):
    """dw/db go through per-chunk fp32 partials whose split depends only on the shape."""
    x = torch.randn(1000, 300, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(300, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(1000, 300, dtype=torch.bfloat16)
    fn = (lambda: zenattn.layer_norm(x, (300,), w)) if kind == "layer_norm" else (lambda: zenattn.rms_norm(x, (300,), w))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            results.append(torch.autograd.grad(fn(), (x, w), dy))
    finally:
        torch.set_num_threads(threads)
    for dx, dw in results[1:]:
        assert torch.equal(dx, results[0][0]) and torch.equal(dw, results[0][1])


def test_large_row_count_weight_grad():
    """dW/dB over 65536 rows, fp32 accumulation: bf16 error within 3x of PyTorch's."""
    rows, hidden = 65536, 64
    x = torch.randn(rows, hidden).bfloat16()
    w, b = torch.randn(hidden).bfloat16(), torch.randn(hidden).bfloat16()
    dy = torch.randn(rows, hidden).bfloat16()
    grads = {}
    for impl in ("zen", "torch", "ref"):
        xs = x.double() if impl == "ref" else x
        ws, bs = [(t.double() if impl == "ref" else t).clone().requires_grad_(True) for t in (w, b)]
        if impl == "zen":
            y = zenattn.layer_norm(xs, (hidden,), ws, bs)
        elif impl == "torch":
            y = F.layer_norm(xs, (hidden,), ws, bs)
        else:
            y = layer_norm_ref(xs, hidden, ws, bs)
        grads[impl] = torch.autograd.grad(y, (ws, bs), dy.to(y.dtype))
    for i, name in enumerate(("dweight", "dbias")):
        assert_within_rule(name, grads["zen"][i], grads["torch"][i], grads["ref"][i], GRAD_FACTOR, torch.bfloat16)


@pytest.fixture
def stream_threshold():
    """Sets the bytes a cpu norm call must touch before it writes with non-temporal stores;
    restores the default afterwards."""
    ext = zenattn.backends.extension()
    yield ext._set_norm_stream_threshold
    ext._set_norm_stream_threshold(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("hidden", [
    1024,   # every row starts on a vector boundary: all rows streamed
    1023,   # rows start at every alignment: some rows streamed, some not
    9,      # shorter than one vector step
])
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm", "layer_norm residual dropout"])
def test_streaming_stores_give_the_same_bits(stream_threshold, kind, hidden, dtype):
    """Large calls write y / dx with non-temporal stores (csrc/cpu/norm.cpp): the same values as
    plain stores, forced here on small tensors with a zero threshold."""
    torch.manual_seed(0)
    x = torch.randn(37, hidden, dtype=dtype, requires_grad=True)
    w = torch.randn(hidden, dtype=dtype, requires_grad=True)
    b = torch.randn(hidden, dtype=dtype, requires_grad=True)
    r = torch.randn(37, hidden, dtype=dtype, requires_grad=True)
    dy, ds = torch.randn(37, hidden, dtype=dtype), torch.randn(37, hidden, dtype=dtype)

    def run():
        torch.manual_seed(1)
        if kind == "rms_norm":
            outs, inputs, grads = (zenattn.rms_norm(x, (hidden,), w, 1e-6),), (x, w), (dy,)
        elif kind == "layer_norm":
            outs, inputs, grads = (zenattn.layer_norm(x, (hidden,), w, b),), (x, w, b), (dy,)
        else:
            outs = zenattn.layer_norm(x, (hidden,), w, b, residual=r, dropout_p=0.2)
            inputs, grads = (x, w, b, r), (dy, ds)
        return [o.detach() for o in outs] + list(torch.autograd.grad(outs, inputs, grads))

    stream_threshold(2**62)
    plain = run()
    stream_threshold(0)
    streamed = run()
    for a, c in zip(plain, streamed):
        assert torch.equal(a, c)


def test_stream_threshold_defaults_to_the_last_level_cache():
    """The default threshold is the largest cache sysfs lists for cpu0 (32 MiB without sysfs)."""
    sizes = []
    for f in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        text = open(f).read().strip()
        sizes.append(int(text.rstrip("KM")) << {"K": 10, "M": 20}.get(text[-1], 0))
    ext = zenattn.backends.extension()
    ext._set_norm_stream_threshold(12345)
    assert ext._set_norm_stream_threshold(-1) == 12345
    assert ext._set_norm_stream_threshold(-1) == (max(sizes) if sizes else 32 << 20)


# ---- every instruction-set build -----------------------------------------------------------------

@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_every_cpu_isa_build(isa):
    """The kernels are compiled once per ISA; ATEN_CPU_CAPABILITY forces which one runs. Each must
    match the reference (ATen falls back to what the CPU supports, and so do we)."""
    code = textwrap.dedent("""
        import torch, zenattn
        from zenattn.functional.attention import draw_seed
        from zenattn.reference import layer_norm_ref, norm_dropout_keep_ref, rms_norm_ref
        torch.manual_seed(0)
        print(zenattn.info()["extension"]["cpu_isa"])
        # both store paths: plain, and non-temporal (forced on these small tensors)
        for dtype, tol, stream in [(d, t, s) for d, t in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3))
                                  for s in (2**62, 0)]:
            zenattn.backends.extension()._set_norm_stream_threshold(stream)
            for n in (7, 100, 1023):
                x = torch.randn(13, n).to(dtype).requires_grad_(True)
                w = torch.randn(n).to(dtype).requires_grad_(True)
                b = torch.randn(n).to(dtype).requires_grad_(True)
                dy = torch.randn(13, n).to(dtype)
                for kind in ("layer_norm", "rms_norm"):
                    if kind == "layer_norm":
                        y = zenattn.layer_norm(x, (n,), w, b)
                        xr, wr, br = (t.detach().double().requires_grad_(True) for t in (x, w, b))
                        yr = layer_norm_ref(xr, n, wr, br)
                        got, want = torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(yr, (xr, wr, br), dy.double())
                    else:
                        y = zenattn.rms_norm(x, (n,), w, 1e-6)
                        xr, wr = (t.detach().double().requires_grad_(True) for t in (x, w))
                        yr = rms_norm_ref(xr, n, wr, 1e-6)
                        got, want = torch.autograd.grad(y, (x, w), dy), torch.autograd.grad(yr, (xr, wr), dy.double())
                    scale = 1 + want[0].abs().max().item()
                    assert (y.double() - yr).abs().max() < tol * 10, (kind, dtype, n)
                    for g, r in zip(got, want):
                        rel = (g.double() - r).abs().max().item() / (1 + r.abs().max().item())
                        assert rel < tol * 10, (kind, dtype, n, rel)
                # the dropout mask: the same in every ISA build
                ones = torch.ones(13, n, dtype=dtype)
                torch.manual_seed(1)
                _, s = zenattn.layer_norm(ones, (n,), residual=torch.zeros_like(ones), dropout_p=0.3)
                torch.manual_seed(1)
                keep = norm_dropout_keep_ref(int(draw_seed()), 13, n, 0.3)
                assert torch.equal(s, (keep.to(dtype) / 0.7).to(dtype)), (dtype, n)
        print("ok")
    """)
    run_under_isa(code, isa)
