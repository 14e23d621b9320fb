"""Property-based tests (hypothesis): random attention and norm cases through every backend, forward
and backward, against the float64 reference by the DESIGN.md section 4 rule (tests/parity.py).

Drawn: shapes (batch, heads, GQA ratio, q and k lengths, head dims), dtypes, memory layouts
(contiguous, transposed, sliced, expanded with stride 0), masks (none, bool or float, every
broadcast rank and shape), causal alignment, windows, softcap, ALiBi, scale, dropout, input
magnitude; for the norms also residual, affine, eps, mean offset. A failure shrinks to a minimal case
and hypothesis prints it.

Profiles (``ZENATTN_FUZZ``): ``ci`` (the default; a fixed set of examples per backend, derandomized
so CI is repeatable), ``long`` (random, many more examples: ``ZENATTN_FUZZ=long pytest tests/test_fuzz.py``).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity import ALL_BACKENDS, ALL_NORM_BACKENDS, check_attention_parity, check_norm_parity, make_x

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=600, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("ZENATTN_FUZZ", "ci")
settings.load_profile(PROFILE)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Examples run per (test, backend), counted for docs/reliability.md (tests/conftest.py reports them).
EXAMPLES: dict = {}


def _count(name: str, backend: str) -> None:
    EXAMPLES[(name, backend)] = EXAMPLES.get((name, backend), 0) + 1


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` (B, H, N, D), laid out differently in memory."""
    if layout == "transposed":    # stored (B, N, H, D), the usual projection output
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "sliced":        # a view into a wider buffer: row stride > D
        wide = torch.zeros(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype)
        wide[..., : t.shape[-1]] = t
        return wide[..., : t.shape[-1]]
    if layout == "expanded":      # one batch entry broadcast over the batch (stride 0)
        return t[:1].expand_as(t)
    return t


@st.composite
def attention_cases(draw):
    dtype = draw(st.sampled_from(list(DTYPES)))
    B = draw(st.integers(1, 2))
    Hkv = draw(st.integers(1, 3))
    Hq = Hkv * draw(st.integers(1, 3))
    Nq, Nk = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    D = draw(st.integers(1, 72))
    Dv = draw(st.one_of(st.just(D), st.integers(1, 72)))
    magnitude = draw(st.sampled_from([1.0, 1.0, 3.0]))
    opts = {}
    if draw(st.booleans()):
        opts["causal"] = True
        opts["alignment"] = draw(st.sampled_from(["top_left", "bottom_right"]))
    if draw(st.integers(0, 3)) == 0:  # (left, right); causal already says right = 0
        left = draw(st.one_of(st.none(), st.integers(0, 30)))
        right = draw(st.one_of(st.none(), st.just(0))) if opts.get("causal") else \
            draw(st.one_of(st.none(), st.integers(0, 30)))
        opts["window"] = (left, right)
    if draw(st.integers(0, 4)) == 0:
        opts["softcap"] = draw(st.floats(2.0, 50.0))
    if draw(st.integers(0, 4)) == 0:
        opts["alibi_slopes"] = torch.tensor([2.0 ** (-8.0 * h / Hq) for h in range(1, Hq + 1)])
    if draw(st.integers(0, 3)) == 0:
        opts["scale"] = draw(st.floats(0.05, 2.0))
    if draw(st.integers(0, 4)) == 0:
        opts["dropout_p"] = draw(st.sampled_from([0.1, 0.5]))
    mask_kind = draw(st.sampled_from(["none", "none", "bool", "float"]))
    if mask_kind != "none":
        full = (B, Hq, Nq, Nk)
        rank = draw(st.integers(1, 4))
        shape = tuple(draw(st.sampled_from([1, n])) for n in full[4 - rank:])
        if mask_kind == "bool":
            opts["attn_mask"] = torch.rand(shape) > draw(st.sampled_from([0.2, 0.7]))
        else:
            opts["attn_mask"] = (torch.randn(shape) * 2).to(DTYPES[dtype])
    layouts = [draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"])) for _ in range(3)]
    return dict(dtype=dtype, shape=(B, Hq, Hkv, Nq, Nk, D, Dv), magnitude=magnitude, opts=opts, layouts=layouts)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@given(case=attention_cases())
def test_attention_fuzz(backend, case):
    _count("attention", backend)
    dtype = DTYPES[case["dtype"]]
    B, Hq, Hkv, Nq, Nk, D, Dv = case["shape"]
    q = (torch.randn(B, Hq, Nq, D) * case["magnitude"]).to(dtype)
    k = (torch.randn(B, Hkv, Nk, D) * case["magnitude"]).to(dtype)
    v = torch.randn(B, Hkv, Nk, Dv).to(dtype)
    q, k, v = (_layout(t, layout) for t, layout in zip((q, k, v), case["layouts"]))
    check_attention_parity(q, k, v, case["opts"], dtype, backend)


@st.composite
def norm_cases(draw):
    return dict(
        kind=draw(st.sampled_from(["layer_norm", "rms_norm"])),
        dtype=draw(st.sampled_from(list(DTYPES))),
        rows=draw(st.integers(0, 40)),
        hidden=draw(st.one_of(st.integers(1, 300), st.sampled_from([1024, 4099]))),
        layout=draw(st.sampled_from(["contiguous", "sliced", "transposed", "expanded"])),
        affine=draw(st.sampled_from(["weight+bias", "weight", "none"])),
        residual=draw(st.booleans()),
        eps=draw(st.sampled_from([1e-5, 1e-6, 1e-2])),
        scale=draw(st.sampled_from([1.0, 1e-2, 30.0])),
        offset=draw(st.sampled_from([0.0, 0.0, 50.0])),
    )


@pytest.mark.parametrize("backend", ALL_NORM_BACKENDS)
@given(case=norm_cases())
def test_norm_fuzz(backend, case):
    _count("norm", backend)
    dtype, hidden, rows = DTYPES[case["dtype"]], case["hidden"], case["rows"]
    leaf, view = make_x(case["layout"], rows, hidden, dtype, scale=case["scale"], offset=case["offset"])
    w = torch.randn(hidden).to(dtype) if case["affine"] != "none" else None
    b = torch.randn(hidden).to(dtype) if case["affine"] == "weight+bias" and case["kind"] == "layer_norm" else None
    residual = torch.randn(rows, hidden).to(dtype) if case["residual"] else None
    check_norm_parity(case["kind"], leaf, view, w, b, residual, case["eps"], dtype, backend)


@given(shapes=st.lists(st.lists(st.integers(0, 3), max_size=5), min_size=1, max_size=3))
def test_broadcast_shapes_agrees_with_torch(shapes):
    """The attention API's own broadcast_shapes (plain ints, without torch's per-call cost) gives
    torch.broadcast_shapes' result, or fails where it fails."""
    from zenattn.functional.attention import _broadcast_shapes

    def outcome(fn):
        try:
            return fn(*shapes)
        except RuntimeError:
            return "does not broadcast"

    assert outcome(_broadcast_shapes) == outcome(torch.broadcast_shapes)
