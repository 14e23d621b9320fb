"""Attention modules: ``MultiheadAttention`` (a drop-in subclass of torch's) and ``SelfAttention``
(a block for new models), both on zenattn's fused kernels, and ``record_attention`` to read their
exact attention maps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as torch_F
from torch import Tensor

from zenattn import backends
from zenattn.functional.attention import _attention, draw_seed, attention_probs
from zenattn.functional.rotary import apply_rotary
from zenattn.nn.normalization import RMSNorm

# ---- recording attention maps --------------------------------------------------------------------


@dataclass
class AttentionRecord:
    """What :func:`record_attention` collected: ``maps[name]`` is a list with one tensor per forward
    call of the module at ``name`` (its name in the model), ``(B, H, len(queries), S)`` float32
    probabilities, detached, on the CPU."""

    queries: Optional[Sequence[int]]
    maps: dict[str, list[Tensor]] = field(default_factory=dict)
    _names: dict[int, str] = field(default_factory=dict)

    def add(self, module: torch.nn.Module, probs: Tensor) -> None:
        name = self._names.get(id(module)) or type(module).__name__  # the root module is named ""
        self.maps.setdefault(name, []).append(probs.detach().float().cpu())


_RECORDERS: list[AttentionRecord] = []


@contextlib.contextmanager
def record_attention(model: Optional[torch.nn.Module] = None,
                     queries: Optional[Sequence[int]] = None) -> Iterator[AttentionRecord]:
    """Record the exact attention probabilities of every zenattn attention module that runs inside
    the block, without changing any output::

        with zenattn.nn.record_attention(model, queries=[-1]) as rec:
            model(tokens)
        rec.maps["layers.0.attn"][0]        # (B, H, 1, S): what the last query attended to

    ``model`` names the modules (``model.named_modules()``); ``queries`` picks query positions
    (negative counts from the end; default all). The maps are computed from each call's saved
    log-sum-exp (:func:`zenattn.functional.attention_probs`), one head at a time: recording needs
    one head's (B, L, S) scores at a time beyond the stored maps. Not traced by torch.compile:
    record in eager mode.
    """
    rec = AttentionRecord(queries=list(queries) if queries is not None else None)
    if model is not None:
        rec._names = {id(m): name for name, m in model.named_modules()}
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.remove(rec)


def _recording() -> bool:
    return bool(_RECORDERS) and not torch.compiler.is_compiling()


def _record(module: torch.nn.Module, q: Tensor, k: Tensor, lse: Tensor, **options) -> None:
    """Give each active recorder this call's probabilities for its chosen queries."""
    for rec in _RECORDERS:
        with torch.no_grad():
            probs = attention_probs(q, k, lse, queries=rec.queries, **options)
        rec.add(module, probs)


def module_attention(module: torch.nn.Module, fn: str, q: Tensor, k: Tensor, v: Tensor, *, need_lse: bool = False,
                     backend: Optional[str] = None, attn_mask: Optional[Tensor] = None, causal: bool = False,
                     alignment: str = "top_left", window=None, softcap: Optional[float] = None,
                     alibi_slopes: Optional[Tensor] = None, dropout_p: float = 0.0, scale: Optional[float] = None
                     ) -> tuple[Tensor, Optional[Tensor], dict]:
    """zenattn attention called by ``module`` (errors name ``fn``): ``(out, lse or None, options)``.

    Draws the dropout seed, returns the lse when ``need_lse`` (or a recorder is active), and gives
    the call to :func:`record_attention`'s recorders. ``options`` (the seed included) rebuild this
    call's exact probabilities: ``attention_probs(q, k, lse, **options)``."""
    options = dict(attn_mask=attn_mask, causal=causal, alignment=alignment, window=window, softcap=softcap,
                   alibi_slopes=alibi_slopes, dropout_p=dropout_p, scale=scale,
                   seed=draw_seed() if dropout_p > 0 else None)
    recording = _recording()
    want_lse = need_lse or recording
    result = _attention(fn, q, k, v, return_lse=want_lse, deterministic=False, backend=backend, **options)
    out, lse = result if want_lse else (result, None)
    if recording:
        _record(module, q, k, lse, **options)
    return out, lse, options


# ---- MultiheadAttention -----------------------------------------------------------------------------

