"""LayerNorm / RMSNorm in Triton: kernels and their launchers (the ``triton`` backend of
``zenattn::layer_norm_*`` and ``zenattn::rms_norm_*``).

Three tiers, as in the Triton tutorials: ``_norm_fwd_kernel`` / ``_norm_bwd_kernel`` (the math),
``norm_fwd`` / ``norm_bwd`` (their launchers, which ``RowLaunchers`` in ``zenattn/ops/norm.py`` turns
into the same signatures and outputs as the C++ CPU launchers in ``zenattn._C``), and the autograd
in ``zenattn/ops/norm.py`` shared by every backend.

One program normalizes one row held whole in registers (hidden sizes up to 65536). Statistics are
float32 (float64 for float64 input). What it normalizes is ``s = dropout(x) + residual``, each part
optional: the dropout keep flag of element (row, col) is Philox4x32-10 of (seed, row, col)
(``dropout_keep`` in common.py, the attention kernels' stream), so the backward redraws the mask
instead of reading one. On CUDA the warp count is autotuned per row width; in the interpreter one
fixed configuration runs. The backward gives each program a contiguous chunk of rows
and writes its weight/bias gradient sums to its own row of a float32 partial buffer; the partials
are then summed by ``torch.sum`` in a fixed order, so dW/dB are deterministic (no atomics). On CPU
tensors the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton
was imported (how CI tests them).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from zenattn.triton.common import (acc_dtype, autotuned, cdiv, dropout_args, dropout_keep, next_power_of_2, round_bf16,
                                   round_to_bf16, serialized_in_interpreter, stat_dtype, store_rounded)

MAX_HIDDEN = 65536      # one row must fit in one program's registers


def bwd_programs(rows: int, n: int) -> int:
    """Programs (and float32 partial rows) of the backward: a function of the shape only, so dW/dB
    are summed in the same order on every GPU. Enough to keep many rows in flight (256 left a
    16384 x 1024 backward latency-bound on an H200), each partial buffer at most 2^22 floats. The
    same rule as ``bwd_programs`` in csrc/cuda/norm.cpp."""
    return max(1, min(rows, max(256, min(2048, (1 << 22) // max(n, 1)))))


@triton.jit
def _over_n(total, N):
    """``total / N`` rounded to nearest. Triton's float32 ``/`` is an approximate division on CUDA
    (a rounding step off even for N = 1, where LayerNorm's dx = rstd * (g - mean(g)) must be 0)."""
    if total.dtype == tl.float32:
        return tl.math.div_rn(total, tl.zeros_like(total) + N)
    return total / N


@triton.jit
def _norm_fwd_kernel(
    X, R, W, B,            # x (rows, N) row stride stride_x; residual (rows, N) or None; weight, bias (N,) or None
    Y, S, MEAN, RSTD,      # y (rows, N) contiguous; sum x + r (rows, N) or None; mean, rstd (rows,)
    stride_x, stride_r,
    N, eps,
    seed, threshold, drop_scale,  # dropout: Philox key, keep iff draw >= threshold, 1 / (1 - p)
    RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    ACC: tl.constexpr,     # tl.float32, or tl.float64 for float64 input
    BLOCK_N: tl.constexpr,
    ROUND_BF16: tl.constexpr,  # interpreter only: round bf16 outputs to nearest (see round_to_bf16)
):
    row = tl.program_id(0).to(tl.int64)      # int64: rows * N may exceed 2^31
    cols = tl.arange(0, BLOCK_N)
    in_row = cols < N
    x = tl.load(X + row * stride_x + cols, mask=in_row, other=0.0)
    # -- fused dropout and residual: s = dropout(x) + r, formed in ACC and rounded once to the input
    # dtype (as torch adds half types; the interpreter's bf16 add is wrong), and that is normalized.
    if HAS_RESIDUAL or HAS_DROPOUT:
        x = x.to(ACC)
        if HAS_DROPOUT:  # a multiply, not a select: a dropped inf gives NaN, as in F.dropout
            keep = dropout_keep(seed, 0, row.to(tl.int32), cols, threshold)
            x = x * tl.where(keep, drop_scale, 0.0).to(ACC)
        if HAS_RESIDUAL:
            x = x + tl.load(R + row * stride_r + cols, mask=in_row, other=0.0).to(ACC)
        if ROUND_BF16:
            x = round_to_bf16(x)
        x = x.to(X.dtype.element_ty)
        tl.store(S + row * N + cols, x, mask=in_row)
    x = x.to(ACC)
    # -- statistics over the row in registers. shift = x[0] + mean(x - x[0]) is the mean to within
    # rounding (exact zeros for constant rows, so y is exactly the bias; no cancellation for large
    # offsets); the deviations (x - shift) - mean(x - shift) then round at their own scale.
    if RMS:
        xc = x
        mean = 0.0
    else:
        x0 = tl.sum(tl.where(cols == 0, x, 0.0), axis=0)
        shift = x0 + _over_n(tl.sum(tl.where(in_row, x - x0, 0.0), axis=0), N)
        xs = tl.where(in_row, x - shift, 0.0)
        delta = _over_n(tl.sum(xs, axis=0), N)
        xc = tl.where(in_row, xs - delta, 0.0)
        mean = shift + delta
    var = _over_n(tl.sum(xc * xc, axis=0), N)
    rstd = 1.0 / tl.sqrt(var + eps)
    # -- normalize, scale, shift
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=in_row, other=0.0).to(ACC)
    if HAS_B:
        y = y + tl.load(B + cols, mask=in_row, other=0.0).to(ACC)
    store_rounded(Y, row * N + cols, y, in_row, ROUND_BF16)
    if not RMS:
        tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _norm_bwd_kernel(
    DY, DSUM, X, W, MEAN, RSTD,   # dy (rows, N); dsum (rows, N) or None; x: what was normalized; w (N,) or None
    DX, DRES,                     # dx (rows, N) contiguous: the input's gradient; dres: the residual's, or None
    DW_PART, DB_PART,             # (programs, N) float partials or None
    stride_dy, stride_dsum, stride_x,
    rows, N, rows_per_program, eps,
    seed, threshold, drop_scale,  # the forward's dropout
    RMS: tl.constexpr, HAS_DSUM: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_DRES: tl.constexpr,
    HAS_W: tl.constexpr, HAS_DB: tl.constexpr,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, ROUND_BF16: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    in_row = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=in_row, other=0.0).to(ACC)
    else:
        w = tl.full((BLOCK_N,), 1.0, ACC)
    dw_acc = tl.zeros((BLOCK_N,), dtype=ACC)
    db_acc = tl.zeros((BLOCK_N,), dtype=ACC)
    first = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = first + i
        if row < rows:
            x = tl.load(X + row * stride_x + cols, mask=in_row, other=0.0).to(ACC)
            dy = tl.load(DY + row * stride_dy + cols, mask=in_row, other=0.0).to(ACC)
            rstd = tl.load(RSTD + row).to(ACC)
            if RMS:
                xhat = x * rstd
            else:
                xhat = tl.where(in_row, (x - tl.load(MEAN + row).to(ACC)) * rstd, 0.0)
            wdy = w * dy
            # dx = rstd * (w dy - xhat * mean(w dy xhat) [- mean(w dy) for LayerNorm])
            c1 = _over_n(tl.sum(wdy * xhat, axis=0), N)
            if RMS:
                dx = (wdy - xhat * c1) * rstd
                # one element: 1 - xhat^2 cancels catastrophically; it equals eps * rstd^2 exactly
                dx = tl.where(N == 1, wdy * eps * rstd * rstd * rstd, dx)
            else:
                c2 = _over_n(tl.sum(wdy, axis=0), N)
                dx = (wdy - (xhat * c1 + c2)) * rstd
            if HAS_DSUM:  # the returned sum x + r feeds its own gradient straight through
                dx += tl.load(DSUM + row * stride_dsum + cols, mask=in_row, other=0.0).to(ACC)
            # dx is now the gradient of s = dropout(x) + r: the residual's; the input's passes
            # back through the same keep mask and scale as the forward.
            if HAS_DROPOUT:
                if HAS_DRES:
                    store_rounded(DRES, row * N + cols, dx, in_row, ROUND_BF16)
                keep = dropout_keep(seed, 0, row.to(tl.int32), cols, threshold)
                dx = dx * tl.where(keep, drop_scale, 0.0).to(ACC)
            store_rounded(DX, row * N + cols, dx, in_row, ROUND_BF16)
            dw_acc += dy * xhat
            db_acc += dy
    if HAS_W:
        tl.store(DW_PART + pid * N + cols, dw_acc, mask=in_row)
    if HAS_DB:
        tl.store(DB_PART + pid * N + cols, db_acc, mask=in_row)


