"""Drop-in ``torch.nn`` modules backed by zenattn kernels, a self-attention block for new models,
and a recorder of attention maps."""

from zenattn.nn.attention import (AttentionRecord, MultiheadAttention, SelfAttention, apply_rotary,
                                  record_attention, rotary_cos_sin)
from zenattn.nn.normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm", "MultiheadAttention", "SelfAttention", "record_attention", "AttentionRecord",
           "apply_rotary", "rotary_cos_sin"]