def _as_allowed(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """torch MHA's mask convention (bool True = masked out; float added) -> zenattn's (bool True =
    may attend; float added)."""
    return ~mask if mask.dtype == torch.bool else mask.to(dtype)


def _merge_masks(a: Optional[Tensor], b: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """One mask in zenattn's convention from two broadcastable ones: AND of bool masks, else the sum
    of additive ones (a bool mask becoming -inf where it forbids)."""
    if a is None or b is None:
        return a if b is None else b
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b

    def additive(m: Tensor) -> Tensor:
        return torch.zeros((), dtype=dtype, device=m.device).masked_fill(~m, float("-inf")) \
            if m.dtype == torch.bool else m.to(dtype)
    return additive(a) + additive(b)


class MultiheadAttention(torch.nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` on zenattn's fused attention.

    Same constructor, parameters, ``state_dict`` and ``forward`` signature and semantics as torch's
    (``batch_first`` both ways, unbatched input, ``key_padding_mask`` and ``attn_mask`` bool or float
    in torch's convention (bool True = masked out), ``(L, S)`` or ``(N * num_heads, L, S)`` masks,
    ``is_causal``, ``kdim``/``vdim``, ``add_bias_kv``, ``add_zero_attn``, dropout in training).
    ``need_weights=True`` returns the exact probabilities the output was computed with (dropout
    applied, as torch returns them), rebuilt from the kernel's log-sum-exp one head at a time.

    Differences from torch: a query whose every key is masked gets output 0 and weights 0 where
    torch gives NaN; dropout draws zenattn's mask (reproducible from ``torch.manual_seed``, not
    torch's). Extra keyword ``backend=`` pins a zenattn backend.
    """

    def __init__(self, *args, backend: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"zenattn.nn.MultiheadAttention: query, key and value must all be 2-D (unbatched) or "
                             f"3-D, got {list(query.shape)}, {list(key.shape)}, {list(value.shape)}")
        if not batched:  # (L, E): a batch of one
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
            if attn_mask is not None and attn_mask.dim() == 3:  # (num_heads, L, S)
                attn_mask = attn_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E): views
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        N, L, E = query.shape
        H, hd = self.num_heads, self.head_dim
        if E != self.embed_dim:
            raise ValueError(f"zenattn.nn.MultiheadAttention: expected query embed dim {self.embed_dim}, got {E}")
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")
        causal = is_causal and key_padding_mask is None and not need_weights  # torch then trusts the hint
        if causal:
            attn_mask = None

        # -- projections
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q = torch_F.linear(query, w_q, b_q)
        k = torch_F.linear(key, w_k, b_k)
        v = torch_F.linear(value, w_v, b_v)
        S = k.shape[1]

        # -- masks, in zenattn's convention, broadcasting to (N, H, L, S)
        mask = None
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if attn_mask.shape != (L, S):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, but should be "
                                       f"{(L, S)}.")
                mask = _as_allowed(attn_mask, q.dtype)
            elif attn_mask.dim() in (3, 4):
                if attn_mask.numel() != N * H * L * S:
                    raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, but should be "
                                       f"{(N * H, L, S)}.")
                mask = _as_allowed(attn_mask.reshape(N, H, L, S), q.dtype)
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if key_padding_mask is not None:
            if key_padding_mask.shape != (N, S):
                raise RuntimeError(f"expecting key_padding_mask shape of {(N, S)}, but got "
                                   f"{tuple(key_padding_mask.shape)}")
            mask = _merge_masks(mask, _as_allowed(key_padding_mask, q.dtype)[:, None, None, :], q.dtype)

        # -- extra keys: a learned bias key/value, then a zero key/value (each always attendable)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(N, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.expand(N, 1, E)], dim=1)
        q = q.view(N, L, H, hd).transpose(1, 2)                            # (N, H, L, hd)
        k = k.view(N, k.shape[1], H, hd).transpose(1, 2)                   # (N, H, S', hd)
        v = v.view(N, v.shape[1], H, hd).transpose(1, 2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N, H, 1, hd)], dim=2)
            v = torch.cat([v, v.new_zeros(N, H, 1, hd)], dim=2)
        extra = k.shape[2] - S                                              # keys added above
        if mask is not None and extra:
            pad = (0, extra)
            mask = torch_F.pad(mask, pad, value=True) if mask.dtype == torch.bool else torch_F.pad(mask, pad)
        if mask is not None and mask.dim() == 2:
            mask = mask[None, None]

        # -- attention (dropout only in training), exact weights from the log-sum-exp when asked
        out, lse, options = module_attention(self, "nn.MultiheadAttention", q, k, v, need_lse=need_weights,
                                             backend=self.backend, attn_mask=mask, causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        weights = attention_probs(q, k, lse, average_heads=average_attn_weights, **options) if need_weights else None
        out = out.transpose(1, 2).reshape(N, L, E)                         # (N, L, E)
        out = torch_F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


# ---- SelfAttention: a block for new models --------------------------------------------------------

def rotary_cos_sin(positions: Tensor, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
                   ) -> tuple[Tensor, Tensor]:
    """cos and sin ``(len(positions), dim)`` of rotary embedding (RoFormer, Su et al. 2021) in the
    rotate-half layout (GPT-NeoX / LLaMA): frequency ``base^(-2i/dim)`` for pair ``i``, repeated for
    both halves. Computed in float32 (float64 for float64), then cast to ``dtype``."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=compute) / dim)  # (dim/2,)
    angles = positions.to(compute)[:, None] * inv_freq[None, :]                                # (L, dim/2)
    angles = torch.cat([angles, angles], dim=-1)                                               # (L, dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class SelfAttention(torch.nn.Module):
    """Multi-head self-attention for new models: one fused QKV projection, GQA/MQA, optional rotary
    embedding and QK-norm, zenattn's masks as parameters.

    ``x (B, L, embed_dim)`` -> ``(B, L, embed_dim)``. The projection gives ``num_heads`` query heads
    and ``num_kv_heads`` key/value heads of ``head_dim`` (default ``embed_dim // num_heads``);
    ``qk_norm`` applies an RMSNorm over ``head_dim`` to queries and keys (before rotary), ``rotary``
    rotates them by position (``positions`` argument, default ``0..L-1``). ``causal``, ``window``,
    ``softcap`` and ``dropout`` mean what they mean in :func:`zenattn.attention`; ``forward`` also
    takes an ``attn_mask`` (zenattn's convention: bool True = may attend, float added; broadcasting
    to ``(B, num_heads, L, L)``) and a ``key_padding_mask (B, L)`` (True = padding, ignored), and
    ``need_weights=True`` also returns the exact ``(B, num_heads, L, L)`` probabilities.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, *, bias: bool = False, dropout: float = 0.0, causal: bool = False,
                 window: Optional[tuple[Optional[int], Optional[int]]] = None, softcap: Optional[float] = None,
                 rotary: bool = False, rotary_base: float = 10000.0, qk_norm: bool = False,
                 backend: Optional[str] = None, device=None, dtype=None) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        head_dim = embed_dim // num_heads if head_dim is None else head_dim
        if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
            raise ValueError(f"zenattn.nn.SelfAttention: num_kv_heads ({num_kv_heads}) must divide num_heads "
                             f"({num_heads}), both > 0")
        if head_dim <= 0 or (rotary and head_dim % 2):
            raise ValueError(f"zenattn.nn.SelfAttention: head_dim must be > 0 (and even with rotary), got {head_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"zenattn.nn.SelfAttention: dropout must be in [0, 1), got {dropout}")
        factory = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = embed_dim, num_heads, num_kv_heads, head_dim
        self.dropout, self.causal, self.window, self.softcap = dropout, causal, window, softcap
        self.rotary, self.rotary_base, self.backend = rotary, rotary_base, backend
        self.qkv = torch.nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias, **factory)
        self.out_proj = torch.nn.Linear(num_heads * head_dim, embed_dim, bias=bias, **factory)
        self.q_norm = RMSNorm(head_dim, **factory) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, **factory) if qk_norm else None

    def forward(self, x: Tensor, *, attn_mask: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
                positions: Optional[Tensor] = None, need_weights: bool = False
                ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"zenattn.nn.SelfAttention: expected x of shape (batch, seq_len, {self.embed_dim}), "
                             f"got {list(x.shape)}")
        B, L, _ = x.shape
        H, Hk, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * hd, Hk * hd, Hk * hd], dim=-1)
        q = q.view(B, L, H, hd).transpose(1, 2)                            # (B, H, L, hd)
        k = k.view(B, L, Hk, hd).transpose(1, 2)                           # (B, Hk, L, hd)
        v = v.view(B, L, Hk, hd).transpose(1, 2)                           # (B, Hk, L, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:
            pos = positions if positions is not None else torch.arange(L, device=x.device)
            cos, sin = rotary_cos_sin(pos, hd, self.rotary_base, torch.float64 if q.dtype == torch.float64
                                      else torch.float32)                   # (L, hd)
            rotary_backend = self.backend if backends.has_kernel(self.backend or "torch", "rotary") else None
            q, k = apply_rotary(q, cos, sin, backend=rotary_backend), apply_rotary(k, cos, sin, backend=rotary_backend)
        mask = attn_mask
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, L) or key_padding_mask.dtype != torch.bool:
                raise ValueError(f"zenattn.nn.SelfAttention: key_padding_mask must be bool (batch, seq_len) = "
                                 f"{(B, L)}, got {key_padding_mask.dtype} {list(key_padding_mask.shape)}")
            mask = _merge_masks(mask, ~key_padding_mask[:, None, None, :], q.dtype)
        out, lse, options = module_attention(self, "nn.SelfAttention", q, k, v, need_lse=need_weights,
                                             backend=self.backend, attn_mask=mask, causal=self.causal,
                                             window=self.window, softcap=self.softcap,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, H * hd))
        if need_weights:
            return out, attention_probs(q, k, lse, **options)
        return out
