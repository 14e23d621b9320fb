"""The correctness rule of DESIGN.md section 4, shared by the parity tests.

Against a high-precision reference (float64), a zenattn result may be off by at most
``factor`` x the error of PyTorch's own implementation run in the same precision, plus a small
absolute floor for cases where PyTorch happens to be exact (error 0).
"""

from __future__ import annotations

import torch

FWD_FACTOR = 2.0    # outputs
GRAD_FACTOR = 3.0   # gradients

# Absolute floor per dtype, about one rounding step of an O(1) value in that dtype: PyTorch can
# land exactly on the reference where we round the other way, and 2 x 0 would then demand
# bit-exactness.
ATOL_FLOOR = {
    torch.float64: 1e-12,   # fp64 unit roundoff 1.1e-16; headroom for O(N) sums
    torch.float32: 2e-6,    # fp32 ulp of 1.0 is 1.2e-7; outputs reach |y| ~ 10
    torch.float16: 2e-3,    # fp16 ulp of 1.0 is 9.8e-4
    torch.bfloat16: 1.6e-2,  # bf16 ulp of 1.0 is 7.8e-3
}


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    return (out.double() - ref.double()).abs().max().item()


def assert_within_rule(name: str, ours: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor,
                       factor: float, dtype: torch.dtype) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(ours).all() or not torch.isfinite(ref).all(), f"{name}: non-finite values"
    ours_err, torch_err = max_err(ours, ref), max_err(theirs, ref)
    bound = factor * torch_err + ATOL_FLOOR[dtype]
    assert ours_err <= bound, (f"{name}: zenattn max error {ours_err:.3e} > {factor} x torch's "
                               f"{torch_err:.3e} + floor {ATOL_FLOOR[dtype]:.0e} ({dtype})")
