"""zenattn.apply_rotary (zenattn::rotary): parity with the float64 definition on every kernel
backend, forward and gradient, layouts, torch.compile, and the errors it gives for bad input."""

from __future__ import annotations

import pytest
import torch

import zenattn
from parity import FWD_FACTOR, GRAD_FACTOR, TEST_DEVICE, assert_within_rule, kernel_backends
from zenattn.nn import rotary_cos_sin
from zenattn.reference import rotary_ref

KERNELS = kernel_backends(TEST_DEVICE, "rotary")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]

SHAPES = [
    (2, 3, 17, 8),     # odd length
    (1, 4, 1, 64),     # one position (decoding)
    (2, 2, 33, 40),    # head dim not a power of two: the Triton block pads the halves
    (1, 1, 130, 128),  # more positions than one Triton program takes
]


def _cos_sin(n: int, d: int, dtype=torch.float64, offset: int = 3):
    return rotary_cos_sin(torch.arange(offset, offset + n), d, dtype=dtype)   # (n, d), positions from `offset`


def _check(backend, x, dtype, dy=None):
    """Forward and gradient of one case: zenattn (angles in float32, as callers pass them), torch's
    own formula in ``dtype`` (angles rounded to it, as models on torch compute it), float64 reference."""
    n, d = x.shape[-2:]
    dy = torch.randn(x.shape).to(dtype) if dy is None else dy
    cos64, sin64 = _cos_sin(n, d)
    x_ref = x.detach().double().requires_grad_(True)
    ref = rotary_ref(x_ref, cos64, sin64)
    (dref,) = torch.autograd.grad(ref, x_ref, dy.double())
    x_t = x.detach().requires_grad_(True)
    theirs = rotary_ref(x_t, cos64.to(dtype), sin64.to(dtype))
    (dtheirs,) = torch.autograd.grad(theirs, x_t, dy)
    x_z = x.detach().requires_grad_(True)
    cos, sin = (t.to(torch.float64 if dtype == torch.float64 else torch.float32) for t in (cos64, sin64))
    ours = zenattn.apply_rotary(x_z, cos, sin, backend=backend)
    (dours,) = torch.autograd.grad(ours, x_z, dy)
    assert ours.dtype == dtype and dours.dtype == dtype
    where = ("rotary", backend)
    assert_within_rule("out", ours, theirs, ref, FWD_FACTOR, dtype, where)
    assert_within_rule("dx", dours, dtheirs, dref, GRAD_FACTOR, dtype, where)
    return ours


