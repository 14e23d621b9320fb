"""Flash attention in Triton: kernels and their launchers (the ``triton`` backend of
``zenattn::attention_fwd`` / ``zenattn::attention_bwd``).

FlashAttention-2 structure, written for zenattn's contract (see ``zenattn.attention``):

- ``_attn_fwd_kernel``: one program per (query block, batch x query head). It streams the key/value
  blocks the masks can reach, keeps a running max and sum (``exp2`` of ``(s - max) * log2(e)``,
  see ``_scores`` for why log2(e) is applied after the subtraction), and writes O and the LSE
  (float32; float64 for float64 input) with ``lse_lo``, what rounding it lost (the backward's
  ``p = exp((s - lse) - lse_lo)``, see zenattn/ops/attention.py). Blocks wholly outside a
  causal/window band are never visited.
- ``_attn_bwd_preprocess_kernel``: ``delta = rowsum(dO * O) - dlse``.
- ``_attn_bwd_dkdv_kernel``: one program per (key block, batch x kv head) keeps K, V and their
  gradients on chip and loops over every query head of its GQA group and the reachable query
  blocks.
- ``_attn_bwd_dq_kernel``: one program per (query block, batch x query head) accumulates dQ.

No program writes another's output and nothing uses atomics, so the backward is deterministic
(bitwise repeatable) whatever ``deterministic`` says. Every score passes through ``_scores``, the
single place where scale, softcap, ALiBi, masks and windows are applied, in the order the contract
gives; ``dropout_keep`` (zenattn/triton/common.py) draws the same Philox4x32-10 stream as the C++ kernels
(``csrc/common/philox.h``), so one seed gives the same dropout mask on every backend.

Head dims up to 256 are padded to a power of two (at least 16, the smallest ``tl.dot``). Row
offsets are int64. On CUDA the block sizes are autotuned per (dtype, head dims, length bucket,
features); in Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) one fixed configuration
runs (also on CUDA with ``ZENATTN_TRITON_AUTOTUNE=0``).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from zenattn.ops.attention import new_like_q
from zenattn.triton import interpreting
from zenattn.triton.common import (acc_dtype, autotuned, cdiv, dot, dropout_args, dropout_keep, next_power_of_2,
                                   round_bf16, serialized_in_interpreter, stat_dtype, store_rounded, tanh, to_dtype)

MAX_HEAD_DIM = 256
LOG2E = tl.constexpr(1.4426950408889634)  # jit code reads module globals only as constexpr
LN2 = tl.constexpr(0.6931471805599453)


# ---- score and dropout helpers (shared by the forward and both backward kernels) -------------------

@triton.jit
def _scores(qk, i, j, b, h, Nq, Nk, off, wl, wr, scale, softcap,
            MASK, smb, smh, smi, smj, SLOPES, ssb, ssh,
            HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, HAS_ALIBI: tl.constexpr,
            HAS_SOFTCAP: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr):
    """Scores for the tile ``qk = q_i . k_j`` (any orientation: ``i`` and ``j`` are index tensors
    broadcasting to qk's shape), -inf where query i may not attend key j. Also returns
    ``tanh(scale * qk / softcap)`` (the softcap's derivative needs it; qk itself without softcap).

    Natural units, not base 2: the kernels subtract the row's max (forward) or the saved LSE
    (backward) from these, then multiply by log2(e) for ``exp2``. Folding log2(e) in before the
    subtraction would round the max and the LSE differently from the scores; at |scores| ~ 1e10
    (bf16 q and k near 1e5) that difference is ~1e3 and turns p = 1 into 0."""
    allowed = (i < Nq) & (j < Nk)
    rel = i + off - j                       # how far key j lies behind query i's diagonal
    if HAS_WL:
        allowed = allowed & (rel <= wl)
    if HAS_WR:
        allowed = allowed & (rel >= -wr)
    t = qk
    if HAS_MASK:
        mask_ptrs = (MASK + b.to(tl.int64) * smb + h.to(tl.int64) * smh + i.to(tl.int64) * smi
                     + j.to(tl.int64) * smj)
    s = qk * scale
    if HAS_SOFTCAP:
        t = tanh(s / softcap)
        s = softcap * t
    if HAS_ALIBI:
        slope = tl.load(SLOPES + b.to(tl.int64) * ssb + h.to(tl.int64) * ssh).to(qk.dtype)
        s = s - slope * tl.abs(rel).to(qk.dtype)
    if HAS_MASK and not MASK_BOOL:
        s = s + tl.load(mask_ptrs, mask=allowed, other=0.0).to(qk.dtype)
    if HAS_MASK and MASK_BOOL:
        allowed = allowed & (tl.load(mask_ptrs, mask=allowed, other=0) != 0)
    return tl.where(allowed, s, float("-inf")), t


@triton.jit
def _two_sum(a, b):
    """(hi, lo): hi = a + b rounded, hi + lo = a + b exactly (Knuth's two-sum)."""
    hi = a + b
    b_part = hi - a
    return hi, (a - (hi - b_part)) + (b - b_part)


@triton.jit
def _load_lse(LSE, LSE_LO, offs, inside, ACC: tl.constexpr):
    """The forward's lse and lse_lo at ``offs``; 0 for rows that attend nothing (lse -inf), where
    the -inf scores make every p 0."""
    lse = tl.load(LSE + offs, mask=inside, other=0.0)
    lse_lo = tl.load(LSE_LO + offs, mask=inside, other=0.0)
    return tl.where(lse == float("-inf"), 0.0, lse).to(ACC), lse_lo.to(ACC)


@triton.jit
def _key_range(m0, BLOCK_M: tl.constexpr, Nk, off, wl, wr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr):
    """[lo, hi): the keys any query of rows m0 .. m0 + BLOCK_M - 1 may attend under the window."""
    lo = 0
    hi = Nk
    if HAS_WL:
        lo = tl.maximum(m0 + off - wl, 0)
    if HAS_WR:
        hi = tl.minimum(m0 + BLOCK_M - 1 + off + wr + 1, Nk)
    return lo, hi


@triton.jit
def _query_range(n0, BLOCK_N: tl.constexpr, Nq, off, wl, wr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr):
    """[lo, hi): the queries that may attend any key of n0 .. n0 + BLOCK_N - 1 under the window."""
    lo = 0
    hi = Nq
    if HAS_WR:
        lo = tl.maximum(n0 - off - wr, 0)
    if HAS_WL:
        hi = tl.minimum(n0 + BLOCK_N - 1 - off + wl + 1, Nq)
    return lo, hi


@triton.jit
def _query_block_program(Nq, H, G, BLOCK_M: tl.constexpr):
    """(query block, b * H + h, b, h, kv head) of this program in a 1-D grid over query blocks x
    heads (axis 0 has no 65535 limit). The last query blocks, the longest under a causal band,
    start first."""
    num_m = tl.cdiv(Nq, BLOCK_M)
    pid = tl.program_id(0)
    bh = pid // num_m
    h = bh % H
    return num_m - 1 - pid % num_m, bh, bh // H, h, h // G


# ---- forward --------------------------------------------------------------------------------------

@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, LSE_LO, MASK, SLOPES,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, slb, slh, smb, smh, smi, smj, ssb, ssh,
    H, G, Nq, Nk, D, DV, TUNE_N,
    scale, softcap, off, wl, wr, seed, threshold, keep_scale,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_WL: tl.constexpr, HAS_WR: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m, bh, b, h, hk = _query_block_program(Nq, H, G, BLOCK_M)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = offs_m.to(tl.int64)

    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows[:, None] * sqm + offs_d[None, :],
                mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D), other=0.0)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)   # running max of the scores
    l_i = tl.zeros([BLOCK_M], ACC)                 # running sum of exp(score - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], ACC)
    lo, hi = _key_range(m0, BLOCK_M, Nk, off, wl, wr, HAS_WL, HAS_WR)
    lo = (lo // BLOCK_N) * BLOCK_N
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        cols = offs_n.to(tl.int64)
        kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None],
                     mask=(offs_n[None, :] < Nk) & (offs_d[:, None] < D), other=0.0)   # (BLOCK_D, BLOCK_N)
        qk = dot(q, kt, ACC, PRECISION, ROUND_BF16)
        s, _ = _scores(qk, offs_m[:, None], offs_n[None, :], b, h, Nq, Nk, off, wl, wr, scale,
                       softcap, MASK, smb, smh, smi, smj, SLOPES, ssb, ssh,
                       HAS_MASK, MASK_BOOL, HAS_ALIBI, HAS_SOFTCAP, HAS_WL, HAS_WR)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with nothing allowed yet
        alpha = tl.math.exp2((m_i - m_use) * LOG2E)
        p = tl.math.exp2((s - m_use[:, None]) * LOG2E)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            p = tl.where(dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], threshold), p, 0.0)
        v = tl.load(v_base + cols[:, None] * svn + offs_dv[None, :],
                    mask=(offs_n[:, None] < Nk) & (offs_dv[None, :] < DV), other=0.0)  # (BLOCK_N, BLOCK_DV)
        acc = acc * alpha[:, None] + dot(to_dtype(p, v.dtype, ROUND_BF16), v, ACC, PRECISION, ROUND_BF16)
        m_i = m_new

    empty = l_i == 0.0                       # no key allowed: output 0, lse -inf
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    if HAS_DROPOUT:
        out = out * keep_scale
    store_rounded(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh,
                  rows[:, None] * som + offs_dv[None, :], out,
                  (offs_m[:, None] < Nq) & (offs_dv[None, :] < DV), ROUND_BF16)
    # lse + lse_lo = m + log(l), see attention_fwd (from a finite m: -inf - -inf would be NaN)
    lse, lse_lo = _two_sum(tl.where(empty, 0.0, m_i), tl.math.log2(l_safe) * LN2)
    stats_at = b.to(tl.int64) * slb + h.to(tl.int64) * slh + rows
    tl.store(LSE + stats_at, tl.where(empty, float("-inf"), lse), mask=offs_m < Nq)
    tl.store(LSE_LO + stats_at, lse_lo, mask=offs_m < Nq)


# ---- backward -------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_preprocess_kernel(O, DO, DLSE, DELTA, rows, DV, BLOCK_R: tl.constexpr, BLOCK_DV: tl.constexpr,
                                HAS_DLSE: tl.constexpr, ACC: tl.constexpr):
    """delta[r] = sum_d dO[r, d] * O[r, d] - dlse[r], over contiguous (rows, DV) O and dO."""
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_DV)
    inside = (offs_r[:, None] < rows) & (offs_d[None, :] < DV)
    o = tl.load(O + offs_r[:, None] * DV + offs_d[None, :], mask=inside, other=0.0).to(ACC)
    do = tl.load(DO + offs_r[:, None] * DV + offs_d[None, :], mask=inside, other=0.0).to(ACC)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:  # d lse_i / d s_ij = p_ij: the lse's gradient enters as a shift of delta
        delta = delta - tl.load(DLSE + offs_r, mask=offs_r < rows, other=0.0).to(ACC)
    tl.store(DELTA + offs_r, delta, mask=offs_r < rows)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, LSE_LO, DELTA, DK, DV_OUT, MASK, SLOPES,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdkb, sdkh, sdkn, sdvb, sdvh, sdvn,
    smb, smh, smi, smj, ssb, ssh,
    H, G, Nq, Nk, D, DV, TUNE_N,
    scale, softcap, off, wl, wr, seed, threshold, keep_scale,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_WL: tl.constexpr, HAS_WR: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK, dV for one key block of one kv head, summed over its G query heads. Tiles are transposed
    (keys x queries) so the sums over queries are plain matrix products. dO, lse and delta are
    contiguous (B, H, Nq, ...)."""
    num_n = tl.cdiv(Nk, BLOCK_N)
    pid = tl.program_id(0)
    pid_n = pid % num_n
    bhk = pid // num_n
    Hk = H // G
    b = bhk // Hk
    hk = bhk % Hk
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    cols = offs_n.to(tl.int64)
    in_n = offs_n[:, None] < Nk
    k = tl.load(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + cols[:, None] * skn + offs_d[None, :],
                mask=in_n & (offs_d[None, :] < D), other=0.0)      # (BLOCK_N, BLOCK_D)
    v = tl.load(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + cols[:, None] * svn + offs_dv[None, :],
                mask=in_n & (offs_dv[None, :] < DV), other=0.0)    # (BLOCK_N, BLOCK_DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], ACC)
    lo, hi = _query_range(n0, BLOCK_N, Nq, off, wl, wr, HAS_WL, HAS_WR)
    lo = (lo // BLOCK_M) * BLOCK_M
    for g in range(0, G):
        h = hk * G + g
        bh = b * H + h
        q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        row_base = bh.to(tl.int64) * Nq
        for m0 in range(lo, hi, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            rows = offs_m.to(tl.int64)
            in_m = offs_m < Nq
            q = tl.load(q_base + rows[:, None] * sqm + offs_d[None, :],
                        mask=in_m[:, None] & (offs_d[None, :] < D), other=0.0)          # (BLOCK_M, BLOCK_D)
            do = tl.load(DO + (row_base + rows)[:, None] * DV + offs_dv[None, :],
                         mask=in_m[:, None] & (offs_dv[None, :] < DV), other=0.0)     # (BLOCK_M, BLOCK_DV)
            lse, lse_lo = _load_lse(LSE, LSE_LO, row_base + rows, in_m, ACC)
            delta = tl.load(DELTA + row_base + rows, mask=in_m, other=0.0)
            qkt = dot(k, tl.trans(q), ACC, PRECISION, ROUND_BF16)     # (BLOCK_N, BLOCK_M)
            st, tt = _scores(qkt, offs_m[None, :], offs_n[:, None], b, h, Nq, Nk, off, wl, wr, scale,
                             softcap, MASK, smb, smh, smi, smj, SLOPES, ssb, ssh,
                             HAS_MASK, MASK_BOOL, HAS_ALIBI, HAS_SOFTCAP, HAS_WL, HAS_WR)
            # p <= 1; the min keeps it so where huge scores (~1e10) round differently than in the forward
            pt = tl.math.exp2(tl.minimum((st - lse[None, :]) - lse_lo[None, :], 0.0) * LOG2E)
            dpt = dot(v, tl.trans(do), ACC, PRECISION, ROUND_BF16)   # (BLOCK_N, BLOCK_M)
            if HAS_DROPOUT:
                keep = dropout_keep(seed, bh, offs_m[None, :], offs_n[:, None], threshold)
                pdt = tl.where(keep, pt * keep_scale, 0.0)
                dpt = tl.where(keep, dpt * keep_scale, 0.0)
            else:
                pdt = pt
            dv += dot(to_dtype(pdt, do.dtype, ROUND_BF16), do, ACC, PRECISION, ROUND_BF16)
            dst = pt * (dpt - delta[None, :].to(ACC))
            if HAS_SOFTCAP:
                dst = dst * (1.0 - tt * tt)
            dk += dot(to_dtype(dst, q.dtype, ROUND_BF16), q, ACC, PRECISION, ROUND_BF16)
    dk = dk * scale
    store_rounded(DK + b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh, cols[:, None] * sdkn + offs_d[None, :],
                  dk, in_n & (offs_d[None, :] < D), ROUND_BF16)
    store_rounded(DV_OUT + b.to(tl.int64) * sdvb + hk.to(tl.int64) * sdvh, cols[:, None] * sdvn + offs_dv[None, :],
                  dv, in_n & (offs_dv[None, :] < DV), ROUND_BF16)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, LSE_LO, DELTA, DQ, MASK, SLOPES,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdqb, sdqh, sdqm,
    smb, smh, smi, smj, ssb, ssh,
    H, G, Nq, Nk, D, DV, TUNE_N,
    scale, softcap, off, wl, wr, seed, threshold, keep_scale,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_WL: tl.constexpr, HAS_WR: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ for one query block of one query head, over the reachable key blocks."""
    pid_m, bh, b, h, hk = _query_block_program(Nq, H, G, BLOCK_M)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = offs_m.to(tl.int64)
    in_m = offs_m < Nq
    row_base = bh.to(tl.int64) * Nq
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows[:, None] * sqm + offs_d[None, :],
                mask=in_m[:, None] & (offs_d[None, :] < D), other=0.0)
    do = tl.load(DO + (row_base + rows)[:, None] * DV + offs_dv[None, :],
                 mask=in_m[:, None] & (offs_dv[None, :] < DV), other=0.0)
    lse, lse_lo = _load_lse(LSE, LSE_LO, row_base + rows, in_m, ACC)
    delta = tl.load(DELTA + row_base + rows, mask=in_m, other=0.0).to(ACC)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    lo, hi = _key_range(m0, BLOCK_M, Nk, off, wl, wr, HAS_WL, HAS_WR)
    lo = (lo // BLOCK_N) * BLOCK_N
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        cols = offs_n.to(tl.int64)
        k = tl.load(k_base + cols[:, None] * skn + offs_d[None, :],
                    mask=(offs_n[:, None] < Nk) & (offs_d[None, :] < D), other=0.0)    # (BLOCK_N, BLOCK_D)
        v = tl.load(v_base + cols[:, None] * svn + offs_dv[None, :],
                    mask=(offs_n[:, None] < Nk) & (offs_dv[None, :] < DV), other=0.0)  # (BLOCK_N, BLOCK_DV)
        qk = dot(q, tl.trans(k), ACC, PRECISION, ROUND_BF16)
        s, t = _scores(qk, offs_m[:, None], offs_n[None, :], b, h, Nq, Nk, off, wl, wr, scale,
                       softcap, MASK, smb, smh, smi, smj, SLOPES, ssb, ssh,
                       HAS_MASK, MASK_BOOL, HAS_ALIBI, HAS_SOFTCAP, HAS_WL, HAS_WR)
        p = tl.math.exp2(tl.minimum((s - lse[:, None]) - lse_lo[:, None], 0.0) * LOG2E)   # p <= 1, as in dK/dV
        dp = dot(do, tl.trans(v), ACC, PRECISION, ROUND_BF16)
        if HAS_DROPOUT:
            keep = dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], threshold)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq += dot(to_dtype(ds, k.dtype, ROUND_BF16), k, ACC, PRECISION, ROUND_BF16)
    dq = dq * scale
    store_rounded(DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh, rows[:, None] * sdqm + offs_d[None, :],
                  dq, in_m[:, None] & (offs_d[None, :] < D), ROUND_BF16)


# ---- block sizes ----------------------------------------------------------------------------------

# On CUDA: autotuned over these (sm_80 and sm_90 both; configs that exceed a device's shared memory
# fail to compile and the autotuner drops them). The key buckets the lengths to powers of two, so
# decoding against a growing cache does not retune at every step.
_TUNE_KEY = ["TUNE_N", "BLOCK_D", "BLOCK_DV", "HAS_MASK", "HAS_WL", "HAS_WR", "HAS_DROPOUT", "HAS_SOFTCAP"]
_FWD_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3),
                                     (128, 32, 4, 4), (64, 32, 4, 2), (128, 128, 8, 2), (64, 128, 4, 3),
                                     (32, 32, 4, 1)]]   # the last fits any head dim and dtype
_BWD_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in [(64, 128, 8, 2), (64, 64, 4, 2), (32, 128, 4, 2), (64, 64, 8, 3),
                                     (32, 64, 4, 2), (128, 128, 8, 2), (32, 32, 4, 2), (32, 32, 4, 1)]]
# Without autotuning (the interpreter, or ZENATTN_TRITON_AUTOTUNE=0): one configuration. In the
# interpreter every program step is numpy work, so large blocks mean fewer steps.
def gpu_fixed_config(block_d: int, block_dv: int) -> dict:
    """The configuration on CUDA without autotuning."""
    if max(block_d, block_dv) > 128:  # D = 256: fits sm_80's shared memory in fp32 too (tests/test_triton_compile.py)
        return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}


def _fixed_config(block_d: int, block_dv: int) -> dict:
    return {"BLOCK_M": 64, "BLOCK_N": 64} if interpreting() else gpu_fixed_config(block_d, block_dv)


_FWD_TUNED = autotuned(_attn_fwd_kernel, _FWD_CONFIGS, _TUNE_KEY)
_DKDV_TUNED = autotuned(_attn_bwd_dkdv_kernel, _BWD_CONFIGS, _TUNE_KEY)
_DQ_TUNED = autotuned(_attn_bwd_dq_kernel, _BWD_CONFIGS, _TUNE_KEY)


def _launch(kernel, tuned, programs, args, meta):
    """Run ``kernel`` over a 1-D grid of ``programs(BLOCK_M, BLOCK_N)`` programs: autotuned on CUDA,
    with the fixed blocks otherwise."""
    if tuned is None:
        config = _fixed_config(meta["BLOCK_D"], meta["BLOCK_DV"])
        kernel[(programs(config["BLOCK_M"], config["BLOCK_N"]),)](*args, **meta, **config)
    else:
        tuned[lambda cfg: (programs(cfg["BLOCK_M"], cfg["BLOCK_N"]),)](*args, **meta)


# ---- launchers ----------------------------------------------------------------------------------

def _unit_last_stride(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _head_dim_block(d: int) -> int:
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"zenattn triton attention: head dims must be in 1..{MAX_HEAD_DIM}, got {d}")
    return max(16, next_power_of_2(d))


def _window_side(side: int, nq: int, nk: int) -> int:
    """-1 (unbounded) for a side that reaches past every key anyway (keeps the int32 index math safe)."""
    return -1 if side < 0 or side > nq + nk else side


def _score_args(q: Tensor, k: Tensor, attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor],
                seed: Optional[Tensor], scale: float, softcap: float, window_left: int, window_right: int,
                bottom_right: bool, dropout_p: float):
    """(mask strides, slopes strides, scalars, constexpr flags) shared by the three kernels."""
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    mask = attn_mask
    if mask is not None:
        mask = mask[(None,) * (4 - mask.dim())].expand(B, H, Nq, Nk)   # broadcast dims get stride 0
    slopes = alibi_slopes
    if slopes is not None:
        slopes = slopes[None].expand(B, H) if slopes.dim() == 1 else slopes
    wl = _window_side(window_left, Nq, Nk)
    wr = _window_side(window_right, Nq, Nk)
    mask_strides = tuple(mask.stride()) if mask is not None else (0, 0, 0, 0)
    slope_strides = tuple(slopes.stride()) if slopes is not None else (0, 0)
    scalars = (float(scale), float(softcap), Nk - Nq if bottom_right else 0,
               max(wl, 0), max(wr, 0), *dropout_args(int(seed.item()) if dropout_p > 0 else 0, dropout_p))
    flags = dict(HAS_MASK=mask is not None, MASK_BOOL=mask is not None and mask.dtype == torch.bool,
                 HAS_ALIBI=slopes is not None, HAS_SOFTCAP=softcap > 0, HAS_WL=wl >= 0, HAS_WR=wr >= 0,
                 HAS_DROPOUT=dropout_p > 0, ACC=acc_dtype(q.dtype),
                 PRECISION="ieee" if q.dtype in (torch.float32, torch.float64) else "tf32",
                 ROUND_BF16=round_bf16(q.dtype))
    return mask, slopes, mask_strides, slope_strides, scalars, flags


def _sizes(q: Tensor, k: Tensor, v: Tensor):
    B, H, Nq, D = q.shape
    Hk, Nk, DV = k.shape[1], k.shape[2], v.shape[3]
    tune_n = next_power_of_2(max(Nq, Nk, 1))
    block_d, block_dv = head_dim_blocks(D, DV, q.device)
    return (H, H // Hk if Hk else 1, Nq, Nk, D, DV, tune_n), dict(BLOCK_D=block_d, BLOCK_DV=block_dv)


def head_dim_blocks(d: int, dv: int, device: torch.device) -> tuple[int, int]:
    """The padded query/key and value head dims. On CUDA both are the larger one: with a smaller
    value block (D 40, Dv 24: blocks 64 and 32) Triton 3.6 on an H200 computed a wrong bf16/fp16
    output with the fixed configuration and hit an illegal memory access while autotuning (float32
    and the interpreter were right); benchmarks/results/gpu-h200-2026-11-29.md."""
    block_d, block_dv = _head_dim_block(d), _head_dim_block(dv)
    if device.type == "cuda":
        block_d = block_dv = max(block_d, block_dv)
    return block_d, block_dv


@serialized_in_interpreter
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor],
                  seed: Optional[Tensor], scale: float, softcap: float, window_left: int, window_right: int,
                  bottom_right: bool, dropout_p: float) -> list[Tensor]:
    q_in = q
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    B, H, Nq, _ = q.shape
    # Half-precision inputs: the kernel writes the output in float32 (kept for the backward's
    # delta = rowsum(dO * O): from the rounded output it would shift every dS of a row by up to a
    # rounding step of O), and the caller gets it rounded to q's dtype.
    half = q.dtype in (torch.float16, torch.bfloat16)
    out = new_like_q(q_in, v.shape[3], torch.float32 if half else q.dtype, "triton")
    # lse + lse_lo = each row's max + log(sum) to twice lse's precision (zenattn/ops/attention.py).
    lse = torch.empty(B, H, Nq, dtype=stat_dtype(q.dtype), device=q.device)
    lse_lo = torch.empty_like(lse)
    sizes, blocks = _sizes(q, k, v)

    def result():
        return [out.to(q.dtype), lse, out, lse_lo] if half else [out, lse, out.new_empty(0), lse_lo]
    if out.numel() == 0:
        lse.fill_(float("-inf"))
        lse_lo.zero_()
        return result()
    mask, slopes, mask_strides, slope_strides, scalars, flags = _score_args(
        q, k, attn_mask, alibi_slopes, seed, scale, softcap, window_left, window_right, bottom_right, dropout_p)
    args = (q, k, v, out, lse, lse_lo, mask, slopes, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *out.stride()[:3], *lse.stride()[:2], *mask_strides, *slope_strides, *sizes, *scalars)
    _launch(_attn_fwd_kernel, _FWD_TUNED, lambda BLOCK_M, BLOCK_N: B * H * cdiv(Nq, BLOCK_M), args,
            dict(**flags, **blocks))
    return result()


