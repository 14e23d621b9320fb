"""The shared parity harness: the correctness rule of DESIGN.md section 4, the backends every
test runs, and the checks that run one case through zenattn, PyTorch and the float64 reference.

Against a high-precision reference (float64), a zenattn result may be off by at most
``factor`` x the error of PyTorch's own implementation run in the same precision, plus a small
absolute floor for cases where PyTorch happens to be exact (error 0).

Backends: ``KERNELS`` (attention) and ``NORM_KERNELS`` are the kernel backends of the test device,
``ALL_BACKENDS`` / ``ALL_NORM_BACKENDS`` add the pure-PyTorch one. A backend listed here must work: a broken build fails the tests instead of
vanishing from them. Adding a backend here adds it to every test that takes ``KERNELS``.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import zenattn
from zenattn.functional.attention import draw_seed
from zenattn.reference import attention_ref, dropout_keep_ref, layer_norm_ref, norm_dropout_keep_ref, rms_norm_ref

# Where the tests make their tensors (conftest.py makes it the default device).
TEST_DEVICE = os.environ.get("ZENATTN_TEST_DEVICE", "cpu")


def kernel_backends(device: str, op: str) -> list[str]:
    """The kernel backends that must pass every test of ``op`` on ``device``: on the CPU the C++
    kernels and the Triton kernels in Triton's interpreter; on CUDA the Triton kernels, and the CUDA
    C++ ones where they cover the op's whole contract and the extension was built with them (the
    norms). The CUDA C++ attention covers a subset (zenattn/cuda/attention.py); its own tests,
    tests/test_cuda_attention.py, run it on that subset."""
    if device == "cpu":
        return ["cpu", "triton"]
    cuda_built = bool(zenattn.info()["extension"].get("cuda"))
    full_contract = op != "attention"
    return ["triton"] + (["cuda"] if cuda_built and full_contract and zenattn.backends.has_kernel("cuda", op) else [])


def interpreted(backend: str) -> bool:
    """Whether ``backend`` runs in Triton's interpreter here: its programs run one after another in
    a fixed order on one thread, so repeated calls can differ only through what a kernel reads
    unwritten (uninitialized memory), which a few repeats show as well as many."""
    return backend == "triton" and TEST_DEVICE == "cpu"


def exact_dtype(backend: str, op: str = "attention") -> torch.dtype:
    """The most precise dtype ``backend`` computes ``op`` (attention or norm) in on the test device:
    float64, except where it declines float64: the CUDA C++ kernels, and the Triton attention kernels
    on a GPU (test_triton_declines_float64_on_gpus)."""
    declines = backend == "cuda" or (backend == "triton" and op == "attention" and TEST_DEVICE == "cuda")
    return torch.float32 if declines else torch.float64


def exact_tol(dtype: torch.dtype, rtol: float, atol: float) -> dict:
    """``rtol``/``atol`` (float64 tolerances), or in float32 a few rounding steps of the result."""
    return dict(rtol=rtol, atol=atol) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)


def skip_if_declined(backend: str, dtype: torch.dtype) -> None:
    """Skip a float64 case of a backend that declines float64 here (that refusal is itself tested)."""
    if dtype == torch.float64 and exact_dtype(backend) != torch.float64:
        pytest.skip(f"the {backend} backend declines float64 on {TEST_DEVICE} (test_triton_declines_float64_on_gpus)")


KERNELS = kernel_backends(TEST_DEVICE, "attention")
ALL_BACKENDS = KERNELS + ["torch"]
NORM_KERNELS = kernel_backends(TEST_DEVICE, "layer_norm")
ALL_NORM_BACKENDS = NORM_KERNELS + ["torch"]
DROPOUT_SEED = 1234  # torch.manual_seed before the zenattn call, so the keep mask is known

FWD_FACTOR = 2.0    # outputs
GRAD_FACTOR = 3.0   # gradients

# Absolute floor per dtype, about one rounding step of an O(1) value in that dtype: PyTorch can
# land exactly on the reference where we round the other way, and 2 x 0 would then demand
# bit-exactness.
ATOL_FLOOR = {
    torch.float64: 1e-12,   # fp64 unit roundoff 1.1e-16; headroom for O(N) sums
    torch.float32: 2e-6,    # fp32 ulp of 1.0 is 1.2e-7; outputs reach |y| ~ 10
    torch.float16: 2e-3,    # fp16 ulp of 1.0 is 9.8e-4
    torch.bfloat16: 1.6e-2,  # bf16 ulp of 1.0 is 7.8e-3
}


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    return (out.double() - ref.double()).abs().max().item()


# Every check made through assert_within_rule with a ``where``: (op, backend, dtype, result name,
# zenattn's error, torch's error, the bound). tests/conftest.py writes them out for
# docs/reliability.md when ZENATTN_RELIABILITY_JSON names a file.
RECORDS: list = []


def assert_within_rule(name: str, ours: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor,
                       factor: float, dtype: torch.dtype, where: tuple = None) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(ours).all() or not torch.isfinite(ref).all(), f"{name}: non-finite values"
    ours_err, torch_err = max_err(ours, ref), max_err(theirs, ref)
    bound = factor * torch_err + ATOL_FLOOR[dtype]
    if where is not None:
        RECORDS.append((*where, str(dtype).replace("torch.", ""), name, ours_err, torch_err, bound))
    assert ours_err <= bound, (f"{' '.join(where) + ' ' if where else ''}{name}: zenattn max error {ours_err:.3e} > {factor} x torch's "
                               f"{torch_err:.3e} + floor {ATOL_FLOOR[dtype]:.0e} ({dtype})")


# ---- attention ----------------------------------------------------------------------------------

def make_qkv(B, Hq, Hkv, Nq, Nk, D, Dv, dtype, scale=1.0):
    q = (torch.randn(B, Hq, Nq, D) * scale).to(dtype)
    k = (torch.randn(B, Hkv, Nk, D) * scale).to(dtype)
    v = torch.randn(B, Hkv, Nk, Dv).to(dtype)
    return q, k, v


def sdpa_equivalent(q, k, v, *, attn_mask=None, causal=False, alignment="top_left", window=None,
                    alibi_slopes=None, scale=None, softcap=None, dropout_p=0.0):
    """torch's SDPA on the same case, with causal / window / ALiBi / mask folded into one dense mask."""
    assert softcap is None and dropout_p == 0.0, "SDPA cannot express these"
    nq, nk = q.shape[-2], k.shape[-2]
    offset = nk - nq if alignment == "bottom_right" else 0
    rel = torch.arange(nq)[:, None] + offset - torch.arange(nk)[None, :]   # i + offset - j
    allowed = torch.ones(nq, nk, dtype=torch.bool)
    left, right = window if window is not None else (None, None)
    if causal:
        allowed &= rel >= 0
    if left is not None and left >= 0:
        allowed &= rel <= left
    if right is not None and right >= 0:
        allowed &= rel >= -right
    bias = None
    if alibi_slopes is not None:
        slopes = alibi_slopes[..., None, None]                              # (H, 1, 1) or (B, H, 1, 1)
        bias = -slopes * rel.abs()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        allowed = allowed & attn_mask
    elif attn_mask is not None:
        bias = attn_mask.float() if bias is None else bias + attn_mask.float()
    if bias is None:
        mask = allowed
    else:
        mask = bias.masked_fill(~allowed, float("-inf")).to(q.dtype)
    # On CUDA, torch's plain computation: SDPA's math backend. The one torch picks for a mask (memory
    # efficient) gave NaN query gradients for a negative scale in bf16/fp16 (torch 2.11, H200).
    with sdpa_kernel(SDPBackend.MATH) if q.device.type == "cuda" else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])


