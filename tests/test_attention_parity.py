"""Attention parity: zenattn's cpu kernels vs a float64 reference, judged by DESIGN.md's rule (error
<= 2x PyTorch's own same-dtype error for the output, 3x for dq/dk/dv, plus a tiny floor).

"PyTorch's own" is ``torch.nn.functional.scaled_dot_product_attention`` in the same dtype, given
the case as a dense mask (causal alignments, windows and ALiBi become a bool/float (Nq, Nk) mask,
GQA goes through ``enable_gqa``). SDPA cannot express softcap or a given dropout mask, so those
cases compare with the eager reference run in the low precision (``attention_ref(upcast=False)``),
which is what a user without fused kernels would run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zenattn

from parity import ALL_BACKENDS, FWD_FACTOR, GRAD_FACTOR, assert_within_rule, make_qkv, run_attention
from parity import check_attention_parity as check_parity

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def alibi(heads: int) -> torch.Tensor:
    """The ALiBi paper's slopes 2^(-8 h / H), h = 1..H."""
    return torch.tensor([2.0 ** (-8.0 * h / heads) for h in range(1, heads + 1)])


# ---- sequence lengths and head dims --------------------------------------------------------------

SEQ_LENS = [
    1,     # a single query and key
    2,     # smallest non-trivial softmax
    17,    # odd, shorter than one vector-width multiple of rows
    113,   # prime: a partial last query block (32 queries per block under causal masking here)
    127,   # one short of a power of two: partial blocks everywhere
    128,   # exactly four causal query blocks of 32
    129,   # one past: a 1-query tail block
    1023,  # just under a power of two; two forward key blocks of 512, the second partial
    1025,  # just over: a one-key third forward block, 64-query causal blocks (over 512 keys)
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seqlen", SEQ_LENS)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_seq_lens(backend, seqlen, dtype, causal):
    B, H = (1, 1) if seqlen >= 1023 else (2, 3)  # smaller batch for the long cases
    q, k, v = make_qkv(B, H, H, seqlen, seqlen, 40, 40, dtype)  # D = 40: not a power of two
    check_parity(q, k, v, dict(causal=causal), dtype, backend)


HEAD_DIMS = [
    8,     # smallest in the list: shorter than an AVX-512 vector
    40,    # not a power of two
    59,    # prime: vector body plus a scalar tail
    64,    # the common head dim
    111,   # odd, just under 112
    128,   # large power of two
    256,   # the kernels' maximum
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_attention_head_dims(backend, head_dim, dtype):
    q, k, v = make_qkv(2, 2, 2, 67, 67, head_dim, head_dim, dtype)  # 67: odd, crosses a 64-query block
    check_parity(q, k, v, dict(causal=True), dtype, backend)


# ---- features: causal alignments, windows, GQA, softcap, ALiBi, dropout, Nq != Nk -------------------

# (id, (B, Hq, Hkv, Nq, Nk, D, Dv), options for zenattn.attention)
FEATURES = [
    ("causal top-left", (2, 3, 3, 67, 67, 40, 40), dict(causal=True)),
    ("causal top-left q shorter", (2, 3, 3, 37, 131, 40, 40), dict(causal=True)),
    ("causal top-left q longer", (2, 3, 3, 131, 37, 40, 40), dict(causal=True)),
    ("causal bottom-right q shorter", (2, 3, 3, 37, 131, 40, 40),  # KV-cache decoding of a chunk
     dict(causal=True, alignment="bottom_right")),
    ("causal bottom-right q longer", (2, 3, 3, 131, 37, 40, 40),   # first 94 queries see no key: output 0
     dict(causal=True, alignment="bottom_right")),
    ("causal bottom-right one query", (2, 3, 3, 1, 129, 40, 40),   # single-token decode
     dict(causal=True, alignment="bottom_right")),
    ("q shorter than k", (2, 3, 3, 17, 129, 40, 40), {}),
    ("q longer than k", (2, 3, 3, 129, 17, 40, 40), {}),
    ("window both sides", (2, 3, 3, 131, 131, 40, 40), dict(window=(16, 8))),
    ("window left only", (2, 3, 3, 131, 131, 40, 40), dict(window=(7, None))),
    ("window right only", (2, 3, 3, 131, 131, 40, 40), dict(window=(-1, 5))),
    ("window (0, 0)", (2, 3, 3, 67, 67, 40, 40), dict(window=(0, 0))),  # each query sees one key
    ("sliding window causal", (2, 3, 3, 131, 131, 40, 40), dict(causal=True, window=(20, 0))),  # Mistral-style
    ("window bottom-right q shorter", (2, 3, 3, 37, 131, 40, 40),
     dict(window=(10, 3), alignment="bottom_right")),
    ("window empties some rows", (2, 3, 3, 131, 37, 40, 40), dict(window=(3, 3))),  # queries >= 41 see nothing
    ("MQA: 1 kv head", (2, 6, 1, 67, 67, 40, 40), {}),
    ("GQA: 2 kv heads causal", (2, 6, 2, 67, 67, 40, 40), dict(causal=True)),
    ("GQA: 3 kv heads window", (2, 6, 3, 67, 67, 40, 40), dict(window=(9, 4))),
    ("GQA bottom-right q shorter", (2, 6, 2, 17, 129, 40, 40), dict(causal=True, alignment="bottom_right")),
    ("softcap 1.5", (2, 3, 3, 67, 67, 40, 40), dict(softcap=1.5)),  # small cap: tanh saturates often
    ("softcap 50 causal", (2, 3, 3, 67, 67, 40, 40), dict(softcap=50.0, causal=True)),  # Gemma-2's value
    ("alibi per head", (2, 4, 4, 67, 67, 40, 40), dict(alibi_slopes=alibi(4))),
    ("alibi per batch and head bottom-right", (2, 4, 4, 37, 131, 40, 40),
     dict(alibi_slopes=torch.rand(2, 4), causal=True, alignment="bottom_right")),
    ("custom scale", (2, 3, 3, 67, 67, 40, 40), dict(scale=0.3)),
    ("negative scale", (2, 3, 3, 67, 67, 40, 40), dict(scale=-0.2)),
    ("value head dim differs", (2, 3, 3, 67, 89, 40, 24), dict(causal=True)),
    ("dropout 0.2", (2, 3, 3, 67, 67, 40, 40), dict(dropout_p=0.2)),
    ("dropout 0.5 causal GQA q shorter", (2, 6, 2, 37, 131, 40, 40),
     dict(dropout_p=0.5, causal=True, alignment="bottom_right")),
    ("everything", (2, 6, 3, 67, 131, 40, 40),
     dict(causal=True, alignment="bottom_right", window=(30, 0), softcap=5.0, alibi_slopes=alibi(6),
          dropout_p=0.1, scale=0.2)),
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", FEATURES, ids=[c[0] for c in FEATURES])
def test_attention_features(backend, case, dtype):
    _, (B, Hq, Hkv, Nq, Nk, D, Dv), opts = case
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, Dv, dtype)
    check_parity(q, k, v, opts, dtype, backend)


# ---- masks of every broadcastable shape ----------------------------------------------------------

MASK_TARGET = (2, 3, 19, 45)  # (B, H, Nq, Nk): every dim distinct so a wrong broadcast shows


def _mask_shapes():
    """Every rank 1..4 suffix of (B, H, Nq, Nk), with every subset of its dims set to 1."""
    for rank in range(1, 5):
        full = MASK_TARGET[-rank:]
        for ones in range(2 ** rank):
            yield tuple(1 if ones >> d & 1 else n for d, n in enumerate(full))


MASK_SHAPES = list(_mask_shapes())


def make_mask(kind, shape, dtype):
    if kind == "bool":
        return torch.rand(shape) > 0.3             # mostly allowed; size-1 masks may hide everything
    return (torch.randn(shape) * 2).to(dtype)      # additive, scores move by O(1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_attention_mask_broadcast(backend, shape, kind, dtype):
    B, H, Nq, Nk = MASK_TARGET
    q, k, v = make_qkv(B, H, H, Nq, Nk, 40, 40, dtype)
    check_parity(q, k, v, dict(attn_mask=make_mask(kind, shape, dtype)), dtype, backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_attention_float32_mask_with_low_precision_inputs(backend, dtype):
    """A float32 additive mask is accepted for half inputs (torch's SDPA wants the query's dtype, so it
    gets the mask rounded to it)."""
    q, k, v = make_qkv(2, 3, 3, 37, 53, 40, 40, dtype)
    mask = torch.randn(3, 37, 53) * 3
    dout = torch.randn(2, 3, 37, 40).to(dtype)
    ours = run_attention("zen", q, k, v, dout, dict(attn_mask=mask), None, backend)
    theirs = run_attention("torch", q, k, v, dout, dict(attn_mask=mask.to(dtype)), None)
    ref = run_attention("ref", q, k, v, dout, dict(attn_mask=mask), None)
    assert_within_rule("out", ours[0], theirs[0], ref[0], FWD_FACTOR, dtype)
    for name, o, t, r in zip(("dq", "dk", "dv"), ours[1], theirs[1], ref[1]):
        assert_within_rule(name, o, t, r, GRAD_FACTOR, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_mask_with_causal_window_and_gqa(dtype):
    """A user mask combined with the parameter masks: all restrictions apply together."""
    q, k, v = make_qkv(2, 6, 2, 37, 71, 40, 40, dtype)
    for mask in (torch.rand(2, 1, 37, 71) > 0.2, torch.randn(6, 1, 71).to(dtype)):
        opts = dict(attn_mask=mask, causal=True, alignment="bottom_right", window=(25, 0))
        check_parity(q, k, v, opts, dtype)


def test_attention_float64_inputs():
    """float64 input runs the kernels in float64: error at float64 rounding level, not float32's."""
    q, k, v = make_qkv(2, 3, 3, 67, 131, 59, 59, torch.float64)
    dout = torch.randn(2, 3, 67, 59, dtype=torch.float64)
    opts = dict(causal=True, alignment="bottom_right", softcap=3.0, alibi_slopes=alibi(3))
    ours = run_attention("zen", q, k, v, dout, opts, None)
    ref = run_attention("ref", q, k, v, dout, opts, None)
    assert ours[0].dtype == torch.float64
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-10, atol=1e-12)
    for o, r in zip(ours[1], ref[1]):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)


def test_torch_backend_matches_reference():
    """backend="torch" is the upcast reference itself (checked against SDPA in fp32)."""
    q, k, v = make_qkv(2, 3, 3, 17, 29, 40, 40, torch.float32)
    got = zenattn.attention(q, k, v, causal=True, backend="torch")
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, is_causal=True))