# ---- launchers ----------------------------------------------------------------------------------

def _as_rows(t: Tensor) -> Tensor:
    """(..., N) -> (rows, N) with a unit last stride: a view where possible, else a copy."""
    n = t.shape[-1]
    m = t.reshape(-1, n) if n > 0 else t.reshape(0, 0)
    if n > 1 and m.stride(1) != 1:
        m = m.contiguous()
    return m


def _block_n(n: int) -> int:
    if n > MAX_HIDDEN:
        raise ValueError(f"zenattn triton norm: hidden size {n} is over the Triton kernels' limit {MAX_HIDDEN}")
    return next_power_of_2(max(n, 1))


def _warps(block_n: int) -> int:
    """Warps per program without autotuning: one per 256 elements of the row, 1 to 16."""
    return min(max(block_n // 256, 1), 16)


# On CUDA the warp count is autotuned per row width (BLOCK_N) and feature set; a row is one program
# either way, so only the parallelism inside it changes. The backward writes its partials with
# stores (no accumulation across launches), so the autotuner's repeated runs leave them correct.
_TUNE_KEY = ["BLOCK_N", "RMS", "HAS_RESIDUAL", "HAS_DROPOUT", "HAS_W", "HAS_B"]
_BWD_TUNE_KEY = ["BLOCK_N", "RMS", "HAS_DSUM", "HAS_DROPOUT", "HAS_W", "HAS_DB"]
_CONFIGS = [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8, 16, 32)]
_FWD_TUNED = autotuned(_norm_fwd_kernel, _CONFIGS, _TUNE_KEY)
_BWD_TUNED = autotuned(_norm_bwd_kernel, _CONFIGS, _BWD_TUNE_KEY)


def _launch(kernel, tuned, grid, args, meta):
    if tuned is None:
        kernel[grid](*args, **meta, num_warps=_warps(meta["BLOCK_N"]))
    else:
        tuned[grid](*args, **meta)


@serialized_in_interpreter
def norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
              eps: float, rms: bool, seed: int = 0, dropout_p: float = 0.0):
    n = x.shape[-1]
    x2 = _as_rows(x)
    rows = x2.shape[0]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    has_sum = residual is not None or dropout_p > 0
    s = torch.empty(x.shape, dtype=x.dtype, device=x.device) if has_sum else None
    r2 = _as_rows(residual) if residual is not None else None
    stats = x.shape[:-1]
    mean = None if rms else torch.empty(stats, dtype=stat_dtype(x.dtype), device=x.device)
    rstd = torch.empty(stats, dtype=stat_dtype(x.dtype), device=x.device)
    if rows > 0 and n > 0:
        w = weight.contiguous() if weight is not None else None
        b = bias.contiguous() if bias is not None else None
        args = (x2, r2, w, b, y, s, mean, rstd, x2.stride(0), r2.stride(0) if r2 is not None else 0,
                n, eps, *dropout_args(seed, dropout_p))
        meta = dict(RMS=rms, HAS_RESIDUAL=residual is not None, HAS_DROPOUT=dropout_p > 0,
                    HAS_W=weight is not None, HAS_B=bias is not None, ACC=acc_dtype(x.dtype),
                    BLOCK_N=_block_n(n), ROUND_BF16=round_bf16(x.dtype))
        _launch(_norm_fwd_kernel, _FWD_TUNED, (rows,), args, meta)
    return y, s, mean, rstd