def dropout_keep(opts, q, k):
    """The keep mask the kernel will draw when called right after torch.manual_seed(DROPOUT_SEED)."""
    if not opts.get("dropout_p"):
        return None
    torch.manual_seed(DROPOUT_SEED)
    seed = int(draw_seed())
    B, Hq, Nq, Nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    return dropout_keep_ref(seed, B, Hq, Nq, Nk, opts["dropout_p"], q.device)


def run_attention(impl, q, k, v, dout, opts, keep, backend="cpu"):
    """Forward + backward of one implementation: (out, (dq, dk, dv)). impl: "zen" (zenattn),
    "torch" (PyTorch's own, same dtype), "ref" (float64 from the definition)."""
    leaves = [(t.double() if impl == "ref" else t).detach().requires_grad_(True) for t in (q, k, v)]
    if impl == "zen":
        torch.manual_seed(DROPOUT_SEED)
        out = zenattn.attention(*leaves, backend=backend, **opts)
    elif impl == "ref":
        out = attention_ref(*leaves, dropout_keep=keep, **opts)
    elif opts.get("softcap") or opts.get("dropout_p"):
        out = attention_ref(*leaves, dropout_keep=keep, upcast=False, **opts)
    else:
        out = sdpa_equivalent(*leaves, **opts)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return out.detach(), grads


