"""Hugging Face transformers: ``attn_implementation="zenattn"``.

    import zenattn.integrations.huggingface as zen_hf
    zen_hf.register()                                   # once, before building models
    model = AutoModelForCausalLM.from_config(config, attn_implementation="zenattn")

``register()`` adds :func:`attention_forward` to transformers' ``AttentionInterface`` under the name
``"zenattn"``, with the SDPA mask format (bool, True = may attend, or None when the mask is purely
causal), so every model written against that interface (GPT-2, LLaMA, Mistral, Gemma, BERT, ...)
runs its attention on zenattn's kernels. transformers is imported only here. The backend follows
zenattn's usual choice (``ZENATTN_BACKEND`` included); setting an attribute ``zenattn_backend`` on
a model's attention modules pins one for them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zenattn.functional.attention import attention_probs
from zenattn.nn.attention import module_attention

NAME = "zenattn"


def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Optional[Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                      is_causal: Optional[bool] = None, softcap: Optional[float] = None, **kwargs
                      ) -> tuple[Tensor, Optional[Tensor]]:
    """transformers' attention-function signature on zenattn: query ``(B, H, Lq, D)``, key/value
    ``(B, Hkv, Lk, D)`` (GQA handled by the kernels, no repeat), ``attention_mask`` in SDPA format
    or None. Returns ``(out (B, Lq, H, D), weights or None)``; with ``output_attentions=True`` the
    weights are the exact probabilities, rebuilt from the log-sum-exp.

    A missing mask on a causal module means causal attention aligned bottom-right (the last query
    sees the last key), which is right both for prefill and for decoding against a KV cache.
    """
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError("zenattn attention_forward: position_bias (T5-style relative bias) is not "
                                  "supported; use attn_implementation='eager' for this model")
    causal = attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask.to(query.dtype)
    want_weights = bool(kwargs.get("output_attentions", False))
    out, lse, options = module_attention(
        module, "integrations.huggingface", query, key, value, need_lse=want_weights,
        backend=getattr(module, "zenattn_backend", None), attn_mask=attention_mask,
        causal=bool(causal) and query.shape[2] > 0, alignment="bottom_right", softcap=softcap,
        dropout_p=float(dropout), scale=scaling)
    weights = attention_probs(query, key, lse, **options) if want_weights else None
    return out.transpose(1, 2).contiguous(), weights


def register() -> None:
    """Register ``"zenattn"`` with transformers' attention and attention-mask interfaces."""
    from transformers import AttentionInterface  # noqa: PLC0415
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: PLC0415

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
