"""Drop-in ``torch.nn`` modules backed by zenattn kernels."""

from zenattn.nn.normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
