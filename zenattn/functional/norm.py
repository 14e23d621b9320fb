"""LayerNorm and RMSNorm: ``zenattn.layer_norm`` and ``zenattn.rms_norm``, with torch's signatures
plus keyword-only ``residual=``, ``dropout_p=`` and ``backend=``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from zenattn import backends, reference
from zenattn.functional.attention import draw_seed
from zenattn.ops import norm as norm_ops

ShapeLike = Union[int, Sequence[int], torch.Size]


def _normalized_shape(normalized_shape: ShapeLike) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(d) for d in normalized_shape)


def _check_norm_args(fn: str, x: Tensor, shape: tuple[int, ...], **params: Optional[Tensor]) -> None:
    """Errors that name the problem, shared by every backend (they see a flattened last dim)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"zenattn.{fn}: input must be a Tensor, got {type(x).__name__}")
    if len(shape) == 0:
        raise ValueError(f"zenattn.{fn}: normalized_shape must have at least one dimension")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise RuntimeError(f"zenattn.{fn}: given normalized_shape={list(shape)}, expected input with "
                           f"shape [*, {', '.join(map(str, shape))}], but got input of size {list(x.shape)}")
    for name, t in params.items():
        if t is None:
            continue
        if name == "residual":
            if t.shape != x.shape:
                raise RuntimeError(f"zenattn.{fn}: residual has shape {list(t.shape)} but input has "
                                   f"shape {list(x.shape)}; they must match")
        elif tuple(t.shape) != shape:
            raise RuntimeError(f"zenattn.{fn}: {name} has shape {list(t.shape)}, expected "
                               f"normalized_shape {list(shape)}")
        if t.device != x.device:
            raise RuntimeError(f"zenattn.{fn}: {name} is on {t.device} but input is on {x.device}")
        mixed = name != "residual" and t.dtype == torch.float32 and x.dtype in _LOW_PRECISION
        if t.dtype != x.dtype and not mixed:
            raise RuntimeError(f"zenattn.{fn}: {name} has dtype {t.dtype} but input has dtype "
                               f"{x.dtype}; they must match")


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _autocast_to_fp32(x: Tensor) -> bool:
    """CUDA autocast runs layer_norm / rms_norm in float32, so do we. (CPU autocast leaves them in
    the input's dtype, with float32 parameters: the mixed case below.)"""
    if x.device.type != "cuda":
        return False
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # older torch took no device argument
        return torch.is_autocast_enabled()


def _fp32(*ts: Optional[Tensor]) -> list[Optional[Tensor]]:
    return [None if t is None else t.float() for t in ts]


def _kernel_limits(backend: str, tensors: tuple) -> Optional[str]:
    """What a kernel backend cannot take, for backends.select (tensors: input, weight, bias, residual)."""
    x = tensors[0] if tensors else None
    if backend == "cuda" and x is not None and x.dtype == torch.float64:
        return "the CUDA C++ norm kernels take float32/float16/bfloat16, not float64"
    return None


for _family in ("layer_norm", "rms_norm"):
    backends.register_check(_family, _kernel_limits)


def _params_like(x: Tensor, *params: Optional[Tensor]) -> list[Optional[Tensor]]:
    """Mixed precision (fp16/bf16 input, fp32 weight and bias, as torch allows): the kernels take
    one dtype, so the parameters are cast to the input's. Shortcut: their gradients are then
    rounded to that dtype before autograd casts them back to fp32 (torch keeps them in fp32)."""
    return [p if p is None or p.dtype == x.dtype else p.to(x.dtype) for p in params]


def _over_last_dim(shape: tuple[int, ...], x: Tensor, residual: Optional[Tensor],
                   *params: Optional[Tensor]):
    """The norm ops normalize over the last dim: collapse the normalized dims into one."""
    if len(shape) == 1:  # already so (views cost a few us each under autograd: skipped)
        return x, residual, list(params)
    n = math.prod(shape)
    lead = x.shape[: x.dim() - len(shape)]
    x = x.reshape(*lead, n)
    residual = None if residual is None else residual.reshape(*lead, n)
    return x, residual, [None if p is None else p.reshape(n) for p in params]


def _norm_result(y: Tensor, s: Tensor, input: Tensor, residual: Optional[Tensor]):
    if y.dim() == input.dim():  # normalized over the last dim: already the input's shape
        return y if residual is None else (y, s)
    return y.view(input.shape) if residual is None else (y.view(input.shape), s.view(input.shape))


