"""Rotary position embedding: ``zenattn.apply_rotary``, one fused pass over the queries or keys."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zenattn import backends, reference
from zenattn.ops import rotary as rotary_ops


def _fail(message: str, kind: type = ValueError) -> None:
    raise kind(f"zenattn.apply_rotary: {message}")


def _check(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    for name, t in (("x", x), ("cos", cos), ("sin", sin)):
        if not isinstance(t, Tensor):
            _fail(f"{name} must be a Tensor, got {type(t).__name__}", TypeError)
        if not t.is_floating_point():
            _fail(f"{name} must be floating point, got {t.dtype}", TypeError)
    if x.dim() < 2:
        _fail(f"x must have at least 2 dims (..., seq, head_dim), got shape {list(x.shape)}")
    seq, dim = x.shape[-2:]
    if dim % 2:
        _fail(f"head_dim must be even (its halves are rotated as pairs), got {dim}")
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (seq, dim):
            _fail(f"{name} must have shape (seq, head_dim) = ({seq}, {dim}) to match x {list(x.shape)}, "
                  f"got {list(t.shape)}")
        if t.device != x.device:
            _fail(f"{name} is on {t.device} but x is on {x.device}")
        if t.requires_grad:
            _fail(f"{name} requires grad; the rotary kernels give cos and sin no gradient. Pass "
                  f"{name}.detach(), or backend='torch'", NotImplementedError)


def _as_4d(x: Tensor) -> Tensor:
    """x (..., L, D) as (B, H, L, D): a view for 2-, 3- and 4-dim x."""
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        return x[:, None]
    return x.reshape(-1, *x.shape[-3:]) if x.dim() > 4 else x


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Rotary position embedding (RoFormer, Su et al. 2021) of ``x`` in the rotate-half layout
    (GPT-NeoX / LLaMA): ``x * cos + rotate_half(x) * sin``, with ``rotate_half(x) = [-x2, x1]`` for
    the two halves of the last dim; :func:`zenattn.reference.rotary_ref` is the definition.

    Args:
        x: ``(..., L, D)`` queries or keys, D even; typically ``(B, H, L, D)``, any strides.
        cos, sin: ``(L, D)``, the angles of each position (:func:`zenattn.nn.rotary_cos_sin`), any
            floating dtype; the kernels compute in float32 (float64 for float64 x). They get no
            gradient from the kernel backends.
        backend: ``"cpu"``, ``"triton"``, ``"torch"`` or None for the automatic choice (there are no
            CUDA C++ rotary kernels: on GPUs the automatic choice is Triton).

    Returns ``x``'s shape and dtype. One pass over x, forward and backward, where eager torch makes
    five or more. For a 4-D ``x`` laid out ``(B, L, H, D)`` in memory (as
    ``q_proj(x).view(B, L, H, D).transpose(1, 2)`` is) the result keeps that layout, so attention
    after it returns its output in that layout too.
    """
    _check(x, cos, sin)
    choice = backends.select("rotary", x, cos, sin, backend=backend)
    if choice.backend == "torch":   # computed at the promoted precision of x and the angles, returned as x's dtype
        return reference.rotary_ref(x, cos, sin).to(x.dtype)
    y = rotary_ops.rotary(_as_4d(x), cos, sin, False, choice.backend)
    return y if y.shape == x.shape else y.reshape(x.shape)
