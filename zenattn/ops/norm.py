"""LayerNorm / RMSNorm as ``torch.library`` ops in the ``zenattn`` namespace.

    zenattn::layer_norm_fwd(x, weight?, bias?, residual?, eps, backend) -> (y, sum, mean, rstd)
    zenattn::layer_norm_bwd(dy, dsum?, x, weight?, mean, rstd, has_bias, backend) -> (dx, dweight, dbias)
    zenattn::rms_norm_fwd(x, weight?, residual?, eps, backend) -> (y, sum, rstd)
    zenattn::rms_norm_bwd(dy, dsum?, x, weight?, rstd, eps, backend) -> (dx, dweight)

Shapes: x, residual, y, sum, dy, dx (..., N), normalized over the last dim; weight, bias (N,);
mean, rstd x.shape[:-1] in float32 (float64 for float64 input). ``backend`` names which kernels
run (zenattn.backends); every backend implements these same launcher signatures, so this one
autograd registration serves them all. In the backward, ``x`` is the tensor that was normalized
(``x + residual`` when the residual add was fused) and ``dsum`` the gradient of the returned sum.

A custom op cannot return "no tensor", so an absent output (``sum`` without a residual,
``dweight`` without a weight, ``dbias`` without a bias) is a 0-element placeholder tensor.
Each op has a fake (meta) implementation, so ``torch.compile(fullgraph=True)`` traces them.

The ops are defined with ``torch.library.Library`` and implemented for the CPU and CUDA dispatch
keys rather than with ``torch.library.custom_op``: on a 4096x1024 LayerNorm the custom_op wrapper
added 0.1-0.3 ms per call here (measured side by side), against about 0.01 ms for a plain impl.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zenattn import backends
from zenattn.ops._library import define as _define
from zenattn.ops._library import lib as _lib
from zenattn.ops._library import stat_dtype as _stat_dtype

def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


# ---- LayerNorm ------------------------------------------------------------------------------

def _layer_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                    residual: Optional[Tensor], eps: float, backend: str
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y, s, mean, rstd = backends.launchers(backend, "layer_norm").layer_norm_fwd(
        x, weight, bias, residual, eps)
    return y, _or_empty(s, x), mean, rstd


def _layer_norm_fwd_fake(x, weight, bias, residual, eps, backend):
    stats = x.new_empty(x.shape[:-1], dtype=_stat_dtype(x.dtype))
    s = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else x.new_empty(0)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), s, stats, torch.empty_like(stats))


layer_norm_fwd = _define(
    "layer_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, float eps, str backend)"
    " -> (Tensor, Tensor, Tensor, Tensor)", _layer_norm_fwd, _layer_norm_fwd_fake)


def _layer_norm_bwd(dy: Tensor, dsum: Optional[Tensor], x: Tensor, weight: Optional[Tensor],
                    mean: Tensor, rstd: Tensor, has_bias: bool, backend: str
                    ) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = backends.launchers(backend, "layer_norm").layer_norm_bwd(
        dy, dsum, x, weight, mean, rstd, has_bias)
    return dx, _or_empty(dw, x), _or_empty(db, x)


def _layer_norm_bwd_fake(dy, dsum, x, weight, mean, rstd, has_bias, backend):
    n = x.shape[-1]
    dw = x.new_empty(n) if weight is not None else x.new_empty(0)
    db = x.new_empty(n) if has_bias else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dw, db


layer_norm_bwd = _define(
    "layer_norm_bwd(Tensor dy, Tensor? dsum, Tensor x, Tensor? weight, Tensor mean, Tensor rstd,"
    " bool has_bias, str backend) -> (Tensor, Tensor, Tensor)", _layer_norm_bwd, _layer_norm_bwd_fake)


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, residual, eps, backend = inputs
    _, s, mean, rstd = output
    ctx.save_for_backward(s if residual is not None else x, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.has_residual = residual is not None
    ctx.backend = backend


def _layer_norm_backward(ctx, dy, dsum, _dmean, _drstd):
    normed, weight, mean, rstd = ctx.saved_tensors
    dsum = dsum if ctx.has_residual else None
    dx, dw, db = layer_norm_bwd(dy, dsum, normed, weight, mean, rstd, ctx.has_bias, ctx.backend)
    return (dx, dw if weight is not None else None, db if ctx.has_bias else None,
            dx if ctx.has_residual else None, None, None)


torch.library.register_autograd("zenattn::layer_norm_fwd", _layer_norm_backward,
                                setup_context=_layer_norm_setup, lib=_lib)


# ---- RMSNorm --------------------------------------------------------------------------------

def _rms_norm_fwd(x: Tensor, weight: Optional[Tensor], residual: Optional[Tensor], eps: float,
                  backend: str) -> tuple[Tensor, Tensor, Tensor]:
    y, s, rstd = backends.launchers(backend, "rms_norm").rms_norm_fwd(x, weight, residual, eps)
    return y, _or_empty(s, x), rstd


def _rms_norm_fwd_fake(x, weight, residual, eps, backend):
    rstd = x.new_empty(x.shape[:-1], dtype=_stat_dtype(x.dtype))
    s = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), s, rstd


rms_norm_fwd = _define(
    "rms_norm_fwd(Tensor x, Tensor? weight, Tensor? residual, float eps, str backend)"
    " -> (Tensor, Tensor, Tensor)", _rms_norm_fwd, _rms_norm_fwd_fake)


def _rms_norm_bwd(dy: Tensor, dsum: Optional[Tensor], x: Tensor, weight: Optional[Tensor],
                  rstd: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    dx, dw = backends.launchers(backend, "rms_norm").rms_norm_bwd(dy, dsum, x, weight, rstd, eps)
    return dx, _or_empty(dw, x)


def _rms_norm_bwd_fake(dy, dsum, x, weight, rstd, eps, backend):
    dw = x.new_empty(x.shape[-1]) if weight is not None else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dw


rms_norm_bwd = _define(
    "rms_norm_bwd(Tensor dy, Tensor? dsum, Tensor x, Tensor? weight, Tensor rstd, float eps,"
    " str backend) -> (Tensor, Tensor)", _rms_norm_bwd, _rms_norm_bwd_fake)


def _rms_norm_setup(ctx, inputs, output):
    x, weight, residual, eps, backend = inputs
    _, s, rstd = output
    ctx.save_for_backward(s if residual is not None else x, weight, rstd)
    ctx.has_residual = residual is not None
    ctx.eps = eps
    ctx.backend = backend


def _rms_norm_backward(ctx, dy, dsum, _drstd):
    normed, weight, rstd = ctx.saved_tensors
    dsum = dsum if ctx.has_residual else None
    dx, dw = rms_norm_bwd(dy, dsum, normed, weight, rstd, ctx.eps, ctx.backend)
    return dx, dw if weight is not None else None, dx if ctx.has_residual else None, None, None


torch.library.register_autograd("zenattn::rms_norm_fwd", _rms_norm_backward,
                                setup_context=_rms_norm_setup, lib=_lib)


# ---- backends implementing both families with exactly these signatures ---------------------------

class RowLaunchers:
    """The four launcher signatures above over a backend's two row kernels, shared by LayerNorm and
    RMSNorm: ``fwd(x, weight, bias, residual, eps, rms) -> (y, sum, mean, rstd)`` and
    ``bwd(dy, dsum, x, weight, mean, rstd, has_bias, eps, rms) -> (dx, dweight, dbias)``, absent
    outputs None (the Triton and CUDA C++ backends)."""

    def __init__(self, fwd, bwd):
        self._fwd, self._bwd = fwd, bwd

    def layer_norm_fwd(self, x, weight, bias, residual, eps):
        return list(self._fwd(x, weight, bias, residual, eps, False))

    def layer_norm_bwd(self, dy, dsum, x, weight, mean, rstd, has_bias):
        return list(self._bwd(dy, dsum, x, weight, mean, rstd, has_bias, 0.0, False))

    def rms_norm_fwd(self, x, weight, residual, eps):
        y, s, _, rstd = self._fwd(x, weight, None, residual, eps, True)
        return [y, s, rstd]

    def rms_norm_bwd(self, dy, dsum, x, weight, rstd, eps):
        dx, dw, _ = self._bwd(dy, dsum, x, weight, None, rstd, False, eps, True)
        return [dx, dw]


def _triton_norm():
    from zenattn.triton import norm  # noqa: PLC0415  (imports triton: only at first use)
    return RowLaunchers(norm.norm_fwd, norm.norm_bwd)


def _cuda_norm():
    from zenattn.cuda import norm  # noqa: PLC0415
    return RowLaunchers(norm.norm_fwd, norm.norm_bwd)


for _family in ("layer_norm", "rms_norm"):
    backends.register("cpu", _family, backends.extension)
    backends.register("triton", _family, _triton_norm)
    backends.register("cuda", _family, _cuda_norm)
