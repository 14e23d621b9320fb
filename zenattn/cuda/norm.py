"""LayerNorm / RMSNorm on the CUDA C++ kernels (csrc/cuda/norm_fwd.cu, norm_bwd.cu, norm.cpp).

``norm_fwd`` / ``norm_bwd`` over ``zenattn._C.cuda_norm_fwd`` / ``cuda_norm_bwd``, with the row-kernel
signatures zenattn/ops/norm.py's ``RowLaunchers`` turns into the ops' launchers: inputs are viewed
as (rows, n) (copied only when the last dim is strided), the kernels run on the current stream of
the input's device, and absent outputs come back as None.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from zenattn import backends


def _rows(t: Tensor) -> Tensor:
    """(..., n) -> (rows, n) with a unit last stride: a view where possible, else a copy."""
    m = t.reshape(math.prod(t.shape[:-1]), t.shape[-1])
    return m.contiguous() if m.shape[1] > 1 and m.stride(1) != 1 else m


def norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor], eps: float,
             rms: bool, seed: int = 0, dropout_p: float = 0.0):
    with torch.cuda.device(x.device):
        y, s, mean, rstd = backends.extension().cuda_norm_fwd(
            _rows(x), weight, bias, None if residual is None else _rows(residual), float(eps), rms, seed,
            float(dropout_p), torch.cuda.current_stream(x.device).cuda_stream)
    stats = x.shape[:-1]
    fused = residual is not None or dropout_p > 0
    return (y.view(x.shape), s.view(x.shape) if fused else None,
            None if rms else mean.view(stats), rstd.view(stats))


def norm_bwd(dy: Tensor, dsum: Optional[Tensor], x: Tensor, weight: Optional[Tensor], mean: Optional[Tensor],
             rstd: Tensor, has_bias: bool, eps: float, rms: bool, seed: int = 0, dropout_p: float = 0.0,
             has_residual: bool = False):
    with torch.cuda.device(x.device):
        dx, dw, db, dres = backends.extension().cuda_norm_bwd(
            _rows(dy), None if dsum is None else _rows(dsum), _rows(x), weight,
            None if mean is None else mean.reshape(-1), rstd.reshape(-1), has_bias, rms, float(eps), seed,
            float(dropout_p), has_residual, torch.cuda.current_stream(x.device).cuda_stream)
    return (dx.view(x.shape), dw if weight is not None else None, db if has_bias else None,
            dres.view(x.shape) if has_residual and dropout_p > 0 else None)
