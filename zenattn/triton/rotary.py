"""Rotary position embedding in Triton: the kernel and its launcher (the ``triton`` backend of
``zenattn::rotary``; the math is in ``zenattn/reference.py``'s ``rotary_ref`` and
``csrc/cpu/rotary.h``).

One program rotates a block of ``BLOCK_L`` positions of one (batch, head): it loads both halves of
each row, the rows of cos and sin, and writes the rotated row once, in float32 (float64 for float64).
On CPU tensors the kernel runs in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before
triton was imported (how CI tests it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from zenattn.ops.attention import new_like_q
from zenattn.triton.common import acc_dtype, cdiv, next_power_of_2, round_bf16, serialized_in_interpreter, store_rounded

BLOCK_ELEMENTS = 4096   # elements of x a program rotates (BLOCK_L rows of the padded head dim)


@triton.jit
def _rotary_kernel(
    X, Y,                          # x, y (B, H, L, D): strides (sxb, sxh, sxl, 1), (syb, syh, syl, 1)
    COS, SIN,                      # (L, D) contiguous, in the compute dtype
    sxb, sxh, sxl, syb, syh, syl,
    H, L, HALF,                    # heads, positions, D / 2
    ACC: tl.constexpr, BACKWARD: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    bh, pid_l = tl.program_id(0), tl.program_id(1)     # batch x heads on axis 0: up to 2^31 - 1
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)              # (BLOCK_L,) positions
    cols = tl.arange(0, BLOCK_HALF)                             # (BLOCK_HALF,) first-half columns
    mask = (rows[:, None] < L) & (cols[None, :] < HALF)
    rows64 = rows.to(tl.int64)[:, None]

    # -- load both halves of x's rows and their angles
    x_at = X + b * sxb + h * sxh + rows64 * sxl + cols[None, :]
    x1 = tl.load(x_at, mask=mask, other=0.0).to(ACC)
    x2 = tl.load(x_at + HALF, mask=mask, other=0.0).to(ACC)
    cs_at = rows64 * (2 * HALF) + cols[None, :]
    c1 = tl.load(COS + cs_at, mask=mask, other=0.0)
    c2 = tl.load(COS + cs_at + HALF, mask=mask, other=0.0)
    s1 = tl.load(SIN + cs_at, mask=mask, other=0.0)
    s2 = tl.load(SIN + cs_at + HALF, mask=mask, other=0.0)

    # -- rotate (forward) or apply the transpose (backward): see csrc/cpu/rotary.h
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    y_at = b * syb + h * syh + rows64 * syl + cols[None, :]
    store_rounded(Y, y_at, y1, mask, ROUND_BF16)
    store_rounded(Y, y_at + HALF, y2, mask, ROUND_BF16)


@serialized_in_interpreter
def rotary(x: Tensor, cos: Tensor, sin: Tensor, backward: bool) -> Tensor:
    """y (B, H, L, D) = x rotated by cos/sin (L, D); laid out like x where its heads are inner
    (:func:`zenattn.ops.attention.new_like_q`), else contiguous."""
    y = new_like_q(x, x.shape[-1], x.dtype, "triton")
    if x.stride(-1) != 1:
        x = x.contiguous()
    B, H, L, D = x.shape
    if y.numel() == 0:
        return y
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = cos.to(compute).contiguous(), sin.to(compute).contiguous()
    block_half = next_power_of_2(max(D // 2, 1))
    block_l = max(1, min(next_power_of_2(L), BLOCK_ELEMENTS // (2 * block_half)))
    grid = (B * H, cdiv(L, block_l))
    _rotary_kernel[grid](
        x, y, cos, sin, x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        H, L, D // 2, ACC=acc_dtype(x.dtype), BACKWARD=backward, ROUND_BF16=round_bf16(x.dtype),
        BLOCK_L=block_l, BLOCK_HALF=block_half)
    return y
