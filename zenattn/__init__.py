"""zenattn: fused attention and normalization kernels for PyTorch.

    import zenattn
    y = zenattn.layer_norm(x, (hidden,), weight, bias)
    o = zenattn.scaled_dot_product_attention(q, k, v, is_causal=True)   # drop-in for torch's
    o = zenattn.attention(q, k, v, causal=True, window=(256, 0))        # masks as parameters
    q = zenattn.apply_rotary(q, cos, sin)                              # rotary embedding, one pass
    ln = zenattn.nn.LayerNorm(hidden)          # drop-in for torch.nn.LayerNorm
    print(zenattn.patch(model))                # swap a model's norms and attention in place
    print(zenattn.info())                      # what is built and usable here
    print(zenattn.explain("layer_norm", x))    # which backend would run, and why

Importing never fails because a backend is missing: ``zenattn.info()`` says what is absent.
"""

from __future__ import annotations

from typing import Optional

import torch

from zenattn.version import __version__
from zenattn import backends, reference
from zenattn import ops  # noqa: F401  (registers the zenattn:: torch.library ops)
from zenattn.backends import BackendUnavailableError
from zenattn.functional import apply_rotary, attention, layer_norm, rms_norm, scaled_dot_product_attention
from zenattn import nn  # noqa: E402
from zenattn.patch import PatchReport, patch, unpatch  # noqa: E402

__all__ = ["__version__", "attention", "scaled_dot_product_attention", "layer_norm", "rms_norm", "apply_rotary", "nn", "info", "explain", "reference",
           "backends", "BackendUnavailableError", "patch", "unpatch", "PatchReport", "empty_cache"]


def info() -> dict:
    """Version, the compiled extension's build facts, and each backend's status here."""
    ext, why = backends._extension()
    return {
        "zenattn": __version__,
        "torch": torch.__version__,
        "triton": backends._triton_version(),
        "extension": ext.build_info() if ext is not None else {"error": why},
        "backends": {name: {"built": s.built, "usable": s.usable, "reason": s.reason}
                     for name in backends.ALL_BACKENDS for s in [backends.status(name)]},
    }


def empty_cache() -> int:
    """Let go of the memory zenattn's CPU kernels keep between calls, as ``torch.cuda.empty_cache``
    does for CUDA's cache; returns the bytes released. That is the attention launchers' scratch
    buffer: at most 16 MiB, kept so that calls of up to that much scratch do not fault fresh pages
    in every time (csrc/cpu/attention.cpp). A call in progress on another thread finishes first.
    Each kernel thread's own tiles (about 2 MiB a thread at most) stay until the thread ends."""
    ext, _ = backends._extension()
    return int(ext._release_attention_scratch()) if ext is not None else 0


backends.refresh()  # probe every backend now, so code traced by torch.compile only reads results


def explain(op: str, *tensors: Optional[torch.Tensor], backend: Optional[str] = None) -> str:
    """Which backend would run ``op`` (``"attention"``, ``"layer_norm"``, ``"rms_norm"``, ``"rotary"``) on these
    tensors, and why."""
    return f"zenattn {op}: " + backends.select(op, *tensors, backend=backend).describe()
