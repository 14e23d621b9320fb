"""Pure-PyTorch reference implementations: ground truth for the tests and the ``torch`` backend.

Written from the definitions with elementary torch ops (no fused ``F.layer_norm``), so they are
independent of the kernels they check. Pass float64 inputs for a high-precision reference; with
``upcast=True`` a low-precision input is computed in float32 and the result cast back, which is
what a careful eager implementation does.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

ShapeLike = Union[int, Sequence[int], torch.Size]


def _dims(normalized_shape: ShapeLike) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return tuple(range(-len(shape), 0))


def layer_norm_ref(
    x: Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    residual: Optional[Tensor] = None,
    upcast: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """``(x [+ residual] - mean) / sqrt(var + eps) * weight + bias`` over the trailing dims.

    With ``residual``, returns ``(y, x + residual)`` (the pre-norm pattern); the sum is taken in
    x's dtype and that rounded sum is what gets normalized.
    """
    s = x if residual is None else x + residual
    dtype = s.dtype
    h = s.float() if upcast and dtype in (torch.float16, torch.bfloat16) else s
    dims = _dims(normalized_shape)
    mean = h.mean(dim=dims, keepdim=True)
    var = (h - mean).square().mean(dim=dims, keepdim=True)
    y = (h - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    y = y.to(dtype)
    return y if residual is None else (y, s)


def rms_norm_ref(
    x: Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    residual: Optional[Tensor] = None,
    upcast: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """``x [+ residual] / sqrt(mean(x^2) + eps) * weight`` over the trailing dims.

    ``eps=None`` means ``torch.finfo(x.dtype).eps``, as in ``torch.nn.functional.rms_norm``.
    """
    s = x if residual is None else x + residual
    dtype = s.dtype
    if eps is None:
        eps = torch.finfo(dtype).eps
    h = s.float() if upcast and dtype in (torch.float16, torch.bfloat16) else s
    ms = h.square().mean(dim=_dims(normalized_shape), keepdim=True)
    y = h * torch.rsqrt(ms + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    y = y.to(dtype)
    return y if residual is None else (y, s)
