"""Hugging Face transformers with attn_implementation="zenattn": tiny randomly initialised GPT-2,
LLaMA (GQA, rotary) and BERT models built from configs (no download) give the eager
implementation's outputs, with padding, and LLaMA generates the same tokens through its KV cache."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test dependency: installed by the [test] extra

import zenattn.integrations.huggingface as zen_hf  # noqa: E402

from parity import KERNELS



def _configs():
    common = dict(vocab_size=97)
    yield "gpt2", transformers.GPT2LMHeadModel, transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, **common)
    yield "llama", transformers.LlamaForCausalLM, transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        **common)
    yield "bert", transformers.BertModel, transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **common)


CONFIGS = list(_configs())


def _pair(cls, config, backend):
    """(eager model, zenattn model) with the same random weights, in eval mode."""
    zen_hf.register()
    torch.manual_seed(0)
    eager = cls._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    zen = cls._from_config(copy.deepcopy(config), attn_implementation="zenattn").eval()
    zen.load_state_dict(eager.state_dict())
    for module in zen.modules():
        module.zenattn_backend = backend
    return eager, zen


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("case", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_same_outputs_as_eager_with_padding(case, backend):
    _, cls, config = case
    eager, zen = _pair(cls, config, backend)
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0                                        # left padding in the second sequence
    with torch.no_grad():
        a, b = eager(input_ids=ids, attention_mask=mask), zen(input_ids=ids, attention_mask=mask)
    key = "logits" if "logits" in a else "last_hidden_state"
    assert zen.config._attn_implementation == "zenattn" and eager.config._attn_implementation == "eager"
    torch.testing.assert_close(b[key][0], a[key][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b[key][1, 3:], a[key][1, 3:], rtol=1e-5, atol=1e-5)  # padded rows are undefined


def test_zenattn_kernels_actually_run(monkeypatch):
    calls = []
    original = zen_hf.attention_forward

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(zen_hf, "attention_forward", counting)
    _, cls, config = CONFIGS[1]
    _, zen = _pair(cls, config, "cpu")
    with torch.no_grad():
        zen(input_ids=torch.randint(0, 97, (1, 5)))
    assert len(calls) == 2 and calls[0] == (1, 4, 5, 8)    # two layers, (B, H, L, D) queries


@pytest.mark.parametrize("backend", KERNELS)
def test_llama_generation_through_the_kv_cache(backend):
    _, cls, config = CONFIGS[1]
    eager, zen = _pair(cls, config, backend)
    prompt = torch.randint(0, 97, (1, 6))
    a = eager.generate(prompt, max_new_tokens=6, do_sample=False)
    b = zen.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_output_attentions_are_exact_probabilities():
    _, cls, config = CONFIGS[2]
    eager, zen = _pair(cls, config, "cpu")
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        a = eager(input_ids=ids, output_attentions=True)
        b = zen(input_ids=ids, output_attentions=True)
    assert len(b.attentions) == 2
    for wa, wb in zip(a.attentions, b.attentions):
        torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-6)