@serialized_in_interpreter
def norm_bwd(dy: Tensor, dsum: Optional[Tensor], x: Tensor, weight: Optional[Tensor],
              mean: Optional[Tensor], rstd: Tensor, has_bias: bool, eps: float, rms: bool,
              seed: int = 0, dropout_p: float = 0.0, has_residual: bool = False):
    n = x.shape[-1]
    x2, dy2 = _as_rows(x), _as_rows(dy)
    ds2 = _as_rows(dsum) if dsum is not None else None
    rows = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    has_dres = has_residual and dropout_p > 0
    dres = torch.empty(x.shape, dtype=x.dtype, device=x.device) if has_dres else None
    programs = bwd_programs(rows, n)
    part_dtype = stat_dtype(x.dtype)
    dw_part = torch.zeros(programs, n, dtype=part_dtype, device=x.device) if weight is not None else None
    db_part = torch.zeros(programs, n, dtype=part_dtype, device=x.device) if has_bias else None
    if rows > 0 and n > 0:
        w = weight.contiguous() if weight is not None else None
        args = (dy2, ds2, x2, w, mean.contiguous() if mean is not None else None, rstd.contiguous(),
                dx, dres, dw_part, db_part,
                dy2.stride(0), ds2.stride(0) if ds2 is not None else 0, x2.stride(0),
                rows, n, cdiv(rows, programs), eps, *dropout_args(seed, dropout_p))
        meta = dict(RMS=rms, HAS_DSUM=dsum is not None, HAS_DROPOUT=dropout_p > 0, HAS_DRES=has_dres,
                    HAS_W=weight is not None, HAS_DB=has_bias, ACC=acc_dtype(x.dtype),
                    BLOCK_N=_block_n(n), ROUND_BF16=round_bf16(x.dtype))
        _launch(_norm_bwd_kernel, _BWD_TUNED, (programs,), args, meta)
    dw = dw_part.sum(0).to(weight.dtype) if weight is not None else None
    db = db_part.sum(0).to(x.dtype) if has_bias else None
    return dx, dw, db, dres
