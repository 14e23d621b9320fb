"""Flash attention on the CUDA C++ kernels (csrc/cuda/attention_*.cu, attention.cpp).

``attention_fwd`` / ``attention_bwd`` with the launcher signatures of ``zenattn::attention_fwd`` /
``attention_bwd`` (zenattn/ops/attention.py), over ``zenattn._C.cuda_attention_fwd`` / ``_bwd``.
The kernels cover a subset of the contract, named by :func:`unsupported`: float16/bfloat16, head
dims 64 and 128 (query, key and value alike), causal in both alignments, sliding windows, GQA/MQA,
query length != key length, fully masked rows. Masks, ALiBi, softcap and dropout run on the
``triton`` backend; asking the ``cuda`` backend for them raises an error that says so. The backward
is deterministic whatever ``deterministic`` says (no atomics).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zenattn import backends

HEAD_DIMS = (64, 128)
DTYPES = (torch.float16, torch.bfloat16)


def unsupported(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
                alibi_slopes: Optional[Tensor] = None, softcap: float = 0.0, dropout_p: float = 0.0) -> Optional[str]:
    """Why the CUDA C++ attention kernels cannot run this call, or None."""
    if q.dtype not in DTYPES:
        return f"the cuda attention kernels take float16/bfloat16, got {q.dtype}"
    dims = {q.shape[-1], k.shape[-1], v.shape[-1]}
    if len(dims) != 1 or q.shape[-1] not in HEAD_DIMS:
        return (f"the cuda attention kernels take head dims {HEAD_DIMS} (query, key and value alike), got "
                f"{q.shape[-1]} (query/key) and {v.shape[-1]} (value)")
    for name, present in (("attn_mask", attn_mask is not None), ("alibi_slopes", alibi_slopes is not None),
                          ("softcap", softcap > 0), ("dropout", dropout_p > 0)):
        if present:
            return f"the cuda attention kernels have no {name}"
    return None


def _check(q, k, v, attn_mask, alibi_slopes, softcap, dropout_p) -> None:
    why = unsupported(q, k, v, attn_mask, alibi_slopes, softcap, dropout_p)
    if why is not None:
        raise backends.BackendUnavailableError(f"zenattn attention: {why}; backend='triton' runs it")


def _aligned(t: Tensor) -> Tensor:
    """t itself where the kernels can copy its rows 16 bytes at a time, else a contiguous copy."""
    ok = (t.data_ptr() % 16 == 0 and t.stride(-1) == 1
          and all(t.shape[i] <= 1 or t.stride(i) % 8 == 0 for i in range(3)))
    return t if ok else t.contiguous()


def _window_side(side: int, nq: int, nk: int) -> int:
    """-1 (unbounded) for a side that reaches past every key anyway (keeps the kernels' int math small)."""
    return -1 if side < 0 or side > nq + nk else side


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor],
                  seed: Optional[Tensor], scale: float, softcap: float, window_left: int, window_right: int,
                  bottom_right: bool, dropout_p: float) -> list[Tensor]:
    _check(q, k, v, attn_mask, alibi_slopes, softcap, dropout_p)
    q, k, v = (_aligned(t) for t in (q, k, v))
    nq, nk = q.shape[2], k.shape[2]
    with torch.cuda.device(q.device):
        out, lse, out_acc = backends.extension().cuda_attention_fwd(
            q, k, v, float(scale), _window_side(window_left, nq, nk), _window_side(window_right, nq, nk),
            bool(bottom_right), _stream(q))
    # No lse_lo (zenattn/ops/attention.py): float16/bfloat16 rounding dwarfs what rounding lse loses.
    return [out, lse, out_acc, q.new_empty(0)]


def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, lse_lo: Tensor,
                  dlse: Optional[Tensor],
                  attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor], seed: Optional[Tensor], scale: float,
                  softcap: float, window_left: int, window_right: int, bottom_right: bool,
                  dropout_p: float) -> list[Tensor]:
    _check(q, k, v, attn_mask, alibi_slopes, softcap, dropout_p)
    # delta = rowsum(dO * O) from the float32 output the forward kept, less the LSE's own gradient
    # (d lse / d s = p, so it enters dS = P (dP - delta) with the opposite sign).
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    q, k, v, dout = (_aligned(t) for t in (q, k, v, dout))
    nq, nk = q.shape[2], k.shape[2]
    with torch.cuda.device(q.device):
        dq, dk, dv = backends.extension().cuda_attention_bwd(
            dout, q, k, v, lse.float(), delta, float(scale), _window_side(window_left, nq, nk),
            _window_side(window_right, nq, nk), bool(bottom_right), _stream(q))
    return [dq, dk, dv]
