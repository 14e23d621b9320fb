"""The reference Transformer and its trainer: zenattn modules vs torch modules on the same weights,
KV-cache generation, exact checkpoint resume, the CLI's outputs and its errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from zenattn import train as trainer
from zenattn.models import Transformer, TransformerConfig

VARIANT_CASES = [
    ("decoder rotary layernorm GQA", dict(variant="decoder", positions="rotary", norm="layernorm", n_kv_heads=2)),
    ("decoder learned rmsnorm", dict(variant="decoder", positions="learned", norm="rmsnorm")),
    ("encoder with padding", dict(variant="encoder", positions="learned", norm="layernorm")),
    ("encoder-decoder", dict(variant="encoder-decoder", positions="rotary", norm="rmsnorm")),
]


def _twins(options):
    """(zenattn model, torch model) with the same weights."""
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=64, n_heads=4, n_layers=2, **options)
    zen = Transformer(cfg)
    ref = Transformer(dataclasses.replace(cfg, attn="torch", norm_impl="torch"))
    ref.load_state_dict(zen.state_dict())
    return zen, ref


def _batch(variant):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 256, (3, 21), generator=g), torch.randint(0, 256, (3, 21), generator=g)
    kwargs = {}
    if variant == "encoder":
        pad = torch.zeros(3, 21, dtype=torch.bool)
        pad[1, -5:] = True
        kwargs["padding_mask"] = pad
        y = y.masked_fill(pad, -100)
    if variant == "encoder-decoder":
        pad = torch.zeros(3, 13, dtype=torch.bool)
        pad[2, -4:] = True
        kwargs = dict(source=torch.randint(0, 256, (3, 13), generator=g), source_padding_mask=pad)
    return x, y, kwargs


@pytest.mark.parametrize("case", VARIANT_CASES, ids=[c[0] for c in VARIANT_CASES])
def test_zenattn_and_torch_modules_train_alike(case):
    """Same loss and gradients on the first step, and the same losses over three AdamW steps."""
    _, options = case
    zen, ref = _twins(options)
    x, y, kwargs = _batch(options["variant"])
    losses = {}
    for name, model in (("zen", zen), ("ref", ref)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[name] = []
        for step in range(3):
            loss = model.loss(x, y, **kwargs)
            opt.zero_grad()
            loss.backward()
            if step == 0:
                losses[name + " grads"] = [p.grad.clone() for p in model.parameters()]
            opt.step()
            losses[name].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses["zen"]), torch.tensor(losses["ref"]), rtol=1e-5, atol=1e-5)
    for a, b in zip(losses["zen grads"], losses["ref grads"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["decoder", "encoder-decoder"])
@pytest.mark.parametrize("attn", ["zenattn", "torch"])
def test_generation_with_kv_cache_equals_without(variant, attn):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(variant=variant, dim=64, n_heads=4, n_kv_heads=2, attn=attn)).eval()
    prompt = torch.randint(0, 256, (2, 5))
    source = torch.randint(0, 256, (2, 9)) if variant == "encoder-decoder" else None
    greedy = [model.generate(prompt, 12, use_cache=c, source=source) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1]) and greedy[0].shape == (2, 17)
    sampled = [model.generate(prompt, 12, temperature=0.9, top_k=20, use_cache=c, source=source,
                              generator=torch.Generator().manual_seed(3)) for c in (True, False)]
    assert torch.equal(sampled[0], sampled[1])


@pytest.mark.parametrize("options, message", [
    (dict(dim=100, n_heads=3), r"n_heads \(3\) must divide dim \(100\)"),
    (dict(n_heads=4, n_kv_heads=3), r"n_kv_heads \(3\) must divide n_heads \(4\)"),
    (dict(variant="seq2seq"), r"variant must be one of \('decoder', 'encoder', 'encoder-decoder'\)"),
    (dict(dim=12, n_heads=4, positions="rotary"), r"rotary positions need an even head dim, got 3"),
    (dict(norm="batchnorm"), r"norm must be 'layernorm' or 'rmsnorm'"),
    (dict(attn="flash"), r"attn must be 'zenattn' or 'torch'"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
])
def test_bad_config_values_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**options)


def test_learned_positions_past_max_len_raise():
    model = Transformer(TransformerConfig(dim=32, n_heads=2, positions="learned", max_len=8))
    with pytest.raises(ValueError, match="exceed max_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


# ---- the trainer -------------------------------------------------------------------------------------

def _run(tmp_path, name, *extra):
    args = trainer.parse_args(["--preset", "test", "--out", str(tmp_path / name), "--quiet", *extra])
    return trainer.train(args)


def test_stdlib_corpus_splits_by_file():
    train, held = trainer.stdlib_corpus(limit=1 << 20)
    assert len(train) > 100_000 and len(held) > 1000
    assert b"def " in train and b"import " in held
    assert trainer.unigram_bits_per_byte(train, held) < 8.0   # bytes are far from uniform


def test_resume_reproduces_the_loss_curve(tmp_path):
    full = _run(tmp_path, "full", "--steps", "6", "--checkpoint-every", "3", "--no-plots")
    history = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["history"]["loss"]
    resumed = _run(tmp_path, "resumed", "--steps", "6", "--no-plots", "--resume",
                   str(tmp_path / "full" / "checkpoint-3.pt"))
    resumed_history = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["history"]["loss"]
    assert len(history) == len(resumed_history) == 6
    assert resumed_history == history                 # bit for bit: model, optimizer, data order, RNG
    assert resumed["held_out_loss"] == full["held_out_loss"]


def test_cli_writes_metrics_plots_and_samples(tmp_path):
    metrics = _run(tmp_path, "run")
    out = tmp_path / "run"
    for name in ("metrics.json", "loss.png", "samples.txt", "checkpoint.pt", "attention-layer0.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["held_out_bits_per_byte"] == pytest.approx(saved["held_out_loss"] / 0.6931471805599453)
    assert 0 < saved["unigram_bits_per_byte"] < 8 and saved["steps"] == 4
    assert metrics["parameters"] > 0 and "--- 'def '" in (out / "samples.txt").read_text()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        trainer.main(["--preset", "test", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "--data" in capsys.readouterr().err and "no such file" in str(exit_info.value.__cause__)
    small = tmp_path / "small.txt"
    small.write_text("tiny")
    with pytest.raises(SystemExit):
        trainer.main(["--preset", "test", "--data", str(small), "--out", str(tmp_path / "y")])
    assert "too little text" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trainer.main(["--preset", "test", "--dtype", "fp16", "--device", "cpu", "--out", str(tmp_path / "z")])
    assert "supports bf16, not fp16" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one_on_the_same_global_batch(tmp_path, mode):
    """DistributedDataParallel, or FSDP (fully_shard), over 2 CPU processes (gloo): the same losses
    as one process training on the same global batch (each rank takes half of it)."""
    import os
    import subprocess
    import sys

    common = ["--preset", "test", "--steps", "3", "--batch", "4", "--no-plots", "--quiet"]
    single = _run(tmp_path, "single", "--steps", "3", "--batch", "4", "--no-plots")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "zenattn.train", *common, *(["--fsdp"] if mode == "fsdp" else []),
                          "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[:6000]
    one = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)["history"]["loss"]
    two = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["history"]["loss"]
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["held_out_loss"] == pytest.approx(
        single["held_out_loss"], rel=1e-4)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)   # whole tensors, even from FSDP
    model = Transformer(TransformerConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    reference = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)["model"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-6)


def test_fsdp_resume_reproduces_the_loss_curve(tmp_path, capsys):
    """Under FSDP over 2 CPU processes, a run resumed from its step-2 checkpoint ends with the same
    losses as the uninterrupted run (the sharded model and optimizer reload from the whole-tensor
    checkpoint), and a checkpoint cannot be resumed across --fsdp and its absence."""
    import os
    import subprocess
    import sys

    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "zenattn.train", "--preset", "test", "--steps", "4", "--batch", "4", "--no-plots", "--quiet",
               "--fsdp", "--out", str(tmp_path / out), *extra]
        return subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                              timeout=600)

    full = torchrun("full", "--checkpoint-every", "2")
    assert full.returncode == 0, full.stderr[:6000]
    resumed = torchrun("resumed", "--resume", str(tmp_path / "full" / "checkpoint-2.pt"))
    assert resumed.returncode == 0, resumed.stderr[:6000]
    history = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["history"]["loss"]
    again = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["history"]["loss"]
    assert len(history) == len(again) == 4
    torch.testing.assert_close(torch.tensor(again), torch.tensor(history), rtol=1e-6, atol=1e-7)
    with pytest.raises(SystemExit):
        trainer.main(["--preset", "test", "--steps", "4", "--batch", "4", "--no-plots", "--quiet",
                      "--out", str(tmp_path / "plain"), "--resume", str(tmp_path / "full" / "checkpoint-2.pt")])
    assert "written with --fsdp, so resume it with --fsdp" in capsys.readouterr().err


# ---- the encoder-decoder's sequence-to-sequence task ------------------------------------------------

def test_reverse_task_batches_and_scoring(monkeypatch):
    task = trainer.ReverseTask(trainer.parse_args(["--preset", "test"]), batch=4)
    pairs = task.pairs(4, torch.Generator().manual_seed(0))
    assert all(tgt == src[::-1] and 3 <= len(src) <= 12 and src.isalpha() for src, tgt in pairs)
    inputs, targets, kw = task.collate([(b"abc", b"cba"), (b"hello", b"olleh")])
    assert inputs.tolist()[0][:4] == [trainer.BOS, ord("c"), ord("b"), ord("a")]
    assert targets.tolist()[0] == [ord("c"), ord("b"), ord("a"), trainer.EOS, -100, -100]
    assert kw["source_padding_mask"].tolist()[0] == [False] * 3 + [True] * 2
    # scoring: a perfect decoder gets exact match 1 and BLEU 100; a wrong one gets less of both
    monkeypatch.setattr(task, "decode", lambda model, pairs, device: [tgt for _, tgt in pairs])
    model = torch.nn.Module()  # only eval()/train() are called on it; decode is replaced
    perfect = task.evaluate(model, torch.device("cpu"), None)
    assert perfect["exact_match"] == 1.0 and perfect["bleu"] == pytest.approx(100.0)
    monkeypatch.setattr(task, "decode", lambda model, pairs, device: [src for src, _ in pairs])
    wrong = task.evaluate(model, torch.device("cpu"), None)
    assert wrong["exact_match"] < 0.1 and wrong["bleu"] < 60


def test_cli_trains_the_encoder_decoder_on_the_reversal_task(tmp_path):
    metrics = _run(tmp_path, "s2s", "--variant", "encoder-decoder")
    assert metrics["config"]["variant"] == "encoder-decoder" and metrics["held_out_pairs"] == 500
    assert 0.0 <= metrics["exact_match"] <= 1.0 and 0.0 <= metrics["bleu"] <= 100.0
    assert (tmp_path / "s2s" / "attention-layer2.png").is_file()     # encoder self, decoder self and cross
    assert "(want " in (tmp_path / "s2s" / "samples.txt").read_text()
