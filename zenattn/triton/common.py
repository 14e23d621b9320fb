"""Helpers shared by the Triton kernels: accumulation dtypes and the interpreter's bf16 rounding."""

from __future__ import annotations

import functools
import math
import os
import threading

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from zenattn.triton import interpreting


@triton.jit
def round_to_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), still as fp32. Triton's interpreter truncates
    fp32 -> bf16 conversions; this rounding first makes them exact. Used only when interpreting."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def to_dtype(x, DTYPE: tl.constexpr, ROUND_BF16: tl.constexpr):
    """``x.to(DTYPE)``, rounding to nearest under the interpreter (see :func:`round_to_bf16`)."""
    if ROUND_BF16:
        x = round_to_bf16(x.to(tl.float32))
    return x.to(DTYPE)


@triton.jit
def dot(a, b, ACC: tl.constexpr, PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr):
    """``tl.dot(a, b)`` accumulated in ACC. Under the interpreter (ROUND_BF16), bf16 operands are
    widened to fp32 first (exactly): its dot multiplies bf16's raw storage bits otherwise."""
    if ROUND_BF16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee", out_dtype=ACC)
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def _tanh_exp(x):
    """tanh from exp, in float64 (absolute error ~1e-16): the interpreter has no libdevice."""
    y = x.to(tl.float64)
    e = tl.exp(-2.0 * tl.abs(y))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(y < 0, -t, t).to(x.dtype)


@triton.jit
def _tanh_libdevice(x):
    return libdevice.tanh(x)


tanh = _tanh_exp if interpreting() else _tanh_libdevice


@triton.jit
def store_rounded(PTR, offsets, value, mask, ROUND_BF16: tl.constexpr):
    tl.store(PTR + offsets, to_dtype(value, PTR.dtype.element_ty, ROUND_BF16), mask=mask)


@triton.jit
def dropout_keep(seed, bh, i, j, threshold):
    """Keep flags for attention scores (bh, i, j), or for norm elements (0, row, col): Philox4x32-10
    under ``seed`` at counter (j // 4, i, bh, high bits), word j % 4, kept when its top 24 bits are
    >= threshold, as ``DropoutRng::keep4`` in csrc/common/philox.h. Indices are int32."""
    zero = (i + j) * 0                       # broadcast shape, int32
    c0 = (zero + (j >> 2)).to(tl.uint32, bitcast=True)
    c1 = (zero + i).to(tl.uint32, bitcast=True)
    c2 = (zero + bh).to(tl.uint32, bitcast=True)
    c3 = zero.to(tl.uint32, bitcast=True)  # the high bits of (bh, i, j // 4): 0 for int32 indices
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    w = (zero + j) & 3
    word = tl.where(w == 0, r0, tl.where(w == 1, r1, tl.where(w == 2, r2, r3)))
    return (word >> 8).to(tl.int32) >= threshold


def dropout_args(seed: int, dropout_p: float) -> tuple[int, int, float]:
    """(seed, keep threshold, 1 / (1 - p)) as the kernels take them: keep iff a draw's top 24 bits
    are >= ceil(p * 2^24), as ``DropoutRng::threshold_for``; (0, 0, 1.0) without dropout."""
    if dropout_p <= 0:
        return 0, 0, 1.0
    return seed, math.ceil(dropout_p * 2 ** 24), 1.0 / (1.0 - dropout_p)


# Host-side sizes for the launchers in plain Python: triton.next_power_of_2 and triton.cdiv are
# constexpr_functions in triton 3.9, about 2 us a call through their wrapper, against 0.04 us (a
# Triton attention forward+backward makes about ten such calls; the GPU model step is host-bound).
def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), as triton.next_power_of_2."""
    return 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for a >= 0, b > 0, as triton.cdiv."""
    return (a + b - 1) // b


def acc_dtype(dtype: torch.dtype):
    """The Triton accumulation dtype for inputs of ``dtype``: float64 for float64, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def round_bf16(dtype: torch.dtype) -> bool:
    """Whether stores of ``dtype`` need :func:`round_to_bf16` (bf16 under the interpreter)."""
    return dtype == torch.bfloat16 and interpreting()


_INTERPRETER_LOCK = threading.RLock()


def serialized_in_interpreter(launcher):
    """Triton's interpreter keeps the running program's grid position in global state, so two kernels
    interpreted at once from different Python threads corrupt each other ("x >= grid_dim[0]"). Under
    the interpreter a launcher wrapped in this runs one at a time; compiled kernels are unaffected."""
    if not interpreting():
        return launcher

    @functools.wraps(launcher)
    def one_at_a_time(*args, **kwargs):
        with _INTERPRETER_LOCK:
            return launcher(*args, **kwargs)
    return one_at_a_time


AUTOTUNE_ENV = "ZENATTN_TRITON_AUTOTUNE"


def autotuned(kernel, configs, key):
    """``kernel`` autotuned over ``configs`` (keyed on the argument names in ``key``), or None where
    the launcher runs one fixed configuration instead: in the interpreter, and with
    ZENATTN_TRITON_AUTOTUNE=0 (the GPU test run sets it: every new shape family would otherwise
    compile and time every configuration)."""
    if interpreting() or os.environ.get(AUTOTUNE_ENV, "1") == "0":
        return None
    return triton.autotune(configs=configs, key=key)(kernel)
