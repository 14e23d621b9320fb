"""The attention API around the kernels: the SDPA drop-in against torch's, bad-input errors, backend
choice, torch.library registration, torch.compile, and the returned log-sum-exp."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import zenattn
from zenattn import backends
from zenattn.ops import attention as attention_ops
from zenattn.reference import attention_ref

from parity import KERNELS, exact_dtype, exact_tol, skip_if_declined

FP32_TOL = dict(rtol=1e-5, atol=1e-5)  # fp32 vs torch's fp32 SDPA: both accumulate in fp32


# ---- scaled_dot_product_attention is a drop-in for torch's -------------------------------------------

def _t(*shape):
    return torch.randn(*shape)


# (id, q shape, k shape, v shape, extra SDPA arguments). The mask is built in the test from "mask".
SDPA_CASES = [
    ("rank 2", (13, 16), (21, 16), (21, 12), {}),
    ("rank 3", (3, 13, 16), (3, 21, 16), (3, 21, 16), {}),
    ("rank 4", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), {}),
    ("rank 5", (2, 2, 3, 13, 16), (2, 2, 3, 21, 16), (2, 2, 3, 21, 16), {}),
    ("broadcast batch of k/v", (2, 3, 13, 16), (1, 3, 21, 16), (1, 3, 21, 16), {}),
    ("broadcast heads of k/v", (2, 4, 13, 16), (2, 1, 21, 16), (2, 1, 21, 16), {}),  # SDPA broadcasts 1 head
    ("k/v of lower rank", (2, 3, 13, 16), (3, 21, 16), (21, 16), {}),
    ("broadcast rank 5", (2, 1, 3, 13, 16), (1, 2, 3, 21, 16), (1, 2, 3, 21, 16), {}),
    ("enable_gqa rank 4", (2, 6, 13, 16), (2, 2, 21, 16), (2, 2, 21, 16), dict(enable_gqa=True)),
    ("enable_gqa rank 5", (2, 2, 6, 13, 16), (2, 2, 3, 21, 16), (2, 2, 3, 21, 16), dict(enable_gqa=True)),
    ("enable_gqa rank 3", (6, 13, 16), (2, 21, 16), (2, 21, 16), dict(enable_gqa=True)),  # heads = dim -3
    ("enable_gqa equal heads", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(enable_gqa=True)),
    ("is_causal square", (2, 3, 21, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(is_causal=True)),
    ("is_causal q shorter", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(is_causal=True)),  # top-left
    ("is_causal q longer", (2, 3, 21, 16), (2, 3, 13, 16), (2, 3, 13, 16), dict(is_causal=True)),
    ("is_causal gqa", (2, 6, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(is_causal=True, enable_gqa=True)),
    ("scale", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(scale=0.37)),
    ("value head dim differs", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 7), {}),
    ("bool mask 2-D", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(mask=("bool", (13, 21)))),
    ("float mask 2-D", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(mask=("float", (13, 21)))),
    ("bool mask 4-D", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(mask=("bool", (2, 1, 13, 21)))),
    ("float mask 1-D", (2, 3, 13, 16), (2, 3, 21, 16), (2, 3, 21, 16), dict(mask=("float", (21,)))),
    ("float mask 3-D on rank 3", (3, 13, 16), (3, 21, 16), (3, 21, 16), dict(mask=("float", (3, 1, 21)))),
    ("bool mask on rank 2", (13, 16), (21, 16), (21, 16), dict(mask=("bool", (13, 21)))),
    ("float mask 5-D", (2, 2, 3, 13, 16), (2, 2, 3, 21, 16), (2, 2, 3, 21, 16),
     dict(mask=("float", (2, 1, 1, 13, 21)))),
    ("bool mask gqa scale", (2, 6, 13, 16), (2, 2, 21, 16), (2, 2, 21, 16),
     dict(enable_gqa=True, scale=0.2, mask=("bool", (6, 13, 21)))),
]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("case", SDPA_CASES, ids=[c[0] for c in SDPA_CASES])
def test_sdpa_matches_torch(case, backend):
    _, qs, ks, vs, kwargs = case
    kwargs = dict(kwargs)
    if "mask" in kwargs:
        kind, shape = kwargs.pop("mask")
        kwargs["attn_mask"] = torch.rand(shape) > 0.3 if kind == "bool" else torch.randn(shape)
    inputs = [_t(*s).requires_grad_(True) for s in (qs, ks, vs)]
    ours = zenattn.scaled_dot_product_attention(*inputs, backend=backend, **kwargs)
    if "attn_mask" in kwargs and kwargs["attn_mask"].dim() == 1:
        # torch 2.13's SDPA raises IndexError on a 1-D mask; it means the same as its (L, S) expansion
        kwargs["attn_mask"] = kwargs["attn_mask"].expand(qs[-2], ks[-2])
    theirs = F.scaled_dot_product_attention(*inputs, **kwargs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, **FP32_TOL)
    dout = torch.randn_like(theirs)
    for a, b in zip(torch.autograd.grad(ours, inputs, dout), torch.autograd.grad(theirs, inputs, dout)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **FP32_TOL)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sdpa_low_precision_dtype_and_closeness(dtype, backend):
    q, k, v = (torch.randn(2, 3, 37, 32).to(dtype) for _ in range(3))
    ours = zenattn.scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert ours.dtype == dtype
    tol = dict(rtol=1.6e-2, atol=1.6e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)  # ~1 ulp
    torch.testing.assert_close(ours, theirs, **tol)


def test_bool_mask_runs_on_the_cpu_kernels():
    """A bool mask is something the cpu kernels take (bool: may attend): the automatic choice must not
    fall back to the N x N torch reference for it, and an explicit backend="cpu" must accept it."""
    q = torch.randn(1, 2, 9, 16)
    mask = torch.rand(9, 9) > 0.3
    assert re.search(r"backend 'cpu' \(auto choice\)", zenattn.explain("attention", q, q, q, mask))
    got = zenattn.attention(q, q, q, attn_mask=mask, backend="cpu")
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, q, q, attn_mask=mask), **FP32_TOL)


# ---- bad input: a clear error that names the problem ----------------------------------------------

def _qkv(Hq=4, Hkv=4, Nq=5, Nk=7, D=8, Dv=8, dtype=torch.float32):
    return torch.randn(2, Hq, Nq, D, dtype=dtype), torch.randn(2, Hkv, Nk, D, dtype=dtype), \
        torch.randn(2, Hkv, Nk, Dv, dtype=dtype)


def _attn(**kw):
    shape = {n: kw.pop(n) for n in ("Hq", "Hkv", "Nq", "Nk", "D", "Dv", "dtype") if n in kw}
    return zenattn.attention(*_qkv(**shape), **kw)


def _sdpa(q, k, v, **kw):
    return zenattn.scaled_dot_product_attention(q, k, v, **kw)


BAD_INPUTS = [
    # (id, call, exception type, message pattern)
    ("dtype mismatch", lambda: zenattn.attention(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8).half(),
                                                 torch.randn(1, 2, 3, 8)),
     TypeError, r"query, key and value must have the same dtype, got torch.float32, torch.float16, torch.float32"),
    ("sdpa dtype mismatch", lambda: _sdpa(torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8).bfloat16()),
     TypeError, r"must have the same dtype, got torch.float32, torch.float32, torch.bfloat16"),
    ("integer inputs", lambda: zenattn.attention(*(torch.ones(1, 2, 3, 8, dtype=torch.int32),) * 3),
     TypeError, r"query has dtype torch.int32; supported: float32, float16, bfloat16, float64"),
    ("device mismatch", lambda: zenattn.attention(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8, device="meta"),
                                                  torch.randn(1, 2, 3, 8)),
     ValueError, r"must be on the same device, got cpu, meta, cpu"),
    ("mask on another device", lambda: _attn(attn_mask=torch.zeros(5, 7, device="meta")),
     ValueError, r"attn_mask is on meta but query is on cpu"),
    ("rank 3 query", lambda: zenattn.attention(torch.randn(2, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)),
     ValueError, r"query must be 4-D \(batch, heads, seq_len, head_dim\), got shape \[2, 3, 8\]"),
    ("rank 5 value", lambda: zenattn.attention(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 1, 2, 3, 8)),
     ValueError, r"value must be 4-D"),
    ("sdpa rank 1", lambda: _sdpa(torch.randn(8), torch.randn(3, 8), torch.randn(3, 8)),
     ValueError, r"query must have at least 2 dims \(seq_len, head_dim\), got shape \[8\]"),
    ("kv heads do not divide q heads", lambda: _attn(Hq=6, Hkv=4),
     ValueError, r"number of key/value heads \(4\) must divide the number of query heads \(6\)"),
    ("sdpa heads differ without enable_gqa", lambda: _sdpa(*_qkv(Hq=6, Hkv=2)),
     ValueError, r"do not broadcast \(different head counts need enable_gqa=True\)"),
    ("sdpa gqa heads do not divide", lambda: _sdpa(*_qkv(Hq=6, Hkv=4), enable_gqa=True),
     ValueError, r"with enable_gqa=True the key/value heads \(4\) must divide the query heads \(6\)"),
    ("query/key head dims differ", lambda: zenattn.attention(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 6),
                                                             torch.randn(1, 2, 3, 8)),
     ValueError, r"query and key head dims differ: 8 vs 6"),
    ("key/value lengths differ", lambda: zenattn.attention(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 4, 8),
                                                           torch.randn(1, 2, 5, 8)),
     ValueError, r"key \[1, 2, 4, 8\] and value \[1, 2, 5, 8\] must have the same heads and seq_len"),
    ("batch sizes differ", lambda: zenattn.attention(torch.randn(2, 2, 3, 8), torch.randn(1, 2, 3, 8),
                                                     torch.randn(1, 2, 3, 8)),
     ValueError, r"batch sizes differ"),
    ("int64 mask", lambda: _attn(attn_mask=torch.ones(5, 7, dtype=torch.int64)),
     TypeError, r"attn_mask must be bool, float32 or the query's dtype \(torch.float32\), got torch.int64"),
    ("sdpa int64 mask", lambda: _sdpa(*_qkv(), attn_mask=torch.ones(5, 7, dtype=torch.int64)),
     TypeError, r"attn_mask must be bool, float32 or the query's dtype \(torch.float32\), got torch.int64"),
    ("float64 mask for fp16 input", lambda: _attn(dtype=torch.float16, attn_mask=torch.zeros(5, 7, dtype=torch.float64)),
     TypeError, r"attn_mask must be bool, float32 or the query's dtype \(torch.float16\), got torch.float64"),
    ("mask shape does not broadcast", lambda: _attn(attn_mask=torch.ones(5, 3, dtype=torch.bool)),
     ValueError, r"attn_mask of shape \[5, 3\] does not broadcast to \(batch, heads, q_len, k_len\) = \[2, 4, 5, 7\]"),
    ("mask of rank 5", lambda: _attn(attn_mask=torch.zeros(1, 1, 1, 5, 7)),
     ValueError, r"attn_mask of shape \[1, 1, 1, 5, 7\] does not broadcast"),
    ("sdpa mask shape does not broadcast", lambda: _sdpa(*_qkv(), attn_mask=torch.zeros(3, 5, 7)),
     ValueError, r"attn_mask of shape \[3, 5, 7\] does not broadcast to \[2, 4, 5, 7\]"),
    ("sdpa mask with is_causal", lambda: _sdpa(*_qkv(), attn_mask=torch.zeros(5, 7), is_causal=True),
     ValueError, r"attn_mask and is_causal=True were both given"),
    ("dropout_p negative", lambda: _attn(dropout_p=-0.1), ValueError, r"dropout_p must be in \[0, 1\), got -0.1"),
    ("dropout_p one", lambda: _attn(dropout_p=1.0), ValueError, r"dropout_p must be in \[0, 1\), got 1.0"),
    ("sdpa dropout_p one", lambda: _sdpa(*_qkv(), dropout_p=1.0), ValueError, r"dropout_p must be in \[0, 1\), got 1.0"),
    ("sdpa dropout_p negative", lambda: _sdpa(*_qkv(), dropout_p=-0.1),
     ValueError, r"dropout_p must be in \[0, 1\), got -0.1"),
    ("head dim 300 on cpu", lambda: _attn(D=300, Dv=300, backend="cpu"),
     zenattn.BackendUnavailableError, r"requested backend 'cpu' cannot run here: head dims must be in 1\.\.256 for "
                                      r"backend 'cpu', got 300 \(query/key\) and 300 \(value\)"),
    ("value head dim 257 on cpu", lambda: _attn(Dv=257, backend="cpu"),
     zenattn.BackendUnavailableError, r"head dims must be in 1\.\.256 for backend 'cpu', got 8 \(query/key\) and 257"),
    ("bad alignment", lambda: _attn(causal=True, alignment="bottom-right"),
     ValueError, r"alignment must be one of \('top_left', 'bottom_right'\), got 'bottom-right'"),
    ("window not a pair", lambda: _attn(window=(1, 2, 3)),
     ValueError, r"window must be a pair \(left, right\), got \(1, 2, 3\)"),
    ("window an int", lambda: _attn(window=4), ValueError, r"window must be a pair \(left, right\), got 4"),
    ("window side negative", lambda: _attn(window=(-2, 0)),
     ValueError, r"window left must be an int >= 0, or None / -1 for unbounded; got -2"),
    ("window side float", lambda: _attn(window=(3, 1.5)), ValueError, r"window right must be an int >= 0.*got 1.5"),
    ("causal with window right > 0", lambda: _attn(causal=True, window=(4, 2)),
     ValueError, r"causal=True means window right = 0, but window=\(4, 2\) allows 2 future keys"),
    ("softcap zero", lambda: _attn(softcap=0.0), ValueError, r"softcap must be a finite number > 0 \(or None for no cap\), got 0.0"),
    ("softcap negative", lambda: _attn(softcap=-5.0), ValueError, r"softcap must be a finite number > 0 \(or None for no cap\), got -5.0"),
    ("alibi wrong length", lambda: _attn(alibi_slopes=torch.ones(3)),
     ValueError, r"alibi_slopes must be a floating tensor of shape \(4,\) or \(2, 4\), got torch.float32 \[3\]"),
    ("alibi wrong rank", lambda: _attn(alibi_slopes=torch.ones(2, 4, 1)),
     ValueError, r"alibi_slopes must be a floating tensor of shape \(4,\) or \(2, 4\), got torch.float32 \[2, 4, 1\]"),
    ("alibi integer", lambda: _attn(alibi_slopes=torch.ones(4, dtype=torch.int64)),
     ValueError, r"alibi_slopes must be a floating tensor .* got torch.int64 \[4\]"),
    ("alibi requires grad", lambda: _attn(alibi_slopes=torch.ones(4, requires_grad=True)),
     NotImplementedError, r"alibi_slopes requires grad"),
    ("mask requires grad", lambda: _attn(attn_mask=torch.zeros(5, 7, requires_grad=True)),
     NotImplementedError, r"attn_mask requires grad; zenattn gives masks no gradient"),
    ("sdpa mask requires grad", lambda: _sdpa(*_qkv(), attn_mask=torch.zeros(2, 4, 5, 7, requires_grad=True)),
     NotImplementedError, r"attn_mask requires grad"),
    ("softcap inf", lambda: _attn(softcap=float("inf")), ValueError, r"softcap must be a finite number > 0"),
    ("sdpa gqa, key and value heads differ",
     lambda: _sdpa(torch.randn(1, 6, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 3, 7, 8), enable_gqa=True),
     ValueError, r"scaled_dot_product_attention: with enable_gqa=True, key and value must have the same number"),
    ("sdpa errors name sdpa", lambda: _sdpa(*_qkv(), attn_mask=torch.zeros(5, 7, dtype=torch.int64)),
     TypeError, r"^zenattn\.scaled_dot_product_attention: attn_mask must be bool"),
    ("unknown backend", lambda: _attn(backend="tpu"), ValueError, r"backend='tpu' is not a zenattn backend"),
    ("unavailable backend", lambda: _attn(backend="cuda"),
     zenattn.BackendUnavailableError, r"zenattn attention: requested backend 'cuda' cannot run here"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_errors(case):
    _, call, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        call()


def test_kernel_boundary_checks():
    """The pybind11 boundary rejects what the Python layer would have caught, for direct callers."""
    C = backends.extension()
    q, k, v = _qkv()
    fwd = lambda q=q, k=k, v=v, mask=None, alibi=None, seed=None, softcap=0.0, left=-1, right=-1, p=0.0: \
        C.attention_fwd(q, k, v, mask, alibi, seed, 0.35, softcap, left, right, False, p)
    with pytest.raises(RuntimeError, match=r"head dims must be in 1\.\.256, got 300 \(query/key\) and 8 \(value\)"):
        fwd(q=torch.randn(2, 4, 5, 300), k=torch.randn(2, 4, 7, 300))
    with pytest.raises(RuntimeError, match=r"number of key/value heads \(3\) must divide the number of query heads \(4\)"):
        fwd(k=torch.randn(2, 3, 7, 8), v=torch.randn(2, 3, 7, 8))
    with pytest.raises(RuntimeError, match=r"must have the same dtype, got Float, Half, Float"):
        fwd(k=k.half())
    with pytest.raises(RuntimeError, match=r"must be 4-D"):
        fwd(q=q[0])
    with pytest.raises(RuntimeError, match=r"attn_mask must be bool, float32 or the query's dtype \(Float\), got Long"):
        fwd(mask=torch.ones(5, 7, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"attn_mask of shape .* does not broadcast"):
        fwd(mask=torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=r"alibi_slopes must have shape \(4,\) or \(2, 4\)"):
        fwd(alibi=torch.ones(5))
    with pytest.raises(RuntimeError, match=r"dropout_p must be in \[0, 1\), got 1"):
        fwd(p=1.0, seed=torch.tensor(3))
    with pytest.raises(RuntimeError, match=r"dropout needs an int64 seed tensor"):
        fwd(p=0.5)
    with pytest.raises(RuntimeError, match=r"softcap must be >= 0"):
        fwd(softcap=-1.0)
    with pytest.raises(RuntimeError, match=r"window sides must be >= 0, or -1 for unbounded; got \(-2, 0\)"):
        fwd(left=-2, right=0)


# ---- backend choice --------------------------------------------------------------------------------

def test_explain_names_cpu_backend():
    q = torch.randn(1, 2, 9, 64)
    assert re.search(r"zenattn attention: backend 'cpu' \(auto choice\)", zenattn.explain("attention", q))


def test_head_dim_over_limit_falls_back_to_torch():
    """D = 300: the automatic choice runs the torch backend and still gives the right answer."""
    q, k, v = (torch.randn(2, 3, n, 300, requires_grad=True) for n in (11, 17, 17))
    out = zenattn.attention(q, k, v, causal=True, alignment="bottom_right")
    ref = attention_ref(*(t.detach().double() for t in (q, k, v)), causal=True, alignment="bottom_right")
    torch.testing.assert_close(out.double(), ref, **FP32_TOL)
    sdpa = zenattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(sdpa, F.scaled_dot_product_attention(q, k, v, is_causal=True), **FP32_TOL)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref = attention_ref(*leaves, causal=True, alignment="bottom_right")
    for g, r in zip(grads, torch.autograd.grad(ref, leaves, dout.double())):
        torch.testing.assert_close(g.double(), r, **FP32_TOL)


def test_explain_accounts_for_head_dim_limit():
    """explain says which backend would run: for D = 300 that is torch, and it says why not cpu."""
    q, k, v = (torch.randn(2, 3, n, 300) for n in (11, 17, 17))
    text = zenattn.explain("attention", q, k, v)
    assert "backend 'torch'" in text and "head dims must be in 1..256" in text, text


def test_triton_declines_float64_on_gpus():
    """On CUDA tensors the triton backend refuses float64 (triton 3.6 cannot lower a float64 dot for
    sm_80), and so do the CUDA C++ kernels (float16/bfloat16 only), so the automatic choice moves on
    to torch; in the interpreter (CPU tensors) triton takes float64."""
    from types import SimpleNamespace

    from zenattn.functional.attention import _kernel_limits

    def fake(dtype, device):  # only shape, dtype and device are read: no CUDA needed
        return SimpleNamespace(shape=(2, 3, 11, 16), dtype=dtype, device=torch.device(device))

    cuda64 = (fake(torch.float64, "cuda"),) * 3
    assert "not float64" in _kernel_limits("triton", cuda64)
    assert "float16/bfloat16, got torch.float64" in _kernel_limits("cuda", cuda64)
    assert _kernel_limits("torch", cuda64) is None
    assert _kernel_limits("triton", (fake(torch.float32, "cuda"),) * 3) is None
    assert _kernel_limits("triton", (fake(torch.float64, "cpu"),) * 3) is None


def test_env_override(monkeypatch):
    q, k, v = _qkv()
    monkeypatch.setenv("ZENATTN_BACKEND", "cuda")
    with pytest.raises(zenattn.BackendUnavailableError, match="requested backend 'cuda'"):
        zenattn.attention(q, k, v)
    monkeypatch.setenv("ZENATTN_BACKEND", "torch")
    assert backends.select("attention", q, k, v).backend == "torch"
    torch.testing.assert_close(zenattn.attention(q, k, v, backend="cpu"), F.scaled_dot_product_attention(q, k, v),
                               **FP32_TOL)  # an explicit argument wins over the environment


# ---- log-sum-exp ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_return_lse_matches_logsumexp_of_scores(dtype, backend):
    """lse = logsumexp over the allowed keys of the scaled (masked, biased) scores, computed here from
    the definition; rows with no allowed key give -inf."""
    skip_if_declined(backend, dtype)
    B, H, Nq, Nk, D = 2, 3, 23, 11, 16
    q, k, v = (torch.randn(B, H, n, D).to(dtype) for n in (Nq, Nk, Nk))
    mask = torch.randn(Nq, Nk)
    scale = 0.3
    out, lse = zenattn.attention(q, k, v, attn_mask=mask, causal=True, alignment="bottom_right", scale=scale,
                                 return_lse=True, backend=backend)
    assert lse.shape == (B, H, Nq) and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    s = q.double() @ k.double().transpose(-1, -2) * scale + mask.double()
    i, j = torch.arange(Nq)[:, None], torch.arange(Nk)[None, :]
    s = s.masked_fill(j > i + (Nk - Nq), float("-inf"))   # bottom-right causal: queries 0..11 see nothing
    want = torch.logsumexp(s, dim=-1)
    empty = torch.arange(Nq) < Nq - Nk
    assert (lse[:, :, empty] == float("-inf")).all()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse[:, :, ~empty].double(), want[:, :, ~empty], **tol)
    assert out.shape == (B, H, Nq, D)


@pytest.mark.parametrize("backend", KERNELS)
def test_lse_gradient_only(backend):
    """A loss on lse alone: d lse / d s = softmax(s), so dq = scale * P @ k, dv = 0."""
    dtype = exact_dtype(backend)
    q, k, v = (torch.randn(1, 2, n, 8, dtype=dtype, requires_grad=True) for n in (5, 9, 9))
    _, lse = zenattn.attention(q, k, v, return_lse=True, backend=backend)
    dq, dk, dv = torch.autograd.grad(lse.sum(), (q, k, v))
    scale = 1 / math.sqrt(8)
    p = torch.softmax(q.detach() @ k.detach().transpose(-1, -2) * scale, dim=-1)
    tol = exact_tol(dtype, 1e-7, 1e-7)
    torch.testing.assert_close(dq, scale * p @ k.detach(), **tol)
    torch.testing.assert_close(dk, scale * p.transpose(-1, -2) @ q.detach(), **tol)
    assert torch.equal(dv, torch.zeros_like(dv))


# ---- torch.library registration -----------------------------------------------------------------

def _opcheck_cases(backend):
    ops = torch.ops.zenattn

    def qkv(Hq, Hkv, Nq, Nk, D, Dv, grad=True):
        return (torch.randn(2, Hq, Nq, D, requires_grad=grad), torch.randn(2, Hkv, Nk, D, requires_grad=grad),
                torch.randn(2, Hkv, Nk, Dv, requires_grad=grad))

    # schema order: q, k, v, attn_mask, alibi_slopes, seed, scale, softcap, window_left, window_right,
    #               bottom_right, dropout_p, deterministic, backend
    q, k, v = qkv(3, 3, 5, 7, 8, 6)
    yield f"{backend} fwd plain", ops.attention_fwd.default, (q, k, v, None, None, None, 0.35, 0.0, -1, -1, False, 0.0, False, backend)
    q, k, v = qkv(4, 2, 9, 6, 8, 8)
    mask = torch.randn(9, 6)
    yield f"{backend} fwd gqa mask alibi causal", ops.attention_fwd.default, (
        q, k, v, mask, torch.rand(4), None, 0.35, 0.0, -1, 0, True, 0.0, False, backend)
    q, k, v = qkv(2, 2, 6, 6, 8, 8)
    yield f"{backend} fwd bool mask window softcap", ops.attention_fwd.default, (
        q, k, v, torch.rand(2, 1, 6, 6) > 0.3, None, None, 0.35, 2.0, 2, 1, False, 0.0, True, backend)
    yield f"{backend} fwd dropout", ops.attention_fwd.default, (
        q, k, v, None, None, torch.tensor(12345), 0.35, 0.0, -1, -1, False, 0.3, False, backend)
    # q laid out (B, N, H, D), as a projection's view gives: out and dq follow that layout (new_like_q)
    q, k, v = (torch.randn(2, n, 3, 8).transpose(1, 2).requires_grad_() for n in (5, 7, 7))
    yield f"{backend} fwd heads-inner q", ops.attention_fwd.default, (
        q, k, v, None, None, None, 0.35, 0.0, -1, 0, False, 0.0, False, backend)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    yield f"{backend} fwd heads-inner q bf16", ops.attention_fwd.default, (
        qb, kb, vb, None, None, None, 0.35, 0.0, -1, 0, False, 0.0, False, backend)
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse, _, lse_lo = ops.attention_fwd(q, k, v, None, None, None, 0.35, 0.0, -1, 0, False, 0.0, False, backend)
    yield f"{backend} bwd heads-inner q", ops.attention_bwd.default, (
        torch.randn_like(out), q, k, v, out, lse, lse_lo, None, None, None, None, 0.35, 0.0, -1, 0, False, 0.0, False, backend)
    # backward op on plain tensors, with and without a gradient on the lse
    q, k, v = qkv(4, 2, 9, 6, 8, 8, grad=False)
    out, lse, _, lse_lo = ops.attention_fwd(q, k, v, None, None, None, 0.35, 0.0, -1, 0, True, 0.0, False, backend)
    dout = torch.randn_like(out)
    yield f"{backend} bwd", ops.attention_bwd.default, (
        dout, q, k, v, out, lse, lse_lo, None, None, None, None, 0.35, 0.0, -1, 0, True, 0.0, False, backend)
    yield f"{backend} bwd dlse", ops.attention_bwd.default, (
        dout, q, k, v, out, lse, lse_lo, torch.randn_like(lse), None, None, None, 0.35, 0.0, -1, 0, True, 0.0, False, backend)


@pytest.mark.parametrize("case", [c for b in KERNELS for c in _opcheck_cases(b)], ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_opcheck(case):
    _, op, args = case
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", KERNELS)
def test_torch_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()

    def block(q, k, v, mask, slopes):
        a = zenattn.attention(q, k, v, causal=True, alignment="bottom_right", window=(6, 0), softcap=4.0,
                              alibi_slopes=slopes, backend=backend)
        out, lse = zenattn.attention(q, k, v, attn_mask=mask, return_lse=True, backend=backend)
        b = zenattn.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, backend=backend)
        return a * 2 + out - b, lse

    q = torch.randn(2, 4, 11, 16, requires_grad=True)
    k, v = (torch.randn(2, 2, 13, 16, requires_grad=True) for _ in range(2))
    mask, slopes = torch.randn(11, 13), torch.rand(4)
    compiled = torch.compile(block, fullgraph=True)
    y_eager, lse_eager = block(q, k, v, mask, slopes)
    y_comp, lse_comp = compiled(q, k, v, mask, slopes)
    torch.testing.assert_close(y_comp, y_eager)
    torch.testing.assert_close(lse_comp, lse_eager)
    dy, dlse = torch.randn_like(y_eager), torch.randn_like(lse_eager)
    g_eager = torch.autograd.grad((y_eager, lse_eager), (q, k, v), (dy, dlse))
    g_comp = torch.autograd.grad((y_comp, lse_comp), (q, k, v), (dy, dlse))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_and_dq_follow_a_heads_inner_query(backend, dtype):
    """q from a projection, (B, N, H, D) in memory seen as (B, H, N, D): the output and dq come back
    in that layout (as torch's CPU SDPA lays out its output), so merging the heads back,
    out.transpose(1, 2).reshape(B, N, H * D), is a view and copies nothing; values as the reference."""
    B, N, H, D = 2, 70, 3, 16
    q = torch.randn(B, N, H * D, dtype=dtype).view(B, N, H, D).transpose(1, 2).requires_grad_()
    k, v = (t.view(B, N, H, D).transpose(1, 2).requires_grad_()                 # slices of a fused kv
            for t in torch.randn(B, N, 2 * H * D, dtype=dtype).split(H * D, dim=-1))
    out = zenattn.attention(q, k, v, causal=True, backend=backend)
    assert out.transpose(1, 2).is_contiguous(), out.stride()
    merged = out.transpose(1, 2).reshape(B, N, H * D)
    assert merged.data_ptr() == out.data_ptr()
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    assert dq.transpose(1, 2).is_contiguous(), dq.stride()
    ref = attention_ref(*(t.detach().double() for t in (q, k, v)), causal=True)
    tol = dict(rtol=0, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.double(), ref, **tol)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(attention_ref(q64, k64, v64, causal=True), (q64, k64, v64), dout.double())
    for got, w in zip((dq, dk, dv), want):
        torch.testing.assert_close(got.double(), w, **(dict(rtol=0, atol=6e-2) if dtype == torch.bfloat16 else tol))


@pytest.mark.parametrize("backend", KERNELS)
def test_torch_compile_of_projected_heads_matches_eager(backend):
    """A model's attention under torch.compile (inductor): heads split from a projection by a view,
    merged back by a reshape. The fake tensors must carry the kernels' real output layout; inductor
    checks it (assert_size_stride) and plans its views on it."""
    torch._dynamo.reset()
    B, N, H, D = 2, 12, 4, 8
    proj = torch.nn.Linear(H * D, 3 * H * D)

    def block(x):
        q, k, v = proj(x).view(B, N, 3, H, D).unbind(2)                     # 3 x (B, N, H, D)
        out = zenattn.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True,
                                backend=backend)
        return out.transpose(1, 2).reshape(B, N, H * D).sin()

    x = torch.randn(B, N, H * D, requires_grad=True)
    y_eager = block(x)
    y_comp = torch.compile(block, fullgraph=True)(x)
    torch.testing.assert_close(y_comp, y_eager)
    dy = torch.randn_like(y_eager)
    torch.testing.assert_close(torch.autograd.grad(y_comp, x, dy)[0], torch.autograd.grad(y_eager, x, dy)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["plain", "gqa causal mask", "dropout window", "lse only", "out and lse"])
def test_cpu_eager_cpp_autograd_equals_the_registered_op(case, dtype):
    """Eager cpu calls that track a gradient run csrc/cpu/attention_autograd.cpp; the zenattn::
    op (what torch.compile traces) runs the Python autograd registration. Same kernels, so the
    same bits: outputs and the three gradients, with the loss on the output, the lse or both."""
    if not backends.status("cpu").usable:
        pytest.skip(f"the cpu backend cannot run here: {backends.status('cpu').reason}")
    torch.manual_seed(0)
    hkv = 2 if "gqa" in case else 4
    q0 = torch.randn(2, 4, 70, 16, dtype=dtype)
    k0, v0 = torch.randn(2, hkv, 90, 16, dtype=dtype), torch.randn(2, hkv, 90, 16, dtype=dtype)
    mask = torch.rand(70, 90) > 0.2 if "mask" in case else None
    seed = torch.tensor(77) if "dropout" in case else None
    p = 0.25 if seed is not None else 0.0
    window_right = 0 if "causal" in case else -1
    window_left = 20 if "window" in case else -1

    def run(native: bool):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        args = (q, k, v, mask, None, seed, 0.3, 0.0, window_left, window_right, True, p, False, "cpu")
        out, lse, *_ = attention_ops.attention(*args) if native else torch.ops.zenattn.attention_fwd(*args)
        assert ("AttentionFunction" in out.grad_fn.name()) == native, out.grad_fn.name()
        weights = torch.linspace(-1, 1, out.shape[-1])
        loss = {"lse only": lse.sum(), "out and lse": (out.float() * weights).sum() + lse.sum()}.get(
            case, (out.float() * weights).sum())
        loss.backward()
        return [out, lse, q.grad, k.grad, v.grad]

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", KERNELS)
def test_double_backward_raises_instead_of_silent_zeros(backend):
    """The kernels' backward has no derivative: differentiating it must fail loudly, not give 0.
    (The eager cpu path, whose autograd is C++, refuses create_graph=True itself; the others at
    the second backward.)"""
    q, k, v = (t.requires_grad_(True) for t in _qkv())
    out = zenattn.attention(q, k, v, backend=backend)
    with pytest.raises(RuntimeError, match="not differentiable"):
        (gq,) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
        gq.sum().backward()


def test_autocast_keeps_float64_and_casts_float32():
    q, k, v = _qkv(dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert zenattn.scaled_dot_product_attention(q, k, v).dtype == torch.float64
        assert zenattn.scaled_dot_product_attention(q.float(), k.float(), v.float()).dtype == torch.bfloat16
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        assert zenattn.scaled_dot_product_attention(q.float(), k.float(), v.float()).dtype == ref.dtype
