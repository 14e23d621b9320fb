"""The ``zenattn`` torch.library namespace and the helpers every op module defines its ops with."""

from __future__ import annotations

import torch

lib = torch.library.Library("zenattn", "DEF")


def define(schema: str, impl, fake):
    """Define zenattn::<schema>, implemented by ``impl`` on CPU and CUDA tensors (the ``backend``
    argument picks the kernels) and by ``fake`` for meta/fake tensors; returns the op."""
    name = schema.split("(", 1)[0]
    lib.define(schema)
    for key in ("CPU", "CUDA"):
        lib.impl(name, impl, key)
    torch.library.register_fake(f"zenattn::{name}", fake, lib=lib)
    return getattr(torch.ops.zenattn, name).default


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics / log-sum-exp dtype: float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32