def check_attention_parity(q, k, v, opts, dtype, backend="cpu"):
    dout = torch.randn(q.shape[0], q.shape[1], q.shape[2], v.shape[3]).to(dtype)  # random upstream grad
    keep = dropout_keep(opts, q, k)
    ours, theirs, ref = (run_attention(impl, q, k, v, dout, opts, keep, backend) for impl in ("zen", "torch", "ref"))
    assert ours[0].dtype == dtype
    where = ("attention", backend)
    assert_within_rule("out", ours[0], theirs[0], ref[0], FWD_FACTOR, dtype, where)
    for name, o, t, r in zip(("dq", "dk", "dv"), ours[1], theirs[1], ref[1]):
        assert o.dtype == dtype
        assert_within_rule(name, o, t, r, GRAD_FACTOR, dtype, where)


# ---- LayerNorm / RMSNorm --------------------------------------------------------------------------

def make_x(layout: str, rows: int, hidden: int, dtype, scale=1.0, offset=0.0):
    """(leaf, view): the leaf gets the gradient, the view is what the op sees."""
    if layout == "contiguous":
        leaf = torch.randn(rows, hidden) * scale + offset
        view = lambda t: t
    elif layout == "sliced":        # rows of a wider buffer: row stride != hidden, read in place
        leaf = torch.randn(rows, hidden + 5) * scale + offset
        view = lambda t: t[:, :hidden]
    elif layout == "transposed":    # last-dim stride != 1: must be copied, never misread
        leaf = torch.randn(hidden, rows) * scale + offset
        view = lambda t: t.t()
    elif layout == "expanded":      # one row broadcast over all rows (row stride 0)
        leaf = torch.randn(1, hidden) * scale + offset
        view = lambda t: t.expand(rows, hidden)
    else:
        raise ValueError(layout)
    return leaf.to(dtype), view


def norm_dropout_keep(dropout_p, shape):
    """The norm keep mask the kernels draw when called right after torch.manual_seed(DROPOUT_SEED)."""
    if not dropout_p:
        return None
    torch.manual_seed(DROPOUT_SEED)
    seed = int(draw_seed())
    return norm_dropout_keep_ref(seed, math.prod(shape[:-1]), shape[-1], dropout_p).reshape(shape)


