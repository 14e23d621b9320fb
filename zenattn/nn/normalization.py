"""LayerNorm and RMSNorm modules: subclasses of torch's own, so the constructor, parameters,
``state_dict`` and ``repr`` are torch's; only ``forward`` runs zenattn's kernels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zenattn import functional as F


class LayerNorm(torch.nn.LayerNorm):
    """Drop-in ``torch.nn.LayerNorm``.

    Extras: ``forward(input, residual=None)`` fuses a pre-norm residual add and then returns
    ``(normalized, input + residual)``; ``backend=`` (keyword) pins a zenattn backend.
    """

    def __init__(self, *args, backend: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor, residual: Optional[Tensor] = None):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                            residual=residual, backend=self.backend)


class RMSNorm(torch.nn.RMSNorm):
    """Drop-in ``torch.nn.RMSNorm``, with the same extras as :class:`LayerNorm`."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor, residual: Optional[Tensor] = None):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps,
                          residual=residual, backend=self.backend)
