"""Reference models built on zenattn's modules (see ``zenattn/models/transformer.py``)."""

from zenattn.models.transformer import KVCache, Transformer, TransformerConfig

__all__ = ["Transformer", "TransformerConfig", "KVCache"]
