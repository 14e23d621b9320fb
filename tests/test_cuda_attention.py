"""The CUDA C++ attention kernels (backend "cuda"): parity with the float64 reference on their
supported grid (float16/bfloat16, head dims 64 and 128, causal both alignments, windows, GQA,
q length != k length, fully masked rows, the LSE's gradient), bitwise-repeatable backward, and the
errors that name what they do not support.

The parity tests need a CUDA GPU and zenattn built with CUDA (``ZENATTN_TEST_DEVICE=cuda``, as
benchmarks/gpu_check.sh runs them); on a machine without one they are skipped, and the kernels are
only compile-checked (tests/test_cuda_compile.py). The checks of ``unsupported`` run anywhere."""

from __future__ import annotations

import pytest
import torch

import zenattn
from zenattn.cuda.attention import unsupported

from parity import TEST_DEVICE, check_attention_parity, make_qkv

CUDA_BUILT = bool(zenattn.info()["extension"].get("cuda"))
needs_cuda_gpu = pytest.mark.skipif(
    TEST_DEVICE != "cuda" or not CUDA_BUILT,
    reason="runs the CUDA C++ kernels: needs ZENATTN_TEST_DEVICE=cuda on a GPU and zenattn built with CUDA")

DTYPES = [torch.float16, torch.bfloat16]


@needs_cuda_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("seqlen", [1, 17, 64, 113, 129, 1023])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_attention_parity(dtype, head_dim, seqlen, causal):
    q, k, v = make_qkv(2, 3, 3, seqlen, seqlen, head_dim, head_dim, dtype)
    check_attention_parity(q, k, v, dict(causal=causal), dtype, backend="cuda")


@needs_cuda_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nq, nk", [(17, 129), (129, 17), (1, 300), (300, 1)])  # q longer and shorter than k
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_cuda_attention_lengths_and_alignments(dtype, nq, nk, alignment):
    """Bottom-right with q longer than k leaves the first rows fully masked: output 0, gradients 0."""
    q, k, v = make_qkv(1, 2, 2, nq, nk, 64, 64, dtype)
    check_attention_parity(q, k, v, dict(causal=True, alignment=alignment), dtype, backend="cuda")


@needs_cuda_gpu
@pytest.mark.parametrize("window", [(32, 0), (16, 8), (0, 0), (None, 5)])
@pytest.mark.parametrize("kv_heads", [1, 2, 3])  # MQA, GQA, MHA over 6 query heads
def test_cuda_attention_windows_and_gqa(window, kv_heads):
    q, k, v = make_qkv(2, 6, kv_heads, 200, 200, 128, 128, torch.bfloat16)
    check_attention_parity(q, k, v, dict(window=window), torch.bfloat16, backend="cuda")


@needs_cuda_gpu
def test_cuda_attention_lse_and_its_gradient():
    """The LSE against float64, and gradients through both outputs (dlse enters delta) against the
    float64 reference: within 3x of what the triton backend gets."""
    q, k, v = make_qkv(1, 2, 2, 77, 77, 64, 64, torch.float16)

    def run(backend, *inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out, lse = zenattn.attention(*leaves, causal=True, return_lse=True, backend=backend)
        grads = torch.autograd.grad((out.double() ** 2).sum() + lse.double().sum(), leaves)
        return lse.double(), [g.double() for g in grads]

    ref_lse, ref_grads = run("torch", q.double(), k.double(), v.double())
    lse, grads = run("cuda", q, k, v)
    tri_lse, tri_grads = run("triton", q, k, v)
    assert (lse - ref_lse).abs().max() <= 3 * (tri_lse - ref_lse).abs().max() + 1e-3
    for ours, theirs, ref in zip(grads, tri_grads, ref_grads):
        assert (ours - ref).abs().max() <= 3 * (theirs - ref).abs().max() + 2e-3


@needs_cuda_gpu
def test_cuda_attention_backward_is_bitwise_repeatable():
    q, k, v = (t.requires_grad_() for t in make_qkv(2, 4, 2, 300, 300, 128, 128, torch.bfloat16))
    dout = torch.randn(2, 4, 300, 128, dtype=torch.bfloat16)
    runs = [torch.autograd.grad(zenattn.attention(q, k, v, causal=True, backend="cuda"), (q, k, v), dout)
            for _ in range(5)]
    for again in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], again))


@needs_cuda_gpu
def test_cuda_attention_names_what_it_does_not_take():
    q, k, v = make_qkv(1, 2, 2, 16, 16, 64, 64, torch.float16)
    with pytest.raises(zenattn.BackendUnavailableError, match="no softcap; backend='triton' runs it"):
        zenattn.attention(q, k, v, softcap=30.0, backend="cuda")
    with pytest.raises(zenattn.BackendUnavailableError, match="head dims \\(64, 128\\)"):
        zenattn.attention(*make_qkv(1, 2, 2, 16, 16, 40, 40, torch.float16), backend="cuda")


# ---- what the kernels take: checked anywhere --------------------------------------------------------

def _qkv(dtype=torch.float16, d=64, dv=None):
    return (torch.empty(1, 2, 8, d, dtype=dtype, device="meta"), torch.empty(1, 2, 8, d, dtype=dtype, device="meta"),
            torch.empty(1, 2, 8, dv or d, dtype=dtype, device="meta"))


@pytest.mark.parametrize("case, kwargs, message", [
    ("float32", dict(qkv=_qkv(torch.float32)), "take float16/bfloat16, got torch.float32"),
    ("head dim 40", dict(qkv=_qkv(d=40)), "head dims (64, 128)"),
    ("value head dim differs", dict(qkv=_qkv(d=64, dv=128)), "got 64 (query/key) and 128 (value)"),
    ("mask", dict(attn_mask=torch.ones(8, 8, dtype=torch.bool)), "no attn_mask"),
    ("alibi", dict(alibi_slopes=torch.ones(2)), "no alibi_slopes"),
    ("softcap", dict(softcap=20.0), "no softcap"),
    ("dropout", dict(dropout_p=0.1), "no dropout"),
])
def test_unsupported_names_the_feature(case, kwargs, message):
    q, k, v = kwargs.pop("qkv", _qkv())
    assert message in unsupported(q, k, v, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [64, 128])
def test_supported_grid_is_accepted(dtype, d):
    assert unsupported(*_qkv(dtype, d)) is None


def test_explicit_cuda_request_on_cpu_tensors_says_why():
    q, k, v = (torch.randn(1, 2, 8, 64, dtype=torch.float16, device="cpu") for _ in range(3))
    with pytest.raises(zenattn.BackendUnavailableError, match="requested backend 'cuda' cannot run here"):
        zenattn.attention(q, k, v, backend="cuda")
