"""The norm API around the kernels: bad-input errors, backend choice, torch.library registration,
torch.compile, and the drop-in modules."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

import zenattn
from zenattn import backends


# ---- bad input: a clear error that names the problem ----------------------------------------------

def _ln(x, shape, w=None, b=None, **kw):
    return zenattn.layer_norm(x, shape, w, b, **kw)


def _rms(x, shape, w=None, **kw):
    return zenattn.rms_norm(x, shape, w, **kw)


BAD_INPUTS = [
    # (id, call, exception type, message pattern)
    ("normalized_shape mismatch", lambda: _ln(torch.randn(4, 8), (6,)), RuntimeError,
     r"normalized_shape=\[6\], expected input with shape \[\*, 6\], but got input of size \[4, 8\]"),
    ("normalized_shape longer than input", lambda: _rms(torch.randn(8), (2, 8)), RuntimeError,
     r"normalized_shape=\[2, 8\]"),
    ("empty normalized_shape", lambda: _ln(torch.randn(4, 8), ()), ValueError,
     r"normalized_shape must have at least one dimension"),
    ("weight of the wrong size", lambda: _ln(torch.randn(4, 8), (8,), torch.randn(7)), RuntimeError,
     r"weight has shape \[7\], expected normalized_shape \[8\]"),
    ("bias of the wrong size", lambda: _ln(torch.randn(4, 8), (8,), torch.randn(8), torch.randn(9)),
     RuntimeError, r"bias has shape \[9\], expected normalized_shape \[8\]"),
    ("weight dtype mismatch", lambda: _ln(torch.randn(4, 8), (8,), torch.randn(8).half()), RuntimeError,
     r"weight has dtype torch.float16 but input has dtype torch.float32"),
    ("rms weight dtype mismatch", lambda: _rms(torch.randn(4, 8).bfloat16(), (8,), torch.randn(8).half()),
     RuntimeError, r"weight has dtype torch.float16 but input has dtype torch.bfloat16"),
    ("residual dtype mismatch", lambda: _ln(torch.randn(4, 8).half(), (8,), residual=torch.randn(4, 8)),
     RuntimeError, r"residual has dtype torch.float32 but input has dtype torch.float16"),
    ("weight device mismatch", lambda: _ln(torch.randn(4, 8), (8,), torch.randn(8, device="meta")),
     RuntimeError, r"weight is on meta but input is on cpu"),
    ("residual shape mismatch", lambda: _ln(torch.randn(4, 8), (8,), residual=torch.randn(3, 8)),
     RuntimeError, r"residual has shape \[3, 8\] but input has shape \[4, 8\]"),
    ("integer input to the cpu kernel", lambda: _ln(torch.ones(4, 8, dtype=torch.int32), (8,), backend="cpu"),
     zenattn.BackendUnavailableError, r"supports float32/float16/bfloat16/float64, got torch.int32"),
    ("dropout_p of 1", lambda: _ln(torch.randn(4, 8), (8,), dropout_p=1.0), ValueError,
     r"layer_norm: dropout_p must be in \[0, 1\), got 1.0"),
    ("negative dropout_p", lambda: _rms(torch.randn(4, 8), (8,), dropout_p=-0.1), ValueError,
     r"rms_norm: dropout_p must be in \[0, 1\), got -0.1"),
    ("dropout_p not a number", lambda: _ln(torch.randn(4, 8), (8,), dropout_p="0.1"), ValueError,
     r"dropout_p must be in \[0, 1\), got '0.1'"),
    ("unknown backend", lambda: _ln(torch.randn(4, 8), (8,), backend="tpu"), ValueError,
     r"'tpu' is not a zenattn backend"),
    ("unavailable backend", lambda: _ln(torch.randn(4, 8), (8,), backend="cuda"),
     zenattn.BackendUnavailableError, r"requested backend 'cuda' cannot run here"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_errors(case):
    _, call, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        call()


def test_kernel_boundary_checks():
    """The pybind11 boundary rejects what the Python layer would have caught, for direct callers."""
    C = backends.extension()
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match=r"weight must have shape \(8,\).*got \[5\]"):
        C.norm_fwd(x, torch.randn(5), None, None, 1e-5, False, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"input has dtype Long; supported"):
        C.norm_fwd(x.long(), None, None, None, 1e-5, True, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"residual has dtype Half but input has dtype Float"):
        C.norm_fwd(x, None, None, x.half(), 1e-5, False, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"expected input on the CPU, got it on meta"):
        C.norm_fwd(x.to("meta"), None, None, None, 1e-5, False, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"dropout_p must be in \[0, 1\), got 1"):
        C.norm_fwd(x, None, None, None, 1e-5, False, 0, 1.0)
    with pytest.raises(RuntimeError, match=r"RMSNorm takes no bias"):
        C.norm_fwd(x, None, torch.randn(8), None, 1e-5, True, 0, 0.0)
    y, _, mean, rstd = C.norm_fwd(x, None, None, None, 1e-5, False, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"grad_output has shape \[4, 7\]"):
        C.norm_bwd(torch.randn(4, 7), None, x, None, mean, rstd, False, 0.0, False, 0, 0.0, False)
    with pytest.raises(RuntimeError, match=r"needs the mean"):
        C.norm_bwd(y, None, x, None, None, rstd, False, 0.0, False, 0, 0.0, False)


# ---- backend choice ------------------------------------------------------------------------------

def test_info_reports_every_backend():
    info = zenattn.info()
    assert info["zenattn"] == zenattn.__version__
    assert set(info["backends"]) == {"triton", "cuda", "cpu", "torch"}
    assert info["backends"]["cpu"]["usable"] and info["backends"]["torch"]["usable"]
    for name, st in info["backends"].items():
        assert st["reason"], f"{name} has no reason"
    assert info["extension"]["cpu_isa"] in {"DEFAULT", "AVX2", "AVX512"}
    if not torch.cuda.is_available():
        assert not info["backends"]["cuda"]["usable"]


def test_explain_names_choice_and_skips():
    x = torch.randn(2, 8)
    assert re.search(r"backend 'cpu' \(auto choice\)", zenattn.explain("layer_norm", x))
    text = zenattn.explain("layer_norm", x.to(torch.int64))
    assert "backend 'torch'" in text and "skipped 'cpu'" in text


def test_env_override(monkeypatch):
    x = torch.randn(3, 16)
    monkeypatch.setenv("ZENATTN_BACKEND", "torch")
    assert backends.select("layer_norm", x).backend == "torch"
    monkeypatch.setenv("ZENATTN_BACKEND", "cuda")
    with pytest.raises(zenattn.BackendUnavailableError, match="requested backend 'cuda'"):
        zenattn.layer_norm(x, (16,))
    # an explicit argument wins over the environment
    torch.testing.assert_close(zenattn.layer_norm(x, (16,), backend="cpu"), F.layer_norm(x, (16,)))


def test_extension_failure_is_reported_not_raised(monkeypatch):
    """If _C cannot load, importing still works and info() says why."""
    monkeypatch.setattr(backends, "_extension", lambda: (None, "zenattn._C failed to load: test"))
    backends.refresh()
    try:
        st = backends.status("cpu")
        assert not st.usable and "failed to load: test" in st.reason
        x = torch.randn(2, 8)
        assert backends.select("layer_norm", x).backend == "torch"
    finally:
        monkeypatch.undo()
        backends.refresh()


# ---- torch.library registration --------------------------------------------------------------

def _opcheck_cases():
    # The cpu backend's ops, so CPU tensors whatever the tests' default device (ZENATTN_TEST_DEVICE).
    x = torch.randn(5, 24, device="cpu", requires_grad=True)
    w = torch.randn(24, device="cpu", requires_grad=True)
    b = torch.randn(24, device="cpu", requires_grad=True)
    r = torch.randn(5, 24, device="cpu", requires_grad=True)
    seed = torch.tensor(1234, dtype=torch.int64, device="cpu")
    ops = torch.ops.zenattn
    yield "ln", ops.layer_norm_fwd.default, (x, w, b, None, None, 1e-5, 0.0, "cpu")
    yield "ln residual", ops.layer_norm_fwd.default, (x, w, b, r, None, 1e-5, 0.0, "cpu")
    yield "ln no affine", ops.layer_norm_fwd.default, (x, None, None, None, None, 1e-5, 0.0, "cpu")
    yield "ln dropout", ops.layer_norm_fwd.default, (x, w, b, None, seed, 1e-5, 0.3, "cpu")
    yield "ln residual dropout", ops.layer_norm_fwd.default, (x, w, b, r, seed, 1e-5, 0.3, "cpu")
    yield "rms", ops.rms_norm_fwd.default, (x, w, None, None, 1e-6, 0.0, "cpu")
    yield "rms residual", ops.rms_norm_fwd.default, (x, w, r, None, 1e-6, 0.0, "cpu")
    yield "rms residual dropout", ops.rms_norm_fwd.default, (x, w, r, seed, 1e-6, 0.3, "cpu")
    y, s, mean, rstd = ops.layer_norm_fwd(x.detach(), w.detach(), b.detach(), None, None, 1e-5, 0.0, "cpu")
    dy = torch.randn(5, 24, device="cpu")
    yield "ln bwd", ops.layer_norm_bwd.default, (dy, None, x.detach(), w.detach(), mean, rstd, None, 0.0, True,
                                                 False, "cpu")
    yield "ln bwd dropout", ops.layer_norm_bwd.default, (dy, dy, x.detach(), w.detach(), mean, rstd, seed, 0.3,
                                                         True, True, "cpu")
    _, _, rstd2 = ops.rms_norm_fwd(x.detach(), w.detach(), None, None, 1e-6, 0.0, "cpu")
    yield "rms bwd", ops.rms_norm_bwd.default, (dy, dy, x.detach(), w.detach(), rstd2, None, 1e-6, 0.0, True, "cpu")
    yield "rms bwd dropout", ops.rms_norm_bwd.default, (dy, None, x.detach(), w.detach(), rstd2, seed, 1e-6, 0.3,
                                                        False, "cpu")


@pytest.mark.parametrize("case", list(_opcheck_cases()), ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_opcheck(case):
    _, op, args = case
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_torch_compile_fullgraph_matches_eager(kind):
    torch._dynamo.reset()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(32, 32)
            self.norm = zenattn.nn.LayerNorm(32) if kind == "layer_norm" else zenattn.nn.RMSNorm(32)

        def forward(self, x, r):
            y, s = self.norm(self.proj(x), residual=r)
            return y * 2 + s

    model = Block()
    x, r = torch.randn(3, 7, 32), torch.randn(3, 7, 32)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x, r), model(x, r))
    # gradients through the compiled graph too
    g_eager = torch.autograd.grad(model(x, r).sum(), list(model.parameters()))
    g_comp = torch.autograd.grad(compiled(x, r).sum(), list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


# ---- drop-in modules -----------------------------------------------------------------------------

MODULE_CASES = [
    ("LayerNorm", dict(normalized_shape=48)),
    ("LayerNorm", dict(normalized_shape=(6, 8), eps=1e-6)),
    ("LayerNorm", dict(normalized_shape=48, elementwise_affine=False)),
    ("LayerNorm", dict(normalized_shape=48, bias=False)),
    ("RMSNorm", dict(normalized_shape=48)),
    ("RMSNorm", dict(normalized_shape=48, eps=1e-5)),
    ("RMSNorm", dict(normalized_shape=(6, 8), elementwise_affine=False)),
]


@pytest.mark.parametrize("name, kwargs", MODULE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_module_is_drop_in(name, kwargs, dtype):
    theirs = getattr(torch.nn, name)(**kwargs, dtype=dtype)
    ours = getattr(zenattn.nn, name)(**kwargs, dtype=dtype)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(theirs)
    # random affine parameters, then state_dict both ways
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    back = getattr(torch.nn, name)(**kwargs, dtype=dtype)
    back.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, v in back.state_dict().items():
        assert torch.equal(v, theirs.state_dict()[k])

    shape = kwargs["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else shape
    x = torch.randn(4, 5, *shape, dtype=dtype)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb)
    tol = dict(rtol=1.6e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ya, yb, **tol)
    dy = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [xa, *ours.parameters()], dy)
    gb = torch.autograd.grad(yb, [xb, *theirs.parameters()], dy)
    for a, b in zip(ga, gb):
        if dtype == torch.bfloat16:  # sums over 20 rows of bf16 products
            torch.testing.assert_close(a, b, rtol=3e-2, atol=6e-2)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_module_deepcopy_and_backend_pin():
    m = zenattn.nn.LayerNorm(16, backend="torch")
    m2 = copy.deepcopy(m)
    assert m2.backend == "torch"
    x = torch.randn(2, 16)
    torch.testing.assert_close(m2(x), F.layer_norm(x, (16,), m.weight, m.bias))


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm"])
def test_mixed_precision_and_cpu_autocast_like_torch(name):
    """bf16 activations with fp32 parameters: output in bf16, as torch gives, in and out of autocast."""
    ours, theirs = getattr(zenattn.nn, name)(32), getattr(torch.nn, name)(32)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 32).bfloat16()
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got, want = ours(x), theirs(x)
        assert got.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=3e-2)
    xa = x.clone().requires_grad_(True)
    (dw,) = torch.autograd.grad(ours(xa).float().sum(), [ours.weight])
    assert dw.dtype == torch.float32


def test_triton_needs_cuda_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(zenattn.BackendUnavailableError,
                       match=r"requested backend 'triton' cannot run here: backend 'triton' runs on cuda tensors"):
        zenattn.rms_norm(torch.randn(4, 8), (8,), backend="triton")


def test_triton_hidden_size_limit():
    with pytest.raises(ValueError, match=r"hidden size 65537 is over the Triton kernels' limit 65536"):
        zenattn.layer_norm(torch.randn(2, 65537), (65537,), backend="triton")


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_triton_norm_compiles_fullgraph(kind):
    x = torch.randn(6, 40, requires_grad=True)
    w = torch.randn(40, requires_grad=True)
    fn = (lambda x, w: zenattn.layer_norm(x, (40,), w, backend="triton")) if kind == "layer_norm" else \
        (lambda x, w: zenattn.rms_norm(x, (40,), w, backend="triton"))
    compiled = torch.compile(fn, fullgraph=True)
    got, want = compiled(x, w), fn(x, w)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), (x, w)), torch.autograd.grad(want.sum(), (x, w)))


# ---- higher-order gradients -------------------------------------------------------------------------

@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("module", [zenattn.nn.LayerNorm, zenattn.nn.RMSNorm])
def test_double_backward_raises_instead_of_silent_zeros(module, residual):
    """The kernels' backward has no derivative: a second backward through it must fail loudly (torch
    alone would only warn and treat it as constant: a wrong, zero second derivative), while the
    torch backend gives the true one."""
    torch.manual_seed(0)
    x, r = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)

    def first_grad(norm):
        y = norm(x, residual=r)[0] if residual else norm(x)
        return torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)[0]

    probe = torch.randn(4, 8)  # not all ones: a LayerNorm's gradient always sums to 0 over a row
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad((first_grad(module(8)) * probe).sum(), x)
    (second,) = torch.autograd.grad((first_grad(module(8, backend="torch")) * probe).sum(), x)
    assert second.abs().sum() > 0


# ---- the C++ autograd of the eager cpu path ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["ln", "ln affine", "ln residual", "ln residual dropout", "rms", "rms affine residual",
                                  "rms dropout"])
def test_cpu_eager_cpp_autograd_equals_the_registered_op(case, dtype):
    """Eager cpu calls that track a gradient run csrc/cpu/norm_autograd.cpp; torch.ops.zenattn.*
    (what torch.compile traces) runs the Python autograd registration. Same kernels, so the same
    bits: outputs and every gradient, including unused outputs (no grad) and dropout's mask."""
    if not backends.status("cpu").usable:
        pytest.skip(f"the cpu backend cannot run here: {backends.status('cpu').reason}")
    torch.manual_seed(0)
    rms, affine, residual, p = "rms" in case, "affine" in case, "residual" in case, 0.3 if "dropout" in case else 0.0
    x0, r0 = torch.randn(6, 5, 24, dtype=dtype), torch.randn(6, 5, 24, dtype=dtype)
    w0, b0 = torch.randn(24, dtype=dtype), torch.randn(24, dtype=dtype)
    seed = torch.tensor(1234)

    def run(native: bool):
        x, r, w, b = (t.clone().requires_grad_() for t in (x0, r0, w0, b0))
        args = (w if affine else None,) + (() if rms else (b if affine else None,))
        args = (x, *args, r if residual else None, seed if p else None, 1e-5, p, "cpu")
        op = zenattn.ops.norm.rms_norm if rms else zenattn.ops.norm.layer_norm
        outs = op(*args) if native else (torch.ops.zenattn.rms_norm_fwd if rms else torch.ops.zenattn.layer_norm_fwd)(*args)
        y, s = outs[0], outs[1]
        assert ("NormFunction" in y.grad_fn.name()) == native, y.grad_fn.name()
        loss = (y.float() * torch.linspace(-1, 1, 24)).sum() + (s.float().pow(2).sum() if residual else 0)
        loss.backward()
        return [y, s] + [t.grad for t in (x, r, w, b)]

    for a, b in zip(run(True), run(False)):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)
