"""Pure-PyTorch reference implementations: ground truth for the tests and the ``torch`` backend.

Written from the definitions with elementary torch ops (no fused ``F.layer_norm``), so they are
independent of the kernels they check. Pass float64 inputs for a high-precision reference; with
``upcast=True`` a low-precision input is computed in float32 and the result cast back, which is
what a careful eager implementation does.
"""

from __future__ import annotations

import math
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


def attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    causal: bool = False,
    alignment: str = "top_left",
    window: Optional[tuple[Optional[int], Optional[int]]] = None,
    softcap: Optional[float] = None,
    alibi_slopes: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    dropout_keep: Optional[Tensor] = None,
    upcast: bool = False,
    return_lse: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Attention from the definition, materializing the (Nq, Nk) scores; the semantics every
    zenattn attention backend matches (see :func:`zenattn.attention` for the parameters).

    q ``(B, Hq, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)`` with Hkv dividing Hq (heads
    grouped like ``repeat_interleave``). ``dropout_keep`` is a bool ``(B, Hq, Nq, Nk)`` tensor of the
    entries kept (scaled by ``1 / (1 - dropout_p)``); without it ``dropout_p`` draws one from torch's
    generator. Rows with no allowed key give output 0 and log-sum-exp -inf. Returns
    ``out (B, Hq, Nq, Dv)`` and, with ``return_lse``, ``lse (B, Hq, Nq)`` in the compute dtype.
    """
    dtype = q.dtype
    if upcast and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    hq, hkv = q.shape[-3], k.shape[-3]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=-3)
        v = v.repeat_interleave(hq // hkv, dim=-3)
    nq, nk = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q, k.transpose(-2, -1)) * scale                       # (B, H, Nq, Nk)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    offset = nk - nq if alignment == "bottom_right" else 0
    rel = (torch.arange(nq, device=q.device)[:, None] + offset
           - torch.arange(nk, device=q.device)[None, :])                   # (Nq, Nk): i + offset - j
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(s.dtype)
        slopes = slopes[:, :, None, None] if slopes.dim() == 2 else slopes[:, None, None]
        s = s - slopes * rel.abs().to(s.dtype)
    allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
    left, right = window if window is not None else (None, None)
    if causal:  # no key after the diagonal (a right side of None or -1 means unbounded)
        right = 0 if right is None or right < 0 else min(right, 0)
    if left is not None and left >= 0:
        allowed &= rel <= left
    if right is not None and right >= 0:
        allowed &= rel >= -right
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            s = s + attn_mask.to(s.dtype)
    s = s.masked_fill(~allowed, float("-inf"))
    # Rows with no attendable key (every score -inf, from any of the masks) give p = 0 and lse = -inf;
    # they are taken out of logsumexp, whose backward would be exp(-inf - -inf) = NaN there.
    any_key = (s > float("-inf")).any(dim=-1, keepdim=True)                # (B, H, Nq, 1)
    s_safe = torch.where(any_key, s, 0)
    lse_safe = torch.logsumexp(s_safe, dim=-1, keepdim=True)
    p = torch.where(any_key, torch.exp(s_safe - lse_safe), 0)              # (B, H, Nq, Nk)
    lse = torch.where(any_key, lse_safe, float("-inf")).squeeze(-1)        # (B, H, Nq)
    if dropout_p > 0:
        if dropout_keep is None:
            dropout_keep = torch.rand_like(p) >= dropout_p
        p = p * dropout_keep / (1.0 - dropout_p)
    out = torch.matmul(p, v).to(dtype)                                     # (B, H, Nq, Dv)
    return (out, lse) if return_lse else out
