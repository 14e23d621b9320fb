"""The attention modules: zenattn.nn.MultiheadAttention against torch's twin, SelfAttention against
the reference, record_attention, zenattn.patch on torch's Transformer stacks, torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch

import zenattn
from zenattn.reference import attention_ref

from parity import KERNELS, FWD_FACTOR, GRAD_FACTOR, assert_within_rule



# ---- MultiheadAttention vs torch.nn.MultiheadAttention ---------------------------------------------

def twins(dtype, backend="cpu", **kwargs):
    """(torch's module in float64: the reference, torch's in dtype, ours in dtype), same weights."""
    torch_ref = torch.nn.MultiheadAttention(dtype=torch.float64, **kwargs)
    if torch_ref.bias_k is not None:  # torch leaves them at xavier_normal_; make them matter
        torch.nn.init.normal_(torch_ref.bias_k)
        torch.nn.init.normal_(torch_ref.bias_v)
    torch_low = copy.deepcopy(torch_ref).to(dtype)
    ours = zenattn.nn.MultiheadAttention(dtype=dtype, backend=backend, **kwargs)
    ours.load_state_dict(torch_low.state_dict())
    return torch_ref, torch_low, ours


def run_mha(module, inputs, kwargs, dtype):
    leaves = [t.to(dtype).detach().requires_grad_(True) for t in inputs]
    q, k, v = (leaves * 3)[:3] if len(leaves) == 1 else leaves
    out, weights = module(q, k, v, **{key: (m.to(dtype) if isinstance(m, torch.Tensor) and m.is_floating_point()
                                            else m) for key, m in kwargs.items()})
    def upstream(t, seed):  # the same random upstream gradient in every dtype (drawn in float64)
        return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(t.dtype)

    loss = (out * upstream(out, 1)).sum()
    if weights is not None:
        loss = loss + (weights * upstream(weights, 2)).sum()
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    return out.detach(), (weights.detach() if weights is not None else None), grads


L, S, E, H = 7, 11, 16, 4


def _mha_cases():
    """(id, constructor kwargs, batch size or None for unbatched, self-attention?, forward kwargs)."""
    kpm = torch.zeros(2, S, dtype=torch.bool)
    kpm[1, -4:] = True
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    yield "self batch_first", dict(batch_first=True), 2, True, {}
    yield "self seq_first", dict(batch_first=False), 2, True, {}
    yield "unbatched", dict(batch_first=True), None, True, {}
    yield "cross kpm bool", dict(batch_first=True), 2, False, dict(key_padding_mask=kpm)
    yield "cross kpm float", dict(batch_first=True), 2, False, dict(key_padding_mask=torch.randn(2, S))
    yield "causal mask + is_causal", dict(batch_first=True), 2, True, dict(attn_mask=causal, is_causal=True,
                                                                             need_weights=False)
    yield "causal mask, weights per head", dict(batch_first=True), 2, True, dict(attn_mask=causal,
                                                                                 average_attn_weights=False)
    yield "3-D float mask + kpm", dict(batch_first=False), 2, False, dict(attn_mask=torch.randn(2 * H, L, S),
                                                                         key_padding_mask=kpm)
    yield "kdim vdim", dict(batch_first=True, kdim=10, vdim=6), 2, False, dict(key_padding_mask=kpm)
    yield "add_bias_kv + mask", dict(batch_first=True, add_bias_kv=True), 2, False, dict(
        attn_mask=torch.rand(L, S) > 0.3, key_padding_mask=kpm)
    yield "add_zero_attn + kpm", dict(batch_first=True, add_zero_attn=True), 2, False, dict(key_padding_mask=kpm)
    yield "no bias", dict(batch_first=True, bias=False), 2, False, {}


MHA_CASES = list(_mha_cases())


def _mha_inputs(batch, self_attn, kdim=E, vdim=E):
    lead = () if batch is None else (batch,)
    if self_attn:
        return [torch.randn(*lead, L, E, dtype=torch.float64)]
    return [torch.randn(*lead, L, E, dtype=torch.float64), torch.randn(*lead, S, kdim, dtype=torch.float64),
            torch.randn(*lead, S, vdim, dtype=torch.float64)]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", MHA_CASES, ids=[c[0] for c in MHA_CASES])
def test_multihead_attention_matches_torch(case, dtype, backend):
    _, ctor, batch, self_attn, kwargs = case
    ref_mod, torch_mod, ours = twins(dtype, backend, embed_dim=E, num_heads=H, **ctor)
    inputs = _mha_inputs(batch, self_attn, ctor.get("kdim", E), ctor.get("vdim", E))
    if not ctor["batch_first"] and batch is not None:   # seq-first modules take (L, N, E)
        inputs = [t.transpose(0, 1).contiguous() for t in inputs]
    ref = run_mha(ref_mod, inputs, kwargs, torch.float64)
    theirs = run_mha(torch_mod, inputs, kwargs, dtype)
    got = run_mha(ours, inputs, kwargs, dtype)
    assert got[0].shape == ref[0].shape and got[0].dtype == dtype
    assert_within_rule("out", got[0], theirs[0], ref[0], FWD_FACTOR, dtype)
    if ref[1] is not None:
        assert got[1].shape == ref[1].shape
        assert_within_rule("weights", got[1], theirs[1], ref[1], FWD_FACTOR, dtype)
    names = [f"input {i}" for i in range(len(inputs))] + [n for n, _ in ours.named_parameters()]
    for name, g, t, r in zip(names, got[2], theirs[2], ref[2]):
        if r is None:
            assert g is None or not g.abs().any(), name
            continue
        assert_within_rule(f"grad {name}", g, t, r, GRAD_FACTOR, dtype)


def test_state_dict_round_trips_both_ways():
    kwargs = dict(embed_dim=E, num_heads=H, kdim=10, vdim=6, add_bias_kv=True, batch_first=True)
    theirs, ours = torch.nn.MultiheadAttention(**kwargs), zenattn.nn.MultiheadAttention(**kwargs)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.MultiheadAttention(**kwargs)
    back.load_state_dict(ours.state_dict())
    for (name, a), b in zip(theirs.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("backend", KERNELS)
def test_dropout_reproducible_and_weights_are_what_the_output_used(backend):
    """In training, dropout follows torch.manual_seed; the returned (per-head) weights are the
    dropped-out matrix the output was computed with, as torch returns them."""
    mha = zenattn.nn.MultiheadAttention(E, H, dropout=0.3, batch_first=True, dtype=torch.float64, backend=backend)
    x = torch.randn(2, L, E, dtype=torch.float64)
    torch.manual_seed(5)
    out, w = mha(x, x, x, average_attn_weights=False)
    torch.manual_seed(5)
    assert torch.equal(out, mha(x, x, x, average_attn_weights=False)[0])
    assert not torch.equal(out, mha(x, x, x)[0])              # a new draw
    assert (w == 0).any() and not torch.allclose(w.sum(-1), torch.ones(2, H, L, dtype=torch.float64))
    v = torch.nn.functional.linear(x, mha.in_proj_weight[2 * E:], mha.in_proj_bias[2 * E:])
    v = v.view(2, L, H, E // H).transpose(1, 2)
    rebuilt = mha.out_proj((w @ v).transpose(1, 2).reshape(2, L, E))
    torch.testing.assert_close(out, rebuilt, rtol=1e-12, atol=1e-12)
    mha.eval()
    _, w_eval = mha(x, x, x)
    torch.testing.assert_close(w_eval.sum(-1), torch.ones(2, L, dtype=torch.float64))


def test_fully_masked_query_gives_zero_not_nan():
    """A query whose keys are all masked: torch gives NaN, zenattn output bias-only (0 before out_proj)."""
    mha = zenattn.nn.MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(1, L, E)
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[2] = True
    out, w = mha(x, x, x, attn_mask=mask)
    assert torch.isfinite(out).all() and torch.equal(w[0, 2], torch.zeros(L))
    torch.testing.assert_close(out[0, 2], mha.out_proj.bias)


def test_is_causal_without_mask_raises_like_torch():
    mha = zenattn.nn.MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(1, L, E)
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        mha(x, x, x, is_causal=True)


@pytest.mark.parametrize("grad", [False, True])
def test_weights_computed_in_row_blocks_equal_one_block(monkeypatch, grad):
    """need_weights works through blocks of query rows (O(S) memory per row): many small blocks
    give what one block gives, with dropout, masks and per-head weights."""
    import importlib

    attention_module = importlib.import_module("zenattn.functional.attention")

    mha = zenattn.nn.MultiheadAttention(E, H, dropout=0.2, batch_first=True, dtype=torch.float64)
    q, kv = torch.randn(2, 13, E, dtype=torch.float64), torch.randn(2, S, E, dtype=torch.float64)
    kpm = torch.zeros(2, S, dtype=torch.bool)
    kpm[0, -3:] = True
    with torch.set_grad_enabled(grad):
        torch.manual_seed(1)
        one = mha(q, kv, kv, key_padding_mask=kpm, average_attn_weights=False)
        monkeypatch.setattr(attention_module, "PROBS_BLOCK_ELEMENTS", 2 * S)   # one row per block
        torch.manual_seed(1)
        many = mha(q, kv, kv, key_padding_mask=kpm, average_attn_weights=False)
        torch.manual_seed(1)
        many_avg = mha(q, kv, kv, key_padding_mask=kpm)
    torch.testing.assert_close(many[1], one[1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(many_avg[1], one[1].mean(1), rtol=1e-12, atol=1e-14)


# ---- SelfAttention ---------------------------------------------------------------------------------

def test_rotary_scores_depend_on_relative_position_only():
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    pos = torch.arange(40)
    cos, sin = zenattn.nn.rotary_cos_sin(pos, 16, dtype=torch.float64)
    rq = zenattn.nn.apply_rotary(q.expand(40, 16), cos, sin)
    rk = zenattn.nn.apply_rotary(k.expand(40, 16), cos, sin)
    scores = rq @ rk.T                                          # (40, 40): entry (m, n)
    for shift in (1, 7, 20):
        torch.testing.assert_close(scores[:-shift, :-shift], scores[shift:, shift:])
    assert not torch.allclose(scores[0, 0], scores[0, 5])       # and it does depend on the distance
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(40))  # a rotation


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("options", [dict(), dict(rotary=True, qk_norm=True, causal=True),
                                     dict(window=(3, 0), causal=True, softcap=5.0)], ids=str)
def test_self_attention_matches_reference(options, backend):
    torch.manual_seed(3)
    m = zenattn.nn.SelfAttention(32, 4, 2, bias=True, backend=backend, dtype=torch.float64, **options)
    if m.q_norm is not None:
        torch.nn.init.normal_(m.q_norm.weight)
        torch.nn.init.normal_(m.k_norm.weight)
    x = torch.randn(2, 9, 32, dtype=torch.float64, requires_grad=True)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[0, -2:] = True
    out, w = m(x, key_padding_mask=kpm, need_weights=True)

    # the same computation written out with torch ops and the N x N reference
    q, k, v = m.qkv(x).split([4 * 8, 2 * 8, 2 * 8], dim=-1)
    q, k, v = (t.view(2, 9, -1, 8).transpose(1, 2) for t in (q, k, v))
    if options.get("qk_norm"):
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + torch.finfo(q.dtype).eps) * m.q_norm.weight
        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + torch.finfo(k.dtype).eps) * m.k_norm.weight
    if options.get("rotary"):
        cos, sin = zenattn.nn.rotary_cos_sin(torch.arange(9), 8, dtype=torch.float64)
        q, k = zenattn.nn.apply_rotary(q, cos, sin), zenattn.nn.apply_rotary(k, cos, sin)
    ref = attention_ref(q, k, v, attn_mask=~kpm[:, None, None, :], causal=options.get("causal", False),
                        window=options.get("window"), softcap=options.get("softcap"))
    ref = m.out_proj(ref.transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    g_ours = torch.autograd.grad(out.sum(), [x] + list(m.parameters()))
    g_ref = torch.autograd.grad(ref.sum(), [x] + list(m.parameters()))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9, dtype=torch.float64))


def test_self_attention_rejects_bad_configuration():
    with pytest.raises(ValueError, match="num_kv_heads \\(3\\) must divide num_heads \\(4\\)"):
        zenattn.nn.SelfAttention(32, 4, 3)
    with pytest.raises(ValueError, match="even with rotary"):
        zenattn.nn.SelfAttention(20, 4, rotary=True)   # head_dim 5
    with pytest.raises(ValueError, match="expected x of shape"):
        zenattn.nn.SelfAttention(32, 4)(torch.randn(2, 9, 16))


# ---- record_attention ------------------------------------------------------------------------------

class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = zenattn.nn.SelfAttention(32, 4, causal=True, rotary=True, dtype=torch.float64)
        self.second = zenattn.nn.MultiheadAttention(32, 2, batch_first=True, dtype=torch.float64)

    def forward(self, x):
        x = x + self.first(x)
        return x + self.second(x, x, x, need_weights=False)[0]


def test_record_attention_gives_exact_maps_without_changing_outputs():
    torch.manual_seed(0)
    model = TwoLayers()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    plain = model(x)
    with zenattn.nn.record_attention(model, queries=[-1, 0]) as rec:
        recorded = model(x)
    assert torch.equal(plain, recorded)
    assert set(rec.maps) == {"first", "second"}
    first, second = rec.maps["first"][0], rec.maps["second"][0]
    assert first.shape == (2, 4, 2, 9) and second.shape == (2, 2, 2, 9)
    # the first layer's maps against softmax of the reference scores
    q, k, _ = model.first.qkv(x).split([32, 32, 32], dim=-1)
    q, k = (t.view(2, 9, 4, 8).transpose(1, 2) for t in (q, k))
    cos, sin = zenattn.nn.rotary_cos_sin(torch.arange(9), 8, dtype=torch.float64)
    s = zenattn.reference.attention_scores(zenattn.nn.apply_rotary(q, cos, sin), zenattn.nn.apply_rotary(k, cos, sin),
                                           causal=True)
    torch.testing.assert_close(first.double(), torch.softmax(s, -1)[:, :, [8, 0]].float().double(), rtol=1e-6, atol=1e-7)
    assert torch.equal(first[:, :, 1, 1:], torch.zeros(2, 4, 8))  # query 0 sees key 0 only (causal)
    assert not zenattn.nn.attention._RECORDERS                    # the recorder is gone afterwards


# ---- zenattn.patch ---------------------------------------------------------------------------------

def _encoder():
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double()


@pytest.mark.parametrize("backend", KERNELS)
def test_patch_transformer_encoder_same_outputs_and_gradients(backend):
    torch.manual_seed(0)
    enc = _encoder()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[1, -3:] = True
    mask = torch.nn.Transformer.generate_square_subsequent_mask(9, dtype=torch.float64)

    def step(model):
        out = model(x, mask=mask, src_key_padding_mask=kpm.double().masked_fill(kpm, float("-inf")), is_causal=True)
        return out, torch.autograd.grad(out.square().sum(), list(model.parameters()))

    before = step(enc)
    params = list(enc.parameters())
    report = zenattn.patch(enc, backend=backend)
    assert [new for _, _, new in report.swapped].count("zenattn.nn.MultiheadAttention") == 2
    assert [new for _, _, new in report.swapped].count("zenattn.nn.LayerNorm") == 4
    assert all(a is b for a, b in zip(params, enc.parameters()))      # the same parameter objects
    assert enc.training and next(enc.parameters()).dtype == torch.float64
    after = step(enc)
    torch.testing.assert_close(after[0], before[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(after[1], before[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_patched_encoder_runs_zenattn_in_inference_too():
    """eval + no_grad is where TransformerEncoderLayer would take torch's fused path; after patch
    it must still run zenattn (the recorder sees both layers), with the same result."""
    torch.manual_seed(0)
    enc = _encoder().eval()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[1, -3:] = True
    with torch.no_grad():
        before = enc(x, src_key_padding_mask=kpm)
        zenattn.patch(enc)
        with zenattn.nn.record_attention(enc) as rec:
            after = enc(x, src_key_padding_mask=kpm)
    assert set(rec.maps) == {"layers.0.self_attn", "layers.1.self_attn"}
    torch.testing.assert_close(after[~kpm], before[~kpm], rtol=1e-10, atol=1e-12)
    assert zenattn.unpatch(enc) == 6 and type(enc.layers[0].self_attn) is torch.nn.MultiheadAttention


def test_patch_transformer_decoder_cross_attention():
    torch.manual_seed(0)
    dec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                                                       norm_first=True), 2).double()
    tgt, memory = torch.randn(2, 7, 32, dtype=torch.float64), torch.randn(2, 13, 32, dtype=torch.float64)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64)
    before = dec(tgt, memory, tgt_mask=causal, tgt_is_causal=True)
    report = zenattn.patch(dec)
    assert len(report.swapped) == 2 * (2 + 3)      # self + cross attention, three norms per layer
    torch.testing.assert_close(dec(tgt, memory, tgt_mask=causal, tgt_is_causal=True), before, rtol=1e-10, atol=1e-12)


def test_patch_reports_subclasses_it_leaves_alone():
    class MyNorm(torch.nn.LayerNorm):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), MyNorm(8), torch.nn.LayerNorm(8))
    report = zenattn.patch(model)
    assert [name for name, _, _ in report.swapped] == ["2"]
    assert report.skipped[0][0] == "1" and "subclasses LayerNorm" in report.skipped[0][1]
    assert "swapped 1 module" in str(report)
    assert type(model[1]) is MyNorm


def test_patch_names_the_fallback_for_head_dims_over_the_limit():
    """Head dim 300 is over the kernels' 256: the module still works (on the torch backend, same
    results) and the report says so."""
    mha = torch.nn.MultiheadAttention(600, 2, batch_first=True)
    x = torch.randn(1, 5, 600)
    before = mha(x, x, x)[0]
    report = zenattn.patch(mha)
    assert any("head_dim 300 is over the kernels' limit 256" in note for note in report.notes), report.notes
    torch.testing.assert_close(mha(x, x, x)[0], before, rtol=1e-5, atol=1e-5)


# ---- torch.compile ---------------------------------------------------------------------------------

def test_torch_compile_fullgraph_on_a_model_of_these_modules():
    torch._dynamo.reset()
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = zenattn.nn.LayerNorm(32)
            self.attn = zenattn.nn.SelfAttention(32, 4, 2, causal=True, rotary=True, qk_norm=True)
            self.norm2 = zenattn.nn.RMSNorm(32)
            self.cross = zenattn.nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x, memory, kpm):
            x = x + self.attn(self.norm1(x))
            return x + self.cross(self.norm2(x), memory, memory, key_padding_mask=kpm, need_weights=False)[0]

    model = Block()
    x, memory = torch.randn(2, 9, 32, requires_grad=True), torch.randn(2, 5, 32)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, -1] = True
    eager = model(x, memory, kpm)
    compiled = torch.compile(model, fullgraph=True)(x, memory, kpm)
    torch.testing.assert_close(compiled, eager)
    g_eager = torch.autograd.grad(eager.sum(), [x] + list(model.parameters()))
    g_comp = torch.autograd.grad(compiled.sum(), [x] + list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)
