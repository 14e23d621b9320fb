"""The reference Transformer: decoder-only (GPT-style), encoder-only (BERT-style) and
encoder-decoder variants built from the same pre-norm blocks, on zenattn's attention and norms or,
with the same weights, on torch's (``attn="torch"``, ``norm_impl="torch"``) for step-by-step
comparison.

Shapes: B batch, L (target / query) length, S (source / key) length, E width, H query heads,
Hk key/value heads, D head dim, V vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import zenattn
from zenattn.nn.attention import module_attention, rotary_cos_sin
from zenattn.reference import rotary_ref

VARIANTS = ("decoder", "encoder", "encoder-decoder")


@dataclass
class TransformerConfig:
    variant: str = "decoder"          # "decoder" (causal LM), "encoder" (bidirectional), "encoder-decoder"
    vocab_size: int = 256             # bytes
    dim: int = 128                    # E
    n_layers: int = 2                 # per stack (the encoder-decoder has this many of each)
    n_heads: int = 4                  # H
    n_kv_heads: Optional[int] = None  # Hk (GQA); None: = n_heads
    ffn_mult: int = 4                 # MLP hidden = ffn_mult * dim
    max_len: int = 256                # positions (learned embeddings; rotary needs no table)
    positions: str = "rotary"         # "learned" or "rotary"
    norm: str = "layernorm"           # "layernorm" or "rmsnorm"
    attn: str = "zenattn"             # attention kernels: "zenattn" or "torch" (SDPA); same weights
    norm_impl: str = "zenattn"        # norm modules: "zenattn" or "torch"; same weights
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        kv = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        checks = [
            (self.variant in VARIANTS, f"variant must be one of {VARIANTS}, got {self.variant!r}"),
            (self.dim > 0 and self.n_heads > 0 and self.dim % self.n_heads == 0,
             f"n_heads ({self.n_heads}) must divide dim ({self.dim})"),
            (kv > 0 and self.n_heads % kv == 0, f"n_kv_heads ({kv}) must divide n_heads ({self.n_heads})"),
            (self.positions in ("learned", "rotary"), f"positions must be 'learned' or 'rotary', got {self.positions!r}"),
            (self.positions != "rotary" or (self.dim // self.n_heads) % 2 == 0,
             f"rotary positions need an even head dim, got {self.dim // max(self.n_heads, 1)}"),
            (self.norm in ("layernorm", "rmsnorm"), f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}"),
            (self.attn in ("zenattn", "torch"), f"attn must be 'zenattn' or 'torch', got {self.attn!r}"),
            (self.norm_impl in ("zenattn", "torch"), f"norm_impl must be 'zenattn' or 'torch', got {self.norm_impl!r}"),
            (self.n_layers > 0 and self.vocab_size > 0 and self.max_len > 0 and self.ffn_mult > 0,
             "n_layers, vocab_size, max_len and ffn_mult must be > 0"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TransformerConfig: {message}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads


def make_norm(cfg: TransformerConfig) -> torch.nn.Module:
    """zenattn's norm or torch's twin: the same parameters and state_dict keys."""
    if cfg.norm == "layernorm":
        return zenattn.nn.LayerNorm(cfg.dim) if cfg.norm_impl == "zenattn" else torch.nn.LayerNorm(cfg.dim)
    return zenattn.nn.RMSNorm(cfg.dim) if cfg.norm_impl == "zenattn" else torch.nn.RMSNorm(cfg.dim)


class KVCache:
    """Keys and values of one attention layer for incremental decoding: ``(B, Hk, S_so_far, D)``."""

    def __init__(self) -> None:
        self.k: Optional[Tensor] = None
        self.v: Optional[Tensor] = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)   # (B, Hk, S + L, D)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


class Attention(torch.nn.Module):
    """Self- or cross-attention with fused projections, GQA and rotary positions.

    ``forward(x (B, L, E), context (B, S, E) or None, ...)``: queries from x; keys and values from
    ``context`` (cross-attention) or x. ``causal`` aligns the diagonal bottom-right, so with a KV
    cache the new queries see every cached key and the earlier new ones.
    """

    def __init__(self, cfg: TransformerConfig, cross: bool = False) -> None:
        super().__init__()
        self.cfg, self.cross = cfg, cross
        H, Hk, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = torch.nn.Linear(cfg.dim, H * D, bias=False)
        self.kv_proj = torch.nn.Linear(cfg.dim, 2 * Hk * D, bias=False)
        self.out_proj = torch.nn.Linear(H * D, cfg.dim, bias=False)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, *, causal: bool = False,
                key_padding_mask: Optional[Tensor] = None, cache: Optional[KVCache] = None,
                positions: Optional[Tensor] = None) -> Tensor:
        cfg = self.cfg
        B, L, _ = x.shape
        H, Hk, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        source = x if context is None else context
        q = self.q_proj(x).view(B, L, H, D).transpose(1, 2)                       # (B, H, L, D)
        if self.cross and cache is not None and cache.length:                     # encoder keys: computed once
            k, v = cache.k, cache.v
        else:
            k, v = self.kv_proj(source).view(B, source.shape[1], 2, Hk, D).permute(2, 0, 3, 1, 4)  # 2 x (B, Hk, S, D)
            if cfg.positions == "rotary" and not self.cross:  # cross-attention: two sequences, no rotation
                q, k = rotate(cfg, q, k, positions)                                # (B, H, L, D), (B, Hk, L, D)
            if cache is not None:
                k, v = cache.append(k, v)                                          # (B, Hk, S_total, D)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S): may attend
        dropout_p = cfg.dropout if self.training else 0.0
        if cfg.attn == "zenattn":
            out, _, _ = module_attention(self, "models.Transformer", q, k, v, attn_mask=mask, causal=causal,
                                         alignment="bottom_right", dropout_p=dropout_p)
        else:
            out = _torch_attention(q, k, v, mask, causal, dropout_p)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, H * D))             # (B, L, E)


def rotate(cfg: TransformerConfig, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """q and k rotated by their positions: zenattn's fused kernel (one pass each way, angles in
    float32), or for the torch twin the same formula in eager torch ops with the angles in q's dtype
    (zenattn.reference.rotary_ref, as models written on torch do it)."""
    if cfg.attn == "zenattn":
        cos, sin = rotary_cos_sin(positions, q.shape[-1], dtype=torch.float64 if q.dtype == torch.float64
                                  else torch.float32)                              # (L, D)
        return zenattn.apply_rotary(q, cos, sin), zenattn.apply_rotary(k, cos, sin)
    cos, sin = rotary_cos_sin(positions, q.shape[-1], dtype=q.dtype)                 # (L, D)
    return rotary_ref(q, cos, sin), rotary_ref(k, cos, sin)


def _torch_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], causal: bool,
                     dropout_p: float) -> Tensor:
    """The same attention on ``F.scaled_dot_product_attention`` (its causal is top-left: a
    bottom-right band becomes an explicit mask when the lengths differ)."""
    L, S = q.shape[2], k.shape[2]
    is_causal = causal and L == S and mask is None
    if causal and not is_causal:
        band = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(S - L)     # (L, S): j <= i + S - L
        mask = band if mask is None else mask & band
    if q.shape[1] != k.shape[1]:                                                   # GQA without enable_gqa (torch < 2.5)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


class MLP(torch.nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.up = torch.nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim)
        self.down = torch.nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim)
        self.dropout = torch.nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


def add_norm(norm: torch.nn.Module, h: Tensor, residual: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The pre-norm step between sublayers: ``s = residual + h`` (``h`` alone when ``residual`` is
    None), returned as ``(norm(s), s)``. zenattn's norms do the add inside their kernel (one pass
    over the activations, forward and backward); torch's twins add, then normalize. ``h`` takes
    the residual stream's dtype first (a bfloat16 sublayer output under autocast joins the float32
    stream, as ``residual + h`` promotes it)."""
    if residual is None:
        return norm(h), h
    if isinstance(norm, (zenattn.nn.LayerNorm, zenattn.nn.RMSNorm)):
        return norm(h.to(residual.dtype), residual=residual)
    s = residual + h
    return norm(s), s