def _dropout_seed(fn: str, dropout_p: float) -> Optional[Tensor]:
    """Checks ``dropout_p`` and draws the seed of the dropout mask from torch's generator (None
    without dropout), so ``torch.manual_seed`` reproduces the mask."""
    if isinstance(dropout_p, bool) or not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"zenattn.{fn}: dropout_p must be in [0, 1), got {dropout_p!r}")
    return draw_seed() if dropout_p > 0 else None


def _reference_keep(seed: Optional[Tensor], input: Tensor, shape: tuple[int, ...], p: float) -> Optional[Tensor]:
    """The keep mask the kernels draw for ``seed``, shaped like ``input`` (the torch backend's)."""
    if seed is None:
        return None
    cols = math.prod(shape)
    rows = input.numel() // cols if cols else 0
    return reference.norm_dropout_keep_ref(int(seed), rows, cols, p, input.device).reshape(input.shape)


def layer_norm(
    input: Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    residual: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    backend: Optional[str] = None,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Layer normalization over the trailing ``normalized_shape`` dims, like ``F.layer_norm``.

    Args:
        input: ``(*, *normalized_shape)``, float32/float16/bfloat16/float64; any strides.
        weight, bias: ``normalized_shape``, same dtype and device as ``input``, or None.
        eps: added to the variance.
        residual: optional tensor shaped like ``input``. When given, the fused pre-norm step:
            ``s = input + residual`` (in input's dtype) is normalized and the result is
            ``(layer_norm(s), s)``.
        dropout_p: fused dropout on ``input`` before the residual add: ``s = dropout(input) +
            residual`` (or ``dropout(input)``) is normalized, kept elements scaled by
            ``1 / (1 - dropout_p)``. The mask comes from a seed drawn from torch's generator
            (``torch.manual_seed`` reproduces it) and is redrawn, not stored, for the backward.
            Pass 0 at evaluation, as with ``F.dropout(training=False)``.
        backend: ``"cpu"``, ``"triton"``, ``"cuda"``, ``"torch"`` or None for the automatic choice
            (``ZENATTN_BACKEND`` overrides it); see :func:`zenattn.explain`.

    Returns:
        ``y`` shaped like ``input`` (contiguous), or ``(y, s)`` when ``residual`` is given.
        Mean and variance are computed in float32 (float64 for float64 input).
    """
    shape = _normalized_shape(normalized_shape)
    if isinstance(input, Tensor) and _autocast_to_fp32(input):
        input, weight, bias, residual = _fp32(input, weight, bias, residual)
    _check_norm_args("layer_norm", input, shape, weight=weight, bias=bias, residual=residual)
    seed = _dropout_seed("layer_norm", dropout_p)
    weight, bias = _params_like(input, weight, bias)
    choice = backends.select("layer_norm", input, weight, bias, residual, backend=backend)
    if choice.backend == "torch":
        return reference.layer_norm_ref(input, shape, weight, bias, eps, residual=residual, upcast=True,
                                        dropout_p=dropout_p, dropout_keep=_reference_keep(seed, input, shape, dropout_p))

    x, r, (w, b) = _over_last_dim(shape, input, residual, weight, bias)
    y, s, _, _ = norm_ops.layer_norm(x, w, b, r, seed, float(eps), float(dropout_p), choice.backend)
    return _norm_result(y, s, input, residual)


def rms_norm(
    input: Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    *,
    residual: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    backend: Optional[str] = None,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """RMS normalization over the trailing ``normalized_shape`` dims, like ``F.rms_norm``.

    ``y = s / sqrt(mean(s^2) + eps) * weight`` with ``s = input`` (or ``input + residual``, and then
    ``(y, s)`` is returned). ``eps=None`` means ``torch.finfo(input.dtype).eps``, as in torch.
    Shapes, dtypes, ``dropout_p`` and ``backend`` as in :func:`layer_norm`.
    """
    shape = _normalized_shape(normalized_shape)
    if isinstance(input, Tensor) and _autocast_to_fp32(input):
        input, weight, residual = _fp32(input, weight, residual)
    _check_norm_args("rms_norm", input, shape, weight=weight, residual=residual)
    seed = _dropout_seed("rms_norm", dropout_p)
    (weight,) = _params_like(input, weight)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    choice = backends.select("rms_norm", input, weight, residual, backend=backend)
    if choice.backend == "torch":
        return reference.rms_norm_ref(input, shape, weight, eps, residual=residual, upcast=True,
                                      dropout_p=dropout_p, dropout_keep=_reference_keep(seed, input, shape, dropout_p))

    x, r, (w,) = _over_last_dim(shape, input, residual, weight)
    y, s, _ = norm_ops.rms_norm(x, w, r, seed, float(eps), float(dropout_p), choice.backend)
    return _norm_result(y, s, input, residual)
