"""``zenattn.patch(model)``: swap torch's LayerNorm, RMSNorm and MultiheadAttention modules for
their zenattn twins, in place.

The twins are subclasses with the same parameters, so a swap changes only the module's class: the
parameters (and an optimizer's references to them), buffers, hooks, device, dtype and training mode
all stay. Only modules whose class is exactly torch's are swapped; a user subclass may override
``forward`` and is reported as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from zenattn import nn as zen_nn
from zenattn.functional.attention import MAX_HEAD_DIM

TWINS = {
    torch.nn.LayerNorm: zen_nn.LayerNorm,
    torch.nn.RMSNorm: zen_nn.RMSNorm,
    torch.nn.MultiheadAttention: zen_nn.MultiheadAttention,
}


@dataclass
class PatchReport:
    """What :func:`patch` did: ``swapped`` (name, torch class, zenattn class), ``skipped`` (name,
    reason) for modules that look like candidates but were left alone, and ``notes``."""

    swapped: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"zenattn.patch: swapped {len(self.swapped)} module(s)"]
        lines += [f"  {name or '(root)'}: {old} -> {new}" for name, old, new in self.swapped]
        lines += [f"  skipped {name or '(root)'}: {why}" for name, why in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _keep_out_of_fast_path(module, args):
    """A forward pre-hook that does nothing. torch's TransformerEncoderLayer skips its fused
    inference kernel (which reads the attention weights directly and would bypass zenattn) when any
    submodule has hooks; this one is there for that."""
    return None


def patch(model: torch.nn.Module, *, backend: Optional[str] = None) -> PatchReport:
    """Swap, in place, every ``torch.nn.LayerNorm``, ``torch.nn.RMSNorm`` and
    ``torch.nn.MultiheadAttention`` in ``model`` (``model`` itself included) for its zenattn twin,
    and return a :class:`PatchReport`. ``backend`` pins a zenattn backend on each swapped module.

    Results stay those of the torch modules within the kernels' rounding (DESIGN.md's rule), with
    the differences the twins document: a query whose every key is masked gives 0 (torch: NaN),
    and dropout draws zenattn's mask. :func:`unpatch` undoes it.
    """
    report = PatchReport()
    for name, module in model.named_modules():
        cls = type(module)
        twin = TWINS.get(cls)
        if twin is None:
            base = next((t for t in TWINS if isinstance(module, t)), None)
            if base is not None and not isinstance(module, tuple(TWINS.values())):
                report.skipped.append((name, f"{cls.__qualname__} subclasses {base.__qualname__} (its forward may "
                                             f"differ); swap it yourself"))
            continue
        module.__class__ = twin
        module.backend = backend
        if twin is zen_nn.MultiheadAttention:
            module._zenattn_hook = module.register_forward_pre_hook(_keep_out_of_fast_path)
            if module.head_dim > MAX_HEAD_DIM:
                report.notes.append(f"{name or '(root)'}: head_dim {module.head_dim} is over the kernels' limit "
                                    f"{MAX_HEAD_DIM}; it runs on the torch reference backend (N x N memory)")
        report.swapped.append((name, f"torch.nn.{cls.__name__}", f"zenattn.nn.{twin.__name__}"))
    if any(new == "zenattn.nn.MultiheadAttention" for _, _, new in report.swapped):
        report.notes.append("each swapped MultiheadAttention carries a no-op forward pre-hook, so "
                            "torch.nn.TransformerEncoderLayer does not take its fused inference path (which "
                            "would bypass zenattn)")
    return report


def unpatch(model: torch.nn.Module) -> int:
    """Undo :func:`patch`: zenattn twins become torch's modules again. Returns how many."""
    back = {twin: base for base, twin in TWINS.items()}
    count = 0
    for module in model.modules():
        base = back.get(type(module))
        if base is None:
            continue
        hook = getattr(module, "_zenattn_hook", None)
        if hook is not None:
            hook.remove()
            del module._zenattn_hook
        del module.backend
        module.__class__ = base
        count += 1
    return count