@serialized_in_interpreter
def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, lse_lo: Tensor,
                  dlse: Optional[Tensor],
                  attn_mask: Optional[Tensor], alibi_slopes: Optional[Tensor], seed: Optional[Tensor], scale: float,
                  softcap: float, window_left: int, window_right: int, bottom_right: bool,
                  dropout_p: float) -> list[Tensor]:
    q_in = q
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    B, H, Nq, _ = q.shape
    Hk, Nk, DV = k.shape[1], k.shape[2], v.shape[3]
    dq = new_like_q(q_in, q.shape[3], q.dtype, "triton")
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if B * H * Nq == 0 or Nk == 0:  # nothing attends anything: every gradient is 0
        return [dq.zero_(), dk.zero_(), dv.zero_()]
    dout, out, lse, lse_lo = dout.contiguous(), out.contiguous(), lse.contiguous(), lse_lo.contiguous()
    delta = torch.empty(B, H, Nq, dtype=stat_dtype(q.dtype), device=q.device)
    rows = B * H * Nq
    block_dv = _head_dim_block(DV)
    block_r = max(1, min(64, 4096 // block_dv))
    _attn_bwd_preprocess_kernel[(cdiv(rows, block_r),)](
        out, dout, dlse.contiguous() if dlse is not None else None, delta, rows, DV,
        BLOCK_R=block_r, BLOCK_DV=block_dv, HAS_DLSE=dlse is not None, ACC=acc_dtype(q.dtype))

    sizes, blocks = _sizes(q, k, v)
    mask, slopes, mask_strides, slope_strides, scalars, flags = _score_args(
        q, k, attn_mask, alibi_slopes, seed, scale, softcap, window_left, window_right, bottom_right, dropout_p)
    meta = dict(**flags, **blocks)
    qkv_strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    tail = (*mask_strides, *slope_strides, *sizes, *scalars)
    _launch(_attn_bwd_dkdv_kernel, _DKDV_TUNED, lambda BLOCK_M, BLOCK_N: B * Hk * cdiv(Nk, BLOCK_N),
            (q, k, v, dout, lse, lse_lo, delta, dk, dv, mask, slopes, *qkv_strides, *dk.stride()[:3], *dv.stride()[:3],
             *tail), meta)
    _launch(_attn_bwd_dq_kernel, _DQ_TUNED, lambda BLOCK_M, BLOCK_N: B * H * cdiv(Nq, BLOCK_M),
            (q, k, v, dout, lse, lse_lo, delta, dq, mask, slopes, *qkv_strides, *dq.stride()[:3], *tail), meta)
    return [dq, dk, dv]
