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
    dropout_p: float = 0.0,
    dropout_keep: Optional[Tensor] = None,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """``(s - mean) / sqrt(var + eps) * weight + bias`` over the trailing dims, where
    ``s = dropout(x) + residual`` (see :func:`prenorm_sum_ref`; plain ``x`` by default).

    With ``residual``, returns ``(y, s)`` (the pre-norm pattern); the sum is taken in x's dtype and
    that rounded sum is what gets normalized.
    """
    s = prenorm_sum_ref(x, residual, dropout_p, dropout_keep)
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
    dropout_p: float = 0.0,
    dropout_keep: Optional[Tensor] = None,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """``s / sqrt(mean(s^2) + eps) * weight`` over the trailing dims, ``s = dropout(x) + residual``
    as in :func:`layer_norm_ref` (returning ``(y, s)`` with ``residual``).

    ``eps=None`` means ``torch.finfo(x.dtype).eps``, as in ``torch.nn.functional.rms_norm``.
    """
    s = prenorm_sum_ref(x, residual, dropout_p, dropout_keep)
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


def prenorm_sum_ref(x: Tensor, residual: Optional[Tensor] = None, dropout_p: float = 0.0,
                    dropout_keep: Optional[Tensor] = None) -> Tensor:
    """What the norms normalize: ``x``, or ``dropout(x) + residual`` with the residual and/or the
    dropout keep mask (bool, x's shape; see :func:`norm_dropout_keep_ref`). With dropout, kept
    elements are scaled by ``1 / (1 - dropout_p)``, the sum is formed in float32 (float64 for
    float64 input) and rounded once to x's dtype, as the kernels do."""
    if dropout_keep is None:
        return x if residual is None else x + residual
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = x.to(acc) * dropout_keep.to(acc) * (1.0 / (1.0 - dropout_p))
    if residual is not None:
        s = s + residual.to(acc)
    return s.to(x.dtype)


def norm_dropout_keep_ref(seed: int, rows: int, cols: int, p: float,
                          device: Optional[torch.device] = None) -> Tensor:
    """The dropout mask the norm kernels draw for ``seed``: bool ``(rows, cols)``, True where kept, for
    the input viewed as (rows, cols), cols the product of the normalized dims. Element (r, j) takes
    the attention mask's score (b=0, h=0, i=r, j) of :func:`dropout_keep_ref`: one Philox stream."""
    return dropout_keep_ref(seed, 1, 1, rows, cols, p, device)[0, 0]


_MASK32 = 0xFFFFFFFF


def _mul_hi_lo(m: int, c: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``m * c`` (m, c < 2^32) with int64 arithmetic that never overflows."""
    a = m * (c & 0xFFFF)                  # < 2^48
    b = m * (c >> 16)                     # < 2^48
    t = a + ((b & 0xFFFF) << 16)          # < 2^49
    return (b >> 16) + (t >> 32), t & _MASK32


def dropout_keep_ref(seed: int, batch: int, heads: int, q_len: int, k_len: int, p: float,
                     device: Optional[torch.device] = None, *, head: Optional[int] = None,
                     rows: Optional[Tensor] = None) -> Tensor:
    """The attention dropout mask every zenattn backend draws for ``seed``: bool ``(batch, heads,
    q_len, k_len)``, True where a probability is kept.

    Philox4x32-10 (Salmon et al., SC 2011) keyed by the 64-bit seed, at counter
    ``(j // 4, i, b * heads + h, 0)``; word ``j % 4`` keeps its score when its top 24 bits are
    ``>= ceil(p * 2^24)``. Written here in plain int64 torch ops, independently of the C++
    (``csrc/common/philox.h``) and Triton versions, which the tests compare with it. ``head`` and
    ``rows`` (query positions) restrict it to that head and those rows: ``(batch, 1, len(rows), k_len)``.
    """
    threshold = math.ceil(p * 2**24)
    t = torch.arange((k_len + 3) // 4, dtype=torch.int64, device=device)
    i = torch.arange(q_len, dtype=torch.int64, device=device) if rows is None else rows.to(torch.int64)
    head_ids = torch.arange(heads, dtype=torch.int64, device=device) if head is None else torch.tensor(
        [head], dtype=torch.int64, device=device)
    bh = (torch.arange(batch, dtype=torch.int64, device=device)[:, None] * heads + head_ids[None, :]).reshape(-1)
    n_heads = len(head_ids)
    shape = (len(bh), len(i), (k_len + 3) // 4)
    c0 = t.expand(shape)
    c1 = i[:, None].expand(shape)
    c2 = bh[:, None, None].expand(shape)
    c3 = torch.zeros(shape, dtype=torch.int64, device=device)  # high bits of the indices: 0 below 2^32
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(0xD2511F53, c0)
        hi1, lo1 = _mul_hi_lo(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
    words = torch.stack([c0, c1, c2, c3], dim=-1).reshape(batch, n_heads, len(i), -1)[..., :k_len]
    return (words >> 8) >= threshold


def attention_scores(
    q: Tensor,
    k: Tensor,
    *,
    attn_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    causal: bool = False,
    alignment: str = "top_left",
    window: Optional[tuple[Optional[int], Optional[int]]] = None,
    softcap: Optional[float] = None,
    alibi_slopes: Optional[Tensor] = None,
    query_positions: Optional[Tensor] = None,
    q_len: Optional[int] = None,
) -> Tensor:
    """The scores ``(B, Hq, Nq, Nk)`` with every feature of :func:`attention_ref` applied, in q's dtype,
    ``-inf`` where query i may not attend key j: the softmax of each row is the attention.

    ``query_positions`` (with ``q_len``, the whole query length) says which rows of a longer query
    sequence q holds, for scoring it a block of rows at a time; a mask must then hold those rows."""
    hq, hkv = q.shape[-3], k.shape[-3]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=-3)
    nq, nk = q.shape[-2], k.shape[-2]
    rows = torch.arange(nq, device=q.device) if query_positions is None else query_positions
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q, k.transpose(-2, -1)) * scale                       # (B, H, Nq, Nk)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    offset = nk - (nq if q_len is None else q_len) if alignment == "bottom_right" else 0
    rel = rows[:, None] + offset - torch.arange(nk, device=q.device)[None, :]   # (Nq, Nk): i + offset - j
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
    return s.masked_fill(~allowed, float("-inf"))


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
        v = v.repeat_interleave(hq // hkv, dim=-3)
    s = attention_scores(q, k, attn_mask=attn_mask, scale=scale, causal=causal, alignment=alignment,
                         window=window, softcap=softcap, alibi_slopes=alibi_slopes)
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


def rotary_ref(x: Tensor, cos: Tensor, sin: Tensor, *, backward: bool = False) -> Tensor:
    """Rotary position embedding (RoFormer, Su et al. 2021) in the rotate-half layout (GPT-NeoX /
    LLaMA): ``x (..., L, D)`` with ``cos``, ``sin`` ``(L, D)``, D even; the first half of each vector
    pairs with the second, ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]``.

    ``backward=True`` applies the transpose of that linear map, which is the gradient of the forward
    with respect to ``x``: ``g * cos + rotate_half^T(g * sin)`` with ``rotate_half^T(y) = [y2, -y1]``
    (the inverse rotation when each half of cos/sin repeats the same angles)."""
    half = x.shape[-1] // 2
    if backward:
        gs = x * sin
        return x * cos + torch.cat([gs[..., half:], -gs[..., :half]], dim=-1)
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin
