"""Train the reference Transformer: ``python -m zenattn.train`` (or ``zenattn-train``).

With no arguments it trains the ``tiny`` decoder-only preset on a corpus that needs no download,
the Python standard library's own source files read from the running interpreter, as bytes
(vocabulary 256), with whole files held out for evaluation. ``--data FILE`` takes any text file
instead (its last 5% held out). At the end it prints the held-out loss and bits per byte next to
the unigram baseline, and writes to ``--out``: ``metrics.json``, ``loss.png``, ``samples.txt``,
``attention-layer<i>.png`` (every head's exact attention map for a prompt, from
``zenattn.nn.record_attention``) and ``checkpoint.pt`` (``--resume`` continues it exactly).
``--variant encoder-decoder`` trains the encoder-decoder on a synthetic task instead (reversing
strings, :class:`ReverseTask`), scored by exact match and BLEU.

    python -m zenattn.train                           # tiny preset, about 2 minutes on 2 cores
    python -m zenattn.train --attn torch --norm torch # the same model on torch's modules
    python -m zenattn.train --steps 2000 --dtype bf16 --data my.txt --out run1
    torchrun --standalone --nproc_per_node 2 -m zenattn.train   # DDP (gloo on CPU, nccl on GPU)
    torchrun --standalone --nproc_per_node 2 -m zenattn.train --fsdp   # FSDP (fully_shard) instead

Under torchrun every rank draws the same global batch of ``--batch`` windows and trains on its own
slice of it, so the run matches a single process on the same global batch; rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path
from typing import Optional

import torch

from torch import Tensor

from zenattn.models.transformer import Transformer, TransformerConfig, count_parameters, flops_per_token

PRESETS = {
    # ~0.4M parameters: trains on a 2-core CPU in a few minutes
    "tiny": dict(model=dict(dim=128, n_layers=2, n_heads=4, max_len=256), steps=1500, batch=16, seq_len=128,
                 lr=3e-3),
    # for smoke tests: a handful of steps
    "test": dict(model=dict(dim=32, n_layers=1, n_heads=2, max_len=64), steps=4, batch=2, seq_len=32, lr=1e-3),
    "small": dict(model=dict(dim=256, n_layers=4, n_heads=8, max_len=512), steps=2000, batch=32, seq_len=256,
                  lr=1e-3),
}
CORPUS_LIMIT = 4 << 20   # bytes of standard-library source read for the default corpus
HELD_OUT_EVERY = 20      # default corpus: every 20th file (in sorted order) is held out


# ---- data ----------------------------------------------------------------------------------------

def stdlib_corpus(limit: int = CORPUS_LIMIT) -> tuple[bytes, bytes]:
    """(train, held-out) bytes from the running interpreter's standard library sources, in a fixed
    order; every HELD_OUT_EVERY-th file goes to the held-out split."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no standard-library sources found under {root}; pass --data FILE")
    train, held = bytearray(), bytearray()
    for i, path in enumerate(files):
        if len(train) + len(held) >= limit:
            break
        try:
            text = path.read_bytes()
        except OSError:
            continue
        (held if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).extend(text + b"\n")
    return bytes(train), bytes(held)


def file_corpus(path: str) -> tuple[bytes, bytes]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--data {path}: no such file")
    data = p.read_bytes()
    if len(data) < 1024:
        raise ValueError(f"--data {path}: {len(data)} bytes is too little text to train on (need >= 1024)")
    cut = int(len(data) * 0.95)
    return data[:cut], data[cut:]


def batches(data: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator):
    """Random windows: (inputs, targets) of shape (batch, seq_len), targets shifted by one byte."""
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
        window = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])      # (B, L + 1)
        yield window[:, :-1].long(), window[:, 1:].long()


def unigram_bits_per_byte(train: bytes, held: bytes) -> float:
    """Cross-entropy of the held-out bytes under the training bytes' frequencies (add-one)."""
    counts = torch.bincount(torch.frombuffer(bytearray(train), dtype=torch.uint8).long(), minlength=256).double() + 1
    logp = torch.log2(counts / counts.sum())
    held_t = torch.frombuffer(bytearray(held), dtype=torch.uint8).long()
    return float(-logp[held_t].mean())


# ---- training ----------------------------------------------------------------------------------------

def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 10% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def autocast_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    if name == "fp32":
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("--dtype fp16: autocast on the CPU supports bf16, not fp16")
    return dtype


@torch.no_grad()
def evaluate(model: Transformer, data: torch.Tensor, seq_len: int, batch: int, max_batches: int,
             device: torch.device, amp: Optional[torch.dtype]) -> float:
    """Mean loss (nats per byte) over consecutive held-out windows."""
    model.eval()
    total, count = 0.0, 0
    n_windows = min(max_batches * batch, (len(data) - 1) // seq_len)
    for first in range(0, n_windows, batch):
        idx = range(first, min(first + batch, n_windows))
        window = torch.stack([data[i * seq_len:i * seq_len + seq_len + 1] for i in idx]).long().to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = model.loss(window[:, :-1], window[:, 1:])
        total += loss.item() * len(idx)
        count += len(idx)
    model.train()
    return total / max(count, 1)


def full_state(model, optimizer, sharded: bool) -> tuple[dict, dict]:
    """(model, optimizer) state dicts with whole tensors. FSDP-sharded ones are gathered: every rank
    must call this (a collective)."""
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,  # noqa: PLC0415
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(model, optimizer, ckpt: dict, sharded: bool) -> None:
    """The inverse of :func:`full_state`: whole-tensor state dicts into the (FSDP-sharded) model and its
    optimizer; every rank reads the same checkpoint and keeps its own shards."""
    if not sharded:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,  # noqa: PLC0415
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, ckpt["model"], options=options)
    set_optimizer_state_dict(model, optimizer, ckpt["optimizer"], options=options)


def save_checkpoint(path: Path, state: tuple[dict, dict], cfg: TransformerConfig, step: int,
                    generator: torch.Generator, history: dict, args: dict) -> None:
    torch.save(dict(model=state[0], optimizer=state[1], step=step, generator=generator.get_state(),
                    torch_rng=torch.get_rng_state(), history=history, args=args, config=dataclasses.asdict(cfg)), path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zenattn.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--data", help="a text file to train on (default: the standard library's sources)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--variant", choices=["decoder", "encoder-decoder"], default="decoder",
                   help="decoder: a byte-level language model; encoder-decoder: the string-reversal task")
    p.add_argument("--attn", choices=["zenattn", "torch"], default="zenattn")
    p.add_argument("--norm", choices=["zenattn", "torch"], default="zenattn")
    p.add_argument("--positions", choices=["rotary", "learned"], default="rotary")
    p.add_argument("--norm-type", choices=["layernorm", "rmsnorm"], default="layernorm")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="train-out")
    p.add_argument("--resume", help="a checkpoint.pt to continue from (same arguments)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also save every N steps (0: only at the end)")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard with FSDP (fully_shard) instead of DDP")
    p.add_argument("--eval-batches", type=int, default=40)
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib needed)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


class LanguageModelTask:
    """Next-byte prediction on a text corpus (the decoder-only variant)."""

    variant = "decoder"

    def __init__(self, args, batch: int, seq_len: int) -> None:
        self.batch, self.seq_len, self.data_name = batch, seq_len, args.data or "python stdlib sources"
        self.train_bytes, self.held_bytes = file_corpus(args.data) if args.data else stdlib_corpus()
        self.train_data = torch.frombuffer(bytearray(self.train_bytes), dtype=torch.uint8)
        self.held_data = torch.frombuffer(bytearray(self.held_bytes), dtype=torch.uint8)
        if len(self.train_data) <= seq_len + 1 or len(self.held_data) <= seq_len + 1:
            raise ValueError(f"the corpus is too short for --seq-len {seq_len}")
        self.eval_batches = args.eval_batches

    def batches(self, generator: torch.Generator):
        """(inputs, targets, forward kwargs) of the global batch."""
        for x, y in batches(self.train_data, self.batch, self.seq_len, generator):
            yield x, y, {}

    def evaluate(self, model, device, amp) -> dict:
        loss = evaluate(model, self.held_data, self.seq_len, self.batch, self.eval_batches, device, amp)
        return dict(held_out_loss=loss, held_out_bits_per_byte=loss / math.log(2),
                    unigram_bits_per_byte=unigram_bits_per_byte(self.train_bytes, self.held_bytes),
                    train_bytes=len(self.train_bytes), held_out_bytes=len(self.held_bytes), data=self.data_name)

    def summary(self, m: dict) -> str:
        return (f"held-out: {m['held_out_bits_per_byte']:.3f} bits/byte (unigram baseline "
                f"{m['unigram_bits_per_byte']:.3f}), loss {m['held_out_loss']:.3f}")

    def samples(self, model, device) -> str:
        return _samples(model, device)

    plot_prompt = "def main(argv):\n    return 0\n"


PAD, BOS, EOS = 0, 2, 3   # control bytes that never occur in the task's strings


class ReverseTask:
    """The encoder-decoder variant's synthetic sequence-to-sequence task, generated on the fly:
    a random lower-case string of 3-12 letters in, the same string reversed out. Evaluated on 500
    held-out pairs (a separate generator) by greedy decoding: exact-match accuracy and BLEU
    (sacrebleu, over characters)."""

    variant = "encoder-decoder"
    min_len, max_len, held_out = 3, 12, 500

    def __init__(self, args, batch: int) -> None:
        self.batch, self.seed = batch, args.seed

    def pairs(self, n: int, generator: torch.Generator) -> list[tuple[bytes, bytes]]:
        lengths = torch.randint(self.min_len, self.max_len + 1, (n,), generator=generator).tolist()
        letters = torch.randint(ord("a"), ord("z") + 1, (n, self.max_len), generator=generator)
        return [(bytes(letters[i, :n_i].tolist()), bytes(letters[i, :n_i].flip(0).tolist()))
                for i, n_i in enumerate(lengths)]

    @staticmethod
    def collate(pairs) -> tuple[Tensor, Tensor, dict]:
        """Decoder input ``BOS t``, target ``t EOS`` (-100 past it), source padded with PAD."""
        B, S, T = len(pairs), max(len(src) for src, _ in pairs), max(len(tgt) for _, tgt in pairs) + 1
        source = torch.full((B, S), PAD, dtype=torch.long)
        source_pad = torch.ones(B, S, dtype=torch.bool)                  # True: padding
        inputs = torch.full((B, T), PAD, dtype=torch.long)
        targets = torch.full((B, T), -100, dtype=torch.long)
        inputs[:, 0] = BOS
        for i, (src, tgt) in enumerate(pairs):
            source[i, :len(src)] = torch.tensor(list(src))
            source_pad[i, :len(src)] = False
            inputs[i, 1:len(tgt) + 1] = torch.tensor(list(tgt))
            targets[i, :len(tgt)] = torch.tensor(list(tgt))
            targets[i, len(tgt)] = EOS
        return inputs, targets, dict(source=source, source_padding_mask=source_pad)

    def batches(self, generator: torch.Generator):
        while True:
            yield self.collate(self.pairs(self.batch, generator))

    @torch.no_grad()
    def decode(self, model, pairs, device) -> list[bytes]:
        """Greedy decoding (KV cache), cut at the first EOS."""
        _, _, kw = self.collate(pairs)
        prompt = torch.full((len(pairs), 1), BOS, dtype=torch.long, device=device)
        out = model.generate(prompt, self.max_len + 1, source=kw["source"].to(device),
                             source_padding_mask=kw["source_padding_mask"].to(device))[:, 1:].tolist()
        return [bytes(row[:row.index(EOS)] if EOS in row else row) for row in out]

    def evaluate(self, model, device, amp) -> dict:
        import sacrebleu  # noqa: PLC0415  (the [train] extra)

        pairs = self.pairs(self.held_out, torch.Generator().manual_seed(self.seed + 10_000))
        model.eval()
        hyps = self.decode(model, pairs, device)
        model.train()
        refs = [tgt for _, tgt in pairs]
        spaced = lambda b: " ".join(b.decode("latin-1"))  # noqa: E731  (BLEU over characters)
        bleu = sacrebleu.corpus_bleu([spaced(h) for h in hyps], [[spaced(r) for r in refs]]).score
        return dict(task="reverse strings of 3-12 letters", held_out_pairs=len(pairs),
                    exact_match=sum(h == r for h, r in zip(hyps, refs)) / len(pairs), bleu=bleu)

    def summary(self, m: dict) -> str:
        return f"held-out reversal: exact match {m['exact_match']:.1%}, BLEU {m['bleu']:.1f}"

    def samples(self, model, device) -> str:
        pairs = self.pairs(8, torch.Generator().manual_seed(self.seed + 20_000))
        model.eval()
        hyps = self.decode(model, pairs, device)
        model.train()
        return "\n".join(f"{src.decode()} -> {hyp.decode('latin-1')}  (want {tgt.decode()})"
                         for (src, tgt), hyp in zip(pairs, hyps)) + "\n"

    @property
    def plot_prompt(self):
        inputs, _, kw = self.collate([(b"attention", b"noitnetta")])
        return kw["source"], inputs


