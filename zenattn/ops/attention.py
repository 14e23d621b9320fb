"""Attention as ``torch.library`` ops in the ``zenattn`` namespace.

    zenattn::attention_fwd(q, k, v, attn_mask?, alibi_slopes?, seed?, scale, softcap, window_left,
                           window_right, bottom_right, dropout_p, deterministic, backend)
                           -> (out, lse, out_acc, lse_lo)
    zenattn::attention_bwd(dout, q, k, v, out, lse, lse_lo, dlse?, attn_mask?, alibi_slopes?, seed?, scale, softcap,
                           window_left, window_right, bottom_right, dropout_p, deterministic, backend)
                           -> (dq, dk, dv)

Shapes: q ``(B, Hq, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)`` (Hkv divides Hq), any
strides with a unit last stride; out ``(B, Hq, Nq, Dv)`` in q's dtype (laid out like q on the cpu and
triton backends: :func:`new_like_q`, as is dq); lse ``(B, Hq, Nq)`` float32
(float64 for float64 input), ``-inf`` for rows that attend nothing. ``out_acc`` is the output
at the compute precision (float32) for float16/bfloat16 inputs, kept for the backward's
``delta = rowsum(dO * O)`` (from the rounded output, delta's error shifts every dS of a row and
multiplies dq/dk's error); an empty tensor for float32/float64 inputs, whose ``out`` serves.
``lse_lo`` (shaped and typed like lse, 0 where lse is -inf) is what rounding lse lost: lse + lse_lo is
the row's max + log(sum) to twice lse's precision, and the backward's P = exp((S - lse) - lse_lo)
matches the forward's softmax. From lse alone, every P of a row would be off by the same factor
exp(rounding of lse), up to half an ulp of |lse| (2e-6 at |lse| ~ 32 in float32), and dV = P^T dO
would sum that error where torch's explicit softmax has none (found by tests/test_fuzz.py). The
cuda backend (float16/bfloat16 only, whose rounding dwarfs it) returns an empty one and reads lse
alone. ``attn_mask`` broadcasts to
``(B, Hq, Nq, Nk)`` (bool: may attend; floating: added to the scores). A window side of -1 is
unbounded; causal attention is ``window_right = 0``; ``bottom_right`` aligns the diagonal with the
last key (offset ``Nk - Nq``). ``seed`` is an int64 scalar tensor drawn from torch's generator
when ``dropout_p > 0``; the kernels derive every keep/drop decision from it, so the backward redraws
the forward's mask. ``dlse`` is the gradient of the returned lse (None when it is unused).
Every backend implements these launcher signatures, so one autograd registration serves them all; the mask, slopes and seed get no gradient. ``deterministic`` asks
for a backward whose result is bitwise repeatable (the cpu and triton kernels always are).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zenattn import backends
from zenattn.ops._library import define as _define
from zenattn.ops._library import eager as _eager
from zenattn.ops._library import refuse_double_backward as _refuse_double_backward
from zenattn.ops._library import register_autograd as _register_autograd
from zenattn.ops._library import stat_dtype as _stat_dtype

_SCORE_ARGS = ("Tensor? attn_mask, Tensor? alibi_slopes, Tensor? seed, float scale, float softcap, "
               "int window_left, int window_right, bool bottom_right, float dropout_p, bool deterministic, str backend")


def _attention_fwd(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor],
                   seed: Optional[Tensor], scale: float, softcap: float, window_left: int, window_right: int,
                   bottom_right: bool, dropout_p: float, deterministic: bool, backend: str
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out, lse, out_acc, lse_lo = backends.launchers(backend, "attention").attention_fwd(
        q, k, v, attn_mask, alibi_slopes, seed, scale, softcap, window_left, window_right, bottom_right,
        dropout_p)
    return out, lse, out_acc, lse_lo


# Backends whose out and dq follow q's layout (new_like_q); the cuda backend's are contiguous.
FOLLOWS_Q_LAYOUT = ("cpu", "triton")


def heads_inner(q: Tensor) -> bool:
    """Whether q ``(B, Hq, Nq, D)`` has its heads inside its rows in memory, ``(B, Nq, Hq, D)``, as
    ``q_proj(x).view(B, N, H, D).transpose(1, 2)`` gives (csrc/cpu/attention.h has the same rule)."""
    return q.shape[1] > 1 and q.shape[2] > 1 and q.stride(1) < q.stride(2)


def new_like_q(q: Tensor, x: int, dtype: torch.dtype, backend: str = "cpu") -> Tensor:
    """A new ``(B, Hq, Nq, x)`` output or dq for ``backend``: laid out ``(B, Nq, Hq, x)`` in memory
    where ``heads_inner(q)`` and the backend follows q's layout (as torch's CPU SDPA lays out its
    output), so ``out.transpose(1, 2).reshape(B, N, H * x)`` and the gradient's way back to the
    projection are views, not copies; contiguous otherwise."""
    b, h, n, _ = q.shape
    if backend in FOLLOWS_Q_LAYOUT and heads_inner(q):
        return q.new_empty(b, n, h, x, dtype=dtype).transpose(1, 2)
    return q.new_empty(b, h, n, x, dtype=dtype)


def _attention_fwd_fake(q, k, v, attn_mask, alibi_slopes, seed, scale, softcap, window_left, window_right,
                        bottom_right, dropout_p, deterministic, backend):
    b, h, n, _ = q.shape
    out = new_like_q(q, v.shape[-1], q.dtype, backend)
    lse = q.new_empty(b, h, n, dtype=_stat_dtype(q.dtype))
    half = q.dtype in (torch.float16, torch.bfloat16)
    out_acc = new_like_q(q, v.shape[-1], torch.float32, backend) if half else q.new_empty(0)
    lse_lo = q.new_empty(0) if backend == "cuda" else torch.empty_like(lse)
    return out, lse, out_acc, lse_lo


attention_fwd = _define(
    f"attention_fwd(Tensor q, Tensor k, Tensor v, {_SCORE_ARGS}) -> (Tensor, Tensor, Tensor, Tensor)",
    _attention_fwd, _attention_fwd_fake)


def _attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, lse_lo: Tensor,
                   dlse: Optional[Tensor], attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor], seed: Optional[Tensor],
                   scale: float, softcap: float, window_left: int, window_right: int, bottom_right: bool,
                   dropout_p: float, deterministic: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = backends.launchers(backend, "attention").attention_bwd(
        dout, q, k, v, out, lse, lse_lo, dlse, attn_mask, alibi_slopes, seed, scale, softcap, window_left,
        window_right, bottom_right, dropout_p)
    return dq, dk, dv


def _attention_bwd_fake(dout, q, k, v, out, lse, lse_lo, dlse, attn_mask, alibi_slopes, seed, scale, softcap, window_left,
                        window_right, bottom_right, dropout_p, deterministic, backend):
    return (new_like_q(q, q.shape[-1], q.dtype, backend),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device))


attention_bwd = _define(
    f"attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor lse_lo, Tensor? dlse, "
    f"{_SCORE_ARGS})"
    " -> (Tensor, Tensor, Tensor)", _attention_bwd, _attention_bwd_fake)


_attention_bwd_call = _eager(attention_bwd, _attention_bwd)


def _attention_setup(ctx, inputs, output):
    q, k, v, attn_mask, alibi_slopes, seed, *options = inputs
    out, lse, out_acc, lse_lo = output
    # The backward reads the output only for delta = rowsum(dO * O): the unrounded one if there is one.
    ctx.save_for_backward(q, k, v, out_acc if out_acc.numel() else out, lse, lse_lo, attn_mask, alibi_slopes, seed)
    ctx.mark_non_differentiable(out_acc, lse_lo)
    ctx.options = options  # scale ... dropout_p, deterministic, backend (as in the schema)


def _attention_backward(ctx, dout, dlse, _dout_acc, _dlse_lo):
    q, k, v, out, lse, lse_lo, attn_mask, alibi_slopes, seed = ctx.saved_tensors
    if dout is None:  # only the lse was used
        dout = torch.zeros(out.shape, dtype=q.dtype, device=out.device)
    dq, dk, dv = _attention_bwd_call(dout, q, k, v, out, lse, lse_lo, dlse, attn_mask, alibi_slopes, seed,
                                     *ctx.options)
    return (dq, dk, dv) + (None,) * 11


def _cpu_attention_autograd(q, k, v, attn_mask, alibi_slopes, seed, scale, softcap, window_left, window_right,
                            bottom_right, dropout_p, deterministic, backend):
    """The cpu backend's attention with its autograd in C++ (csrc/cpu/attention_autograd.cpp; its
    backward is always deterministic)."""
    return tuple(backends.extension().attention_autograd(
        q, k, v, attn_mask, alibi_slopes, seed, scale, softcap, window_left, window_right, bottom_right, dropout_p))


attention = _register_autograd(attention_fwd, _attention_fwd, _attention_setup, _attention_backward,
                               {"cpu": _cpu_attention_autograd})


_refuse_double_backward(attention_bwd, "attention")


def _triton_attention():
    from zenattn.triton import attention  # noqa: PLC0415  (imports triton: only at first use)
    return attention


def _cuda_attention():
    from zenattn.cuda import attention  # noqa: PLC0415
    return attention


backends.register("cpu", "attention", backends.extension)
backends.register("triton", "attention", _triton_attention)
backends.register("cuda", "attention", _cuda_attention)