def run_norm(kind, impl, backend, leaf, view, weight, bias, residual, eps, dy, dsum, dropout_p=0.0, keep=None):
    """Forward + backward of one implementation. Returns (outputs, grads) as float64-comparable
    tensors. impl: "zen" (zenattn, the given backend), "torch" (torch.nn.functional, with the dropout
    as F.dropout computes it: in the input's dtype), "ref" (float64). ``keep``: the dropout mask."""
    as_leaf = lambda t: None if t is None else (t.double() if impl == "ref" else t).detach().clone().requires_grad_(True)
    x_leaf, w, b, r = as_leaf(leaf), as_leaf(weight), as_leaf(bias), as_leaf(residual)
    x = view(x_leaf)
    shape = (x.shape[-1],)
    if impl == "zen":
        torch.manual_seed(DROPOUT_SEED)
        if kind == "layer_norm":
            out = zenattn.layer_norm(x, shape, w, b, eps, residual=r, dropout_p=dropout_p, backend=backend)
        else:
            out = zenattn.rms_norm(x, shape, w, eps, residual=r, dropout_p=dropout_p, backend=backend)
    elif impl == "torch":
        s = x if keep is None else x * keep.to(x.dtype) * (1.0 / (1.0 - dropout_p))
        s = s if r is None else s + r
        y = F.layer_norm(s, shape, w, b, eps) if kind == "layer_norm" else F.rms_norm(s, shape, w, eps)
        out = y if r is None else (y, s)
    else:
        kw = dict(residual=r, dropout_p=dropout_p, dropout_keep=keep)
        if kind == "layer_norm":
            out = layer_norm_ref(x, shape, w, b, eps, **kw)
        else:
            out = rms_norm_ref(x, shape, w, eps, **kw)
    outs = out if isinstance(out, tuple) else (out,)
    loss = (outs[0].double() * dy.double()).sum()
    if len(outs) > 1:
        loss = loss + (outs[1].double() * dsum.double()).sum()
    params = [t for t in (x_leaf, w, b, r) if t is not None]
    grads = torch.autograd.grad(loss, params) if loss.requires_grad else ()
    return [o.detach() for o in outs], list(grads)


def check_norm_parity(kind, leaf, view, weight, bias, residual, eps, dtype, backend, dropout_p=0.0):
    x = view(leaf)
    dy = torch.randn(x.shape).to(dtype)
    dsum = torch.randn(x.shape).to(dtype) if residual is not None else None
    args = (leaf, view, weight, bias, residual, eps, dy, dsum, dropout_p, norm_dropout_keep(dropout_p, x.shape))
    ours, theirs, ref = (run_norm(kind, impl, backend, *args) for impl in ("zen", "torch", "ref"))
    where = (kind, backend)
    for i, (o, t, r) in enumerate(zip(ours[0], theirs[0], ref[0])):
        assert o.dtype == dtype
        assert_within_rule("y" if i == 0 else "sum", o, t, r, FWD_FACTOR, dtype, where)
    names = ["dx", "dweight", "dbias", "dresidual"]
    present = [n for n, t in zip(names, (leaf, weight, bias, residual)) if t is not None]
    assert len(ours[1]) == len(present)
    for name, o, t, r in zip(present, ours[1], theirs[1], ref[1]):
        assert_within_rule(name, o, t, r, GRAD_FACTOR, dtype, where)


def run_under_isa(code: str, isa: str, **env: str) -> list[str]:
    """Run ``code`` in a fresh Python with ``ATEN_CPU_CAPABILITY=isa`` (and ``env``): it must print
    the extension's cpu_isa first and "ok" last. Checks that it passed and ran that instruction
    set's kernels; returns what it printed in between. An instruction set this CPU lacks is skipped:
    under ATEN_CPU_CAPABILITY=avx512 on an AVX2-only CPU torch's own AVX512 kernels die of an
    illegal instruction (tanh_backward, torch 2.13, AMD EPYC VM), whatever zenattn runs
    (test_isa_request_beyond_the_cpu_runs_what_it_has checks zenattn's side of that)."""
    if not cpu_runs_isa(isa):
        pytest.skip(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) cannot run {isa} code; torch's own "
                    f"{isa} kernels would die of an illegal instruction")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=dict(os.environ, ATEN_CPU_CAPABILITY=isa, **env), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran, *printed, status = proc.stdout.split()
    assert status == "ok"
    assert ran == isa.upper(), f"asked for {isa}, ran {ran}"
    return printed


def cpu_runs_isa(isa: str) -> bool:
    """Whether this CPU runs ATen's ``isa`` kernels: its capability (without ATEN_CPU_CAPABILITY set,
    as in the test process) is ``isa`` or above."""
    order = ["DEFAULT", "AVX2", "AVX512"]
    cpu_has = torch.backends.cpu.get_cpu_capability()
    if cpu_has not in order:   # another architecture: only the DEFAULT build exists
        return isa.upper() == "DEFAULT"
    return order.index(isa.upper()) <= order.index(cpu_has)