def train(args: argparse.Namespace) -> dict:
    preset = PRESETS[args.preset]
    steps = args.steps if args.steps is not None else preset["steps"]
    seq2seq = args.variant == "encoder-decoder"
    batch = args.batch or (4 * preset["batch"] if seq2seq else preset["batch"])
    seq_len = args.seq_len or preset["seq_len"]
    peak_lr = args.lr or preset["lr"]
    if steps <= 0 or batch <= 0 or seq_len <= 1:
        raise ValueError(f"--steps, --batch must be > 0 and --seq-len > 1; got {steps}, {batch}, {seq_len}")
    rank, world = _init_distributed(args.device)
    if batch % world:
        raise ValueError(f"--batch {batch} must be a multiple of the number of processes ({world})")
    device = torch.device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    amp = autocast_dtype(args.dtype, device)
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    quiet = args.quiet or rank != 0
    task = ReverseTask(args, batch) if seq2seq else LanguageModelTask(args, batch, seq_len)

    torch.manual_seed(args.seed)
    cfg = TransformerConfig(variant=task.variant, attn=args.attn, norm_impl=args.norm, positions=args.positions,
                            norm=args.norm_type, **{**preset["model"], "max_len": max(preset["model"]["max_len"], seq_len)})
    model = Transformer(cfg).to(device)
    net = model
    if args.fsdp:
        if world <= 1:
            raise ValueError("--fsdp shards across processes: run it under torchrun with --nproc_per_node >= 2")
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415  (torch >= 2.6)

        for block in [*model.blocks, *(model.encoder or [])]:
            fully_shard(block)
        fully_shard(model)                     # the rest: embeddings (tied with the head) and norms
    elif world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=0.1), dict(params=no_decay, weight_decay=0.0)],
                                  lr=peak_lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    history = dict(step=[], loss=[], lr=[])
    start = 0
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=False)
        if ckpt["config"] != dataclasses.asdict(cfg):
            raise ValueError(f"--resume {args.resume}: the checkpoint's model {ckpt['config']} differs from this "
                             f"run's {dataclasses.asdict(cfg)}")
        if bool(ckpt["args"].get("fsdp")) != bool(args.fsdp):
            written = "with" if ckpt["args"].get("fsdp") else "without"
            raise ValueError(f"--resume {args.resume}: written {written} --fsdp, so resume it {written} --fsdp (the "
                             f"optimizer state is keyed differently; the 'model' entry loads into any build)")
        load_full_state(model, optimizer, ckpt, args.fsdp)
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        history, start = ckpt["history"], ckpt["step"]
    warmup = max(1, steps // 20)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)   # fp16 needs loss scaling
    data_iter = task.batches(generator)
    progress = _progress(range(start, steps), total=steps, initial=start, quiet=quiet)
    rows = slice(rank * (batch // world), (rank + 1) * (batch // world))   # this rank's share of the batch
    model.train()
    t0, tokens = time.perf_counter(), 0
    for step in progress:
        lr = lr_at(step, steps, peak_lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y, kwargs = next(data_iter)                                              # the global batch
        x, y = x[rows].to(device), y[rows].to(device)
        kwargs = {k: v[rows].to(device) for k, v in kwargs.items()}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = net(x, **kwargs)                                               # (B / world, L, V)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                                     ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()                                               # DDP averages over ranks
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)                                                      # skips the step on inf/NaN grads
        scaler.update()
        tokens += x.numel() * world
        logged = loss.detach()
        if world > 1:
            torch.distributed.all_reduce(logged)
            logged = logged / world
        history["step"].append(step)
        history["loss"].append(logged.item())
        history["lr"].append(lr)
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):,.0f}")
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            state = full_state(model, optimizer, args.fsdp)          # every rank: gathers FSDP shards
            if rank == 0:
                save_checkpoint(out / f"checkpoint-{step + 1}.pt", state, cfg, step + 1, generator, history, vars(args))
    elapsed = time.perf_counter() - t0
    state = full_state(model, optimizer, args.fsdp)
    if world > 1:  # every rank done with every collective before one leaves (gloo aborted a rank once)
        torch.distributed.barrier()
    if rank != 0:
        torch.distributed.destroy_process_group()
        return {"history": history}
    save_checkpoint(out / "checkpoint.pt", state, cfg, steps, generator, history, vars(args))
    if args.fsdp:  # evaluate on rank 0 alone: an unsharded copy of the trained model
        model = Transformer(cfg).to(device)
        model.load_state_dict(state[0])

    metrics = dict(
        steps=steps, batch=batch, seq_len=seq_len, parameters=count_parameters(model), config=dataclasses.asdict(cfg),
        train_seconds=elapsed, tokens_per_second=tokens / elapsed if elapsed > 0 else None,
        model_flops_per_second=flops_per_token(cfg, seq_len) * tokens / elapsed if elapsed > 0 and not seq2seq else None,
        final_train_loss=history["loss"][-1] if history["loss"] else None, **task.evaluate(model, device, amp))
    samples = task.samples(model, device)
    (out / "samples.txt").write_text(samples)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if not args.no_plots:
        _plots(out, history, model, device, task.plot_prompt)
    if world > 1:
        torch.distributed.destroy_process_group()
    if not quiet:
        print(f"{task.summary(metrics)}; {metrics['tokens_per_second'] or 0:,.0f} tokens/s; outputs in {out}/")
        print(samples)
    return metrics


def _init_distributed(device: str) -> tuple[int, int]:
    """(rank, world size): under torchrun (WORLD_SIZE > 1) joins the process group, gloo on the
    CPU and nccl on CUDA; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    backend = "nccl" if device.startswith("cuda") else "gloo"
    torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), world


def _progress(iterable, total: int, initial: int, quiet: bool):
    if quiet:
        return iterable
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, initial=initial, desc="train", dynamic_ncols=True)


PROMPTS = ["def ", "import os\n", "class "]


def _samples(model: Transformer, device: torch.device) -> str:
    texts = []
    g = torch.Generator().manual_seed(0)
    model.eval()
    for prompt in PROMPTS:
        ids = torch.tensor([list(prompt.encode())], device=device)
        out = model.generate(ids, 120, temperature=0.8, top_k=40, generator=g if device.type == "cpu" else None)
        texts.append("--- " + repr(prompt) + "\n" + bytes(out[0].tolist()).decode("utf-8", "replace"))
    model.train()
    return "\n".join(texts) + "\n"


def _plots(out: Path, history: dict, model: Transformer, device: torch.device, prompt) -> None:
    """loss.png, and attention-layer<i>.png: every head's map for a prompt (zenattn attention only)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    import zenattn  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history["step"], history["loss"], lw=0.8)
    ax.set(xlabel="step", ylabel="train loss (nats/byte)", title="training loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)
    if model.cfg.attn != "zenattn":
        return
    if isinstance(prompt, str):  # the language model: the prompt attends to itself
        tokens, kwargs = torch.tensor([list(prompt.encode())], device=device), {}
    else:                        # seq2seq: (source, decoder input) tensors
        (source, tokens), kwargs = prompt, {}
        kwargs["source"] = source.to(device)
        tokens = tokens.to(device)
    model.eval()
    with torch.no_grad(), zenattn.nn.record_attention(model) as rec:
        model(tokens, **kwargs)
    model.train()
    labels = [repr(chr(b))[1:-1] for b in tokens[0].tolist()]
    for layer, (name, maps) in enumerate(sorted(rec.maps.items())):
        probs = maps[0][0]                                         # (H, L, S)
        heads = probs.shape[0]
        source = [repr(chr(b))[1:-1] for b in kwargs["source"][0].tolist()] if "source" in kwargs else labels
        keys = labels if probs.shape[-1] == len(labels) else source        # cross-attention: source keys
        queries = labels if probs.shape[-2] == len(labels) else source     # the encoder: source queries
        fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 3.4), squeeze=False)
        for h in range(heads):
            a = axes[0][h]
            a.imshow(probs[h].numpy(), cmap="viridis", vmin=0, vmax=1)
            a.set_title(f"{name} head {h}", fontsize=8)
            a.set_xticks(range(len(keys)), keys, fontsize=4, rotation=90)
            a.set_yticks(range(len(queries)), queries, fontsize=4)
        fig.tight_layout()
        fig.savefig(out / f"attention-layer{layer}.png", dpi=150)
        plt.close(fig)


def main(argv=None) -> None:
    try:
        train(parse_args(argv))
    except (ValueError, FileNotFoundError) as e:
        print(f"zenattn.train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


if __name__ == "__main__":
    main()