class Block(torch.nn.Module):
    """Pre-norm block: x + attn(norm(x)) [+ cross(norm(x), memory)] + mlp(norm(x)).

    Written in the fused-residual form: ``forward(h, residual)`` takes the previous sublayer's
    output ``h (B, L, E)`` and the residual stream before it (None in the first block), so each
    norm also does the residual add (:func:`add_norm`); it returns its MLP's output and the stream
    before it. The stream after the block is their sum.
    """

    def __init__(self, cfg: TransformerConfig, cross: bool = False) -> None:
        super().__init__()
        self.norm1, self.attn = make_norm(cfg), Attention(cfg)
        self.norm_cross = make_norm(cfg) if cross else None
        self.cross = Attention(cfg, cross=True) if cross else None
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)
        self.dropout = torch.nn.Dropout(cfg.dropout)

    def forward(self, h: Tensor, residual: Optional[Tensor], *, causal: bool, positions: Tensor,
                key_padding_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                memory_padding_mask: Optional[Tensor] = None,
                cache: Optional[tuple[KVCache, KVCache]] = None) -> tuple[Tensor, Tensor]:
        x, residual = add_norm(self.norm1, h, residual)
        h = self.dropout(self.attn(x, causal=causal, key_padding_mask=key_padding_mask,
                                   cache=cache[0] if cache else None, positions=positions))
        if self.cross is not None:
            x, residual = add_norm(self.norm_cross, h, residual)
            h = self.dropout(self.cross(x, memory, key_padding_mask=memory_padding_mask,
                                        cache=cache[1] if cache else None))
        x, residual = add_norm(self.norm2, h, residual)
        return self.mlp(x), residual