@pytest.mark.parametrize("backend", KERNELS + ["torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rotary_parity(backend, dtype, shape):
    x = (torch.randn(shape) * 3).to(dtype)
    _check(backend, x, dtype)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rotary_keeps_the_projection_layout(backend, dtype):
    """x from a projection, (B, L, H, D) in memory: the result keeps that layout, and so does the
    attention output after it, whose way to the out-projection is then a view."""
    B, L, H, D = 2, 19, 3, 16
    x = torch.randn(B, L, 2 * H * D).to(dtype)
    q, k = x.view(B, L, 2, H, D).permute(2, 0, 3, 1, 4)        # 2 x (B, H, L, D), k not dense (interleaved)
    for t in (q, k):
        y = _check(backend, t, dtype)
        assert y.stride(1) < y.stride(2) and y.transpose(1, 2).is_contiguous(), y.stride()
    cos, sin = _cos_sin(L, D, torch.float32)
    qr, kr = (zenattn.apply_rotary(t, cos, sin, backend=backend) for t in (q, k))
    if backend == "cpu":
        out = zenattn.attention(qr, kr, kr, causal=True, backend="cpu")
        assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("backend", KERNELS)
def test_rotary_reads_any_strides(backend):
    """Sliced, expanded (stride 0) and transposed-last-dim inputs, and a transposed upstream gradient."""
    base = torch.randn(2, 4, 21, 24)
    cases = [base[:, 1:3, 2:19],                                      # sliced heads and positions
             torch.randn(1, 1, 21, 24).expand(2, 4, 21, 24),          # broadcast batch and heads
             torch.randn(2, 4, 24, 21).transpose(-1, -2)]             # last stride != 1
    for x in cases:
        dy = torch.randn(x.shape[:-2] + x.shape[-2:][::-1]).transpose(-1, -2)
        _check(backend, x, torch.float32, dy=dy)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("shape", [(5, 8), (3, 5, 8), (2, 2, 2, 5, 8)], ids=str)
def test_rotary_other_ranks(backend, shape):
    """(L, D), (B, L, D) and 5-dim inputs take the same rotation over their last two dims."""
    x = torch.randn(shape)
    y = _check(backend, x, torch.float32)
    assert y.shape == x.shape


@pytest.mark.parametrize("backend", KERNELS)
def test_rotary_empty_inputs(backend):
    for shape in [(0, 2, 5, 8), (1, 2, 0, 8)]:
        x = torch.randn(shape, requires_grad=True)
        cos, sin = _cos_sin(shape[2], 8, torch.float32)
        y = zenattn.apply_rotary(x, cos, sin, backend=backend)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape


def test_rotary_gradcheck_and_gradgradcheck():
    """float64 gradcheck of the cpu kernel, and its second derivative: the backward is the same op
    with the transpose flag flipped, so higher orders are exact too."""
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    cos, sin = _cos_sin(7, 6)
    f = lambda t: zenattn.apply_rotary(t, cos, sin, backend=KERNELS[0])  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_rotary_is_a_rotation_when_the_halves_share_angles():
    """With cos/sin from rotary_cos_sin (both halves the same angles) the map is orthogonal: norms
    of each pair are kept, and the backward is its inverse."""
    x = torch.randn(2, 3, 11, 16, dtype=torch.float64)
    cos, sin = _cos_sin(11, 16)
    y = zenattn.apply_rotary(x, cos, sin, backend=KERNELS[0])
    pair_norm = lambda t: t[..., :8] ** 2 + t[..., 8:] ** 2   # noqa: E731
    torch.testing.assert_close(pair_norm(y), pair_norm(x))
    back = zenattn.ops.rotary.rotary(y, cos, sin, True, KERNELS[0])
    torch.testing.assert_close(back, x)


@pytest.mark.parametrize("backend", KERNELS)
def test_rotary_torch_compile_fullgraph(backend):
    cos, sin = _cos_sin(9, 8, torch.float32)

    def f(q):
        return zenattn.apply_rotary(q, cos, sin, backend=backend) * 2

    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    got = compiled(x)
    torch.testing.assert_close(got, f(x))
    (g1,) = torch.autograd.grad(got.sum(), x)
    (g2,) = torch.autograd.grad(f(x).sum(), x)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("args, kind, match", [
    (lambda: (torch.randn(2, 3, 5, 7), *_cos_sin(5, 7, torch.float32)), ValueError, "head_dim must be even"),
    (lambda: (torch.randn(2, 3, 5, 8), *_cos_sin(6, 8, torch.float32)), ValueError, r"cos must have shape \(seq, head_dim\) = \(5, 8\)"),
    (lambda: (torch.randn(2, 3, 5, 8), _cos_sin(5, 8, torch.float32)[0], torch.zeros(5, 4)), ValueError, r"sin must have shape"),
    (lambda: (torch.randn(8), *_cos_sin(5, 8, torch.float32)), ValueError, "at least 2 dims"),
    (lambda: (torch.arange(40).view(5, 8), *_cos_sin(5, 8, torch.float32)), TypeError, "x must be floating point"),
    (lambda: (torch.randn(5, 8), _cos_sin(5, 8, torch.float32)[0].requires_grad_(True), _cos_sin(5, 8, torch.float32)[1]),
     NotImplementedError, "cos requires grad"),
    (lambda: ([1.0], *_cos_sin(5, 8, torch.float32)), TypeError, "x must be a Tensor"),
])
def test_rotary_bad_input_errors(args, kind, match):
    with pytest.raises(kind, match=match):
        zenattn.apply_rotary(*args(), backend=KERNELS[0])


def test_rotary_cuda_backend_has_no_kernel():
    """No CUDA C++ rotary kernels: asking for them names that; the automatic choice takes Triton."""
    x = torch.randn(1, 1, 4, 8)
    with pytest.raises(zenattn.BackendUnavailableError, match="no rotary kernel|built without CUDA"):
        zenattn.apply_rotary(x, *_cos_sin(4, 8, torch.float32), backend="cuda")
