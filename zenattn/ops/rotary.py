"""Rotary position embedding as a ``torch.library`` op in the ``zenattn`` namespace.

    zenattn::rotary(x, cos, sin, backward, backend) -> y

Shapes: x ``(B, H, L, D)`` with D even, any strides with a unit last stride; cos and sin ``(L, D)``
(the angles of each position, :func:`zenattn.nn.rotary_cos_sin`). y is x rotated in the
rotate-half layout (:func:`zenattn.reference.rotary_ref`), shaped and typed like x and laid out
``(B, L, H, D)`` in memory where x has its heads inside its rows (``heads_inner``, as
``q_proj(x).view(B, L, H, D).transpose(1, 2)`` gives), so the attention after it keeps that layout
and its output's way to the out-projection is a view; contiguous otherwise. ``backward`` applies the
map's transpose, which is also its gradient: the autograd registration runs the same op with the
flag flipped, so any order of derivative is exact. cos and sin get no gradient.
"""

from __future__ import annotations

from torch import Tensor

from zenattn import backends
from zenattn.ops._library import define as _define
from zenattn.ops._library import register_autograd as _register_autograd
from zenattn.ops.attention import new_like_q


def _rotary(x: Tensor, cos: Tensor, sin: Tensor, backward: bool, backend: str) -> Tensor:
    return backends.launchers(backend, "rotary").rotary(x, cos, sin, backward)


def _rotary_fake(x, cos, sin, backward, backend):
    return new_like_q(x, x.shape[-1], x.dtype, backend)


rotary_op = _define("rotary(Tensor x, Tensor cos, Tensor sin, bool backward, str backend) -> Tensor",
                    _rotary, _rotary_fake)


def _rotary_setup(ctx, inputs, output):
    x, cos, sin, backward, backend = inputs
    ctx.save_for_backward(cos, sin)
    ctx.options = (not backward, backend)


def _rotary_backward(ctx, dy):
    cos, sin = ctx.saved_tensors
    return rotary(dy, cos, sin, *ctx.options), None, None, None, None


rotary = _register_autograd(rotary_op, _rotary, _rotary_setup, _rotary_backward)


def _triton_rotary():
    from zenattn.triton import rotary as triton_rotary  # noqa: PLC0415  (imports triton: only at first use)
    return triton_rotary


backends.register("cpu", "rotary", backends.extension)
backends.register("triton", "rotary", _triton_rotary)