class Transformer(torch.nn.Module):
    """The three variants over one set of parts.

    - decoder: ``forward(tokens (B, L)) -> logits (B, L, V)``, causal.
    - encoder: ``forward(tokens, padding_mask (B, L) True = padding) -> logits (B, L, V)``.
    - encoder-decoder: ``forward(tokens (B, L), source (B, S), source_padding_mask) -> logits``.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = torch.nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = torch.nn.Embedding(cfg.max_len, cfg.dim) if cfg.positions == "learned" else None
        decoder_side = cfg.variant != "encoder"
        self.encoder = (torch.nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
                        if cfg.variant == "encoder-decoder" else None)
        self.encoder_norm = make_norm(cfg) if self.encoder is not None else None
        cross = cfg.variant == "encoder-decoder"
        self.blocks = torch.nn.ModuleList(Block(cfg, cross=cross) for _ in range(cfg.n_layers))
        self.causal = decoder_side
        self.norm = make_norm(cfg)
        self.head = torch.nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices, zero biases, N(0, 0.02) embeddings; norms at 1 / 0."""
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                torch.nn.init.xavier_uniform_(p)
            elif p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                torch.nn.init.zeros_(p)
            else:
                torch.nn.init.ones_(p)

    def _embed(self, tokens: Tensor, start: int) -> tuple[Tensor, Tensor]:
        L = tokens.shape[1]
        if start + L > self.cfg.max_len and self.pos_embed is not None:
            raise ValueError(f"Transformer: positions up to {start + L} exceed max_len={self.cfg.max_len}")
        positions = torch.arange(start, start + L, device=tokens.device)             # (L,)
        x = self.embed(tokens)                                                         # (B, L, E)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        return x, positions

    def encode(self, source: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """Encoder stack of the encoder-decoder: (B, S) tokens -> (B, S, E) memory."""
        h, positions = self._embed(source, 0)                                          # (B, S, E)
        residual = None
        for block in self.encoder:
            h, residual = block(h, residual, causal=False, positions=positions, key_padding_mask=padding_mask)
        return add_norm(self.encoder_norm, h, residual)[0]

    def forward(self, tokens: Tensor, source: Optional[Tensor] = None, *, padding_mask: Optional[Tensor] = None,
                source_padding_mask: Optional[Tensor] = None, memory: Optional[Tensor] = None,
                caches: Optional[list] = None, start: int = 0) -> Tensor:
        if self.cfg.variant == "encoder-decoder" and memory is None:
            if source is None:
                raise ValueError("Transformer(encoder-decoder): pass source tokens (or a precomputed memory)")
            memory = self.encode(source, source_padding_mask)
        h, positions = self._embed(tokens, start)                                      # (B, L, E)
        residual = None
        for i, block in enumerate(self.blocks):
            h, residual = block(h, residual, causal=self.causal, positions=positions, key_padding_mask=padding_mask,
                                memory=memory, memory_padding_mask=source_padding_mask,
                                cache=caches[i] if caches is not None else None)
        return self.head(add_norm(self.norm, h, residual)[0])                          # (B, L, V)

    def loss(self, tokens: Tensor, targets: Tensor, **kwargs) -> Tensor:
        """Mean cross-entropy of ``targets (B, L)`` (-100: ignored) under ``forward(tokens, ...)``."""
        logits = self(tokens, **kwargs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 0.0, top_k: Optional[int] = None,
                 use_cache: bool = True, source: Optional[Tensor] = None, source_padding_mask: Optional[Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Continue ``prompt (B, L)`` by ``max_new_tokens``: greedy at ``temperature=0``, else sampled
        from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely. With
        ``use_cache`` each step feeds only the new token and attends to the cached keys/values
        (queries of length 1, bottom-right causal); without, the whole sequence is recomputed."""
        if self.cfg.variant == "encoder":
            raise ValueError("Transformer(encoder): an encoder-only model does not generate")
        memory = self.encode(source, source_padding_mask) if self.cfg.variant == "encoder-decoder" else None
        caches = [(KVCache(), KVCache()) for _ in self.blocks] if use_cache else None
        out, step_input, start = prompt, prompt, 0
        for _ in range(max_new_tokens):
            logits = self(step_input, memory=memory, source_padding_mask=source_padding_mask, caches=caches,
                          start=start)[:, -1].float()                                         # (B, V)
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)                                           # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            out = torch.cat([out, nxt], dim=1)                                                  # (B, L + t)
            if use_cache:
                start += step_input.shape[1]
                step_input = nxt
            else:
                step_input = out
        return out

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 x parameters in the matmuls plus
    attention's 6 x n_layers x seq_len x dim (PaLM's accounting, causal halves the scores)."""
    per_layer = (cfg.dim * cfg.n_heads * cfg.head_dim + 2 * cfg.dim * cfg.kv_heads * cfg.head_dim
                 + cfg.n_heads * cfg.head_dim * cfg.dim + 2 * cfg.dim * cfg.ffn_mult * cfg.dim)
    matmul = 6 * (cfg.n_layers * per_layer + cfg.dim * cfg.vocab_size)
    attention = 6 * cfg.n_layers * seq_len * cfg.dim * (0.5 if cfg.variant == "decoder" else 1.0)
    return float(matmul + attention)


__all__ = ["TransformerConfig", "Transformer", "Attention", "Block", "MLP", "add_norm", "KVCache", "VARIANTS",
           "count_parameters", "flops_per_token"]
