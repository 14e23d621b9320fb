"""Running one case: inputs, the float64 reference, the correctness check of every provider, then
timing side by side and peak memory. A provider whose result is off is reported WRONG (and still
timed, so the table shows what the wrong answer would have cost); one that raises is reported
failed with its error.

Correctness rule for zenattn's providers (DESIGN.md section 4, as in tests/parity.py): each output
and gradient is compared with a float64 reference computed from the same low-precision inputs; it
passes when its max error is at most ``FACTOR`` x the error of torch's plain computation in the
same dtype (the baseline provider: ``sdpa-math``, ``torch-eager``, ``torch-modules``) plus a
per-dtype floor scaled by the reference's magnitude. When the baseline did not run, another
PyTorch provider's error stands in for it (the row names which); with none, the sanity bound below.
Every other provider (PyTorch's alternatives, the peers) is held to a sanity bound: ``SANITY`` x
the reference's magnitude, which catches a wrong answer without calling a different summation
order wrong (torch.compile's fp32 RMSNorm weight gradient is 10x less accurate than eager's, and
correct). Every row keeps its max errors and bounds.
Attention is checked on batch 0 and the query heads of kv head 0 (heads are independent, so this
is exact for them and keeps the N x N float64 reference small).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Callable, Optional

import torch

import zenattn
from zenattn.bench import measure
from zenattn.bench.cases import MODEL_PRESETS, Case, work
from zenattn.bench.providers import Provider, window_of

FACTOR = {"out": 2.0, "dx": 3.0, "dw": 3.0, "db": 3.0, "dr": 3.0, "dq": 3.0, "dk": 3.0, "dv": 3.0, "loss": 3.0}
FLOOR = {"fp32": 2e-6, "fp16": 2e-3, "bf16": 1.6e-2}           # tests/parity.py's ATOL_FLOOR
SANITY = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 1e-1}


@dataclasses.dataclass
class Settings:
    budget_s: float = 1.0          # seconds of timed calls per case, all providers together
    min_reps: int = 3
    max_reps: int = 50
    memory: bool = True            # measure the peak memory of one call per provider


# --- inputs and reference ------------------------------------------------------------------------

def make_inputs(case: Case, device: torch.device) -> dict:
    """The case's tensors (seeded), leaf tensors requiring grad in the modes with a backward."""
    g = torch.Generator(device="cpu").manual_seed(0)
    grad = case.mode != "fwd"

    def randn(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=g) * scale + shift
        return t.to(device=device, dtype=case.torch_dtype)

    if case.op == "attention":
        B, H, Hk, N, D = case.batch, case.heads, case.kv_heads_, case.seq_len, case.head_dim
        q, k, v = randn(B, H, N, D), randn(B, Hk, N, D), randn(B, Hk, N, D)
        tensors = {"q": q, "k": k, "v": v}
        dy = randn(B, H, N, D)
    elif case.op == "model":
        fields, batch, seq_len = MODEL_PRESETS[case.preset]
        tokens = torch.randint(0, 256, (2, batch, seq_len), generator=g).to(device)
        return {"tokens": tokens[0], "targets": tokens[1]}
    else:
        x = randn(case.rows, case.hidden)
        w = randn(case.hidden, scale=0.5, shift=1.0)
        b = randn(case.hidden) if case.op == "layer_norm" else None
        tensors = {"x": x, "w": w, "b": b}
        if case.residual:
            tensors["r"] = randn(case.rows, case.hidden)
        dy = randn(case.rows, case.hidden)
    for t in tensors.values():
        if t is not None:
            t.requires_grad_(grad)
    return {"tensors": tensors, "dy": dy}


GRAD_NAMES = {"q": "dq", "k": "dk", "v": "dv", "x": "dx", "w": "dw", "b": "db", "r": "dr"}


def _checked_slices(case: Case) -> dict:
    """Which part of each tensor the check compares: attention batch 0 and the query heads of kv
    head 0 (their dk, dv are then complete); the norms in full."""
    if case.op != "attention":
        return {}
    group = case.heads // case.kv_heads_
    heads = (slice(0, 1), slice(0, group))
    return {"q": heads, "out": heads, "dq": heads, "k": (slice(0, 1), slice(0, 1)),
            "v": (slice(0, 1), slice(0, 1)), "dk": (slice(0, 1), slice(0, 1)), "dv": (slice(0, 1), slice(0, 1)),
            "dy": heads}


def _cut(name: str, t: torch.Tensor, slices: dict) -> torch.Tensor:
    return t[slices[name]] if name in slices else t


def _normed(tensors: dict) -> torch.Tensor:
    """What a norm case normalizes: x, or x + r with a residual."""
    return tensors["x"] + tensors["r"] if tensors.get("r") is not None else tensors["x"]


def reference(case: Case, inputs: dict) -> dict:
    """float64 results {"out", and the gradients "dq"... or "dx"...} of the checked slices."""
    slices = _checked_slices(case)
    grad = case.mode != "fwd"
    t64 = {n: (None if t is None else _cut(n, t.detach(), slices).double().requires_grad_(grad))
           for n, t in inputs["tensors"].items()}
    if case.op == "attention":
        out = zenattn.reference.attention_ref(t64["q"], t64["k"], t64["v"], causal=case.causal,
                                              window=window_of(case))
    elif case.op == "layer_norm":
        out = zenattn.reference.layer_norm_ref(_normed(t64), (case.hidden,), t64["w"], t64["b"], 1e-5)
    else:
        out = zenattn.reference.rms_norm_ref(_normed(t64), (case.hidden,), t64["w"], 1e-6)
    ref = {"out": out.detach()} if case.mode != "bwd" else {}
    if grad:
        names = [n for n, t in t64.items() if t is not None]
        dy = _cut("dy", inputs["dy"], slices).double()
        grads = torch.autograd.grad(out, [t64[n] for n in names], dy)
        ref.update({GRAD_NAMES[n]: g for n, g in zip(names, grads)})
    return ref


def make_call(case: Case, provider: Provider, inputs: dict, device: torch.device) -> Callable[[], dict]:
    """A no-argument call running one timed step of ``provider``, returning its results by name."""
    fn = provider.make(case, device)
    tensors = inputs["tensors"]
    args = list(tensors.values())
    if case.mode == "fwd":
        return lambda: {"out": fn(*args)}
    names = [n for n, t in tensors.items() if t is not None]
    leaves = [tensors[n] for n in names]
    dy = inputs["dy"]

    def grads(out, retain):
        return {GRAD_NAMES[n]: g for n, g in zip(names, torch.autograd.grad(out, leaves, dy, retain_graph=retain))}

    if case.mode == "fwd+bwd":
        def step():
            out = fn(*args)
            return {"out": out, **grads(out, False)}
        return step
    out = fn(*args)  # mode "bwd": the forward once, outside the timed call
    return lambda: grads(out, True)


# --- the model step ------------------------------------------------------------------------------

def training_step(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor,
                  amp: Optional[torch.dtype] = None) -> Callable[[], torch.Tensor]:
    """One training step of the reference Transformer per call: forward and loss (under autocast
    to ``amp`` if given), backward, gradient clipping at 1.0, AdamW; returns the loss, detached."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device_type = tokens.device.type

    def step() -> torch.Tensor:
        with torch.autocast(device_type, dtype=amp, enabled=amp is not None):
            loss = model.loss(tokens, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()
    return step


def _model_calls(case: Case, providers: list, inputs: dict, device: torch.device) -> tuple[dict, dict]:
    """Training-step calls of the reference Transformer, one per provider (same initial weights),
    each returning {"loss"} of the step; and the float64 reference loss of the first step."""
    from zenattn.models.transformer import Transformer, TransformerConfig  # noqa: PLC0415

    fields = MODEL_PRESETS[case.preset][0]
    torch.manual_seed(0)
    first = Transformer(TransformerConfig(**fields))
    state = first.state_dict()
    amp = None if case.dtype == "fp32" else case.torch_dtype
    tokens, targets = inputs["tokens"], inputs["targets"]
    calls = {}
    for p in providers:
        kernels = p.make(case, device)
        model = Transformer(TransformerConfig(**fields, attn=kernels, norm_impl=kernels))
        model.load_state_dict(state)
        model.to(device)
        step = training_step(model, tokens, targets, amp)
        calls[p.name] = lambda step=step: {"loss": step()}
    ref_model = Transformer(TransformerConfig(**fields, attn="torch", norm_impl="torch"))
    ref_model.load_state_dict(state)
    ref_model.to(device=device, dtype=torch.float64)
    with torch.no_grad():
        ref = {"loss": ref_model.loss(tokens, targets)}
    return calls, ref


# --- checking and timing -------------------------------------------------------------------------

def max_errors(case: Case, got: dict, ref: dict) -> dict:
    slices = _checked_slices(case)
    errors = {}
    for name, expected in ref.items():
        value = _cut(name, got[name].detach(), slices).double()
        errors[name] = (value - expected).abs().max().item() if torch.isfinite(value).all() else float("inf")
    return errors


def bounds(case: Case, ref: dict, baseline_errors: Optional[dict], strict: bool = True) -> dict:
    """Per result name, the largest max error allowed: the DESIGN rule (``strict``, with a baseline)
    or the sanity bound."""
    result = {}
    for name, expected in ref.items():
        scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
        if not strict or baseline_errors is None or baseline_errors.get(name) is None:
            result[name] = SANITY[case.dtype] * scale
        else:
            result[name] = FACTOR[name] * baseline_errors[name] + FLOOR[case.dtype] * scale
    return result


def prepare(case: Case, providers: list, device: torch.device) -> tuple[dict, dict, dict]:
    """The case's inputs turned into one call per provider: ({name: call}, the float64 reference
    results, {name: exception} for the providers whose call could not be built)."""
    inputs = make_inputs(case, device)
    if case.op == "model":
        calls, ref = _model_calls(case, providers, inputs, device)
        return calls, ref, {}
    calls, failures = {}, {}
    ref = reference(case, inputs)
    for p in providers:
        try:
            calls[p.name] = make_call(case, p, inputs, device)
        except Exception as e:  # noqa: BLE001 - a provider that cannot run is reported, not fatal
            failures[p.name] = e
    return calls, ref, failures


def run_case(case: Case, providers: list, device: torch.device, settings: Settings,
             log: Callable[[str], None] = lambda msg: None) -> list[dict]:
    """Check, then time, every provider on ``case``; one result row per provider."""
    rows = {p.name: _row(case, p) for p in providers}
    calls, ref, failures = prepare(case, providers, device)
    for name, error in failures.items():
        _fail(rows[name], error)
    # The checking call, which is also the first warm-up (compilation, autotuning, lazy init).
    errors, seconds = {}, {}
    for name in list(calls):
        try:
            got = calls[name]()
            measure.sync(device)
            errors[name] = max_errors(case, got, ref)
            del got
            t0 = time.perf_counter()  # a second, warm call estimates the time per call
            calls[name]()
            measure.sync(device)
            seconds[name] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            _fail(rows[name], e)
            del calls[name]
    baseline = next((p.name for p in providers if p.baseline and p.name in errors), None)
    if baseline is None:  # torch's plain path not run (too big, say): another PyTorch provider's error
        baseline = next((p.name for p in providers if p.name in errors and p.name.split("-")[0] in ("sdpa", "torch")),
                        None)
    for name, errs in errors.items():
        bound = bounds(case, ref, errors.get(baseline), strict=name.startswith("zenattn"))
        wrong = [t for t, e in errs.items() if not e <= bound[t]]
        rows[name].update(max_err=errs, bound=bound, baseline=baseline,
                          status="WRONG" if wrong else "ok", wrong=wrong)
    if calls:
        reps = measure.reps_for(seconds, settings.budget_s, settings.min_reps, settings.max_reps)
        with measure.OtherLoad() as load:
            stats = measure.time_side_by_side(calls, device, reps=reps, warmup=0)
        for name, s in stats.items():
            rows[name].update(median_s=s["median"], p20_s=s["p20"], p80_s=s["p80"], reps=s["n"],
                              throughput=rows[name]["work"] / s["median"], other_load=load.cores)
        if settings.memory:
            for name, call in calls.items():
                try:
                    rows[name]["peak_bytes"] = measure.peak_memory(call, device)
                except Exception as e:  # noqa: BLE001 - memory is extra information
                    log(f"peak memory of {name} failed: {e}")
    _speedups(list(rows.values()))
    for row in rows.values():
        log(f"{case.label()} {row['provider']}: {row['status']}"
            + (f", {row['median_s'] * 1e3:.2f} ms" if row.get("median_s") is not None else ""))
    return list(rows.values())


def _row(case: Case, provider: Provider) -> dict:
    amount, unit = work(case)
    row = {"op": case.op, "mode": case.mode, "dtype": case.dtype, "shape": case.shape,
           "provider": provider.name, "version": provider.version, "status": None, "error": None,
           "median_s": None, "p20_s": None, "p80_s": None, "reps": 0, "work": amount, "unit": unit,
           "throughput": None, "peak_bytes": None, "other_load": None,
           "max_err": {}, "bound": {}, "baseline": None, "wrong": [],
           "sweep_value": case.sweep_value, "case": dataclasses.asdict(case),
           "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return row


def _fail(row: dict, error: Exception) -> None:
    message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    row.update(status="failed", error=message[:300])


def _speedups(rows: list) -> None:
    """For each zenattn row: the fastest correct non-zenattn provider's median / this one's."""
    others = [r for r in rows if r["status"] == "ok" and r["median_s"] and not r["provider"].startswith("zenattn")]
    best = min(others, key=lambda r: r["median_s"], default=None)
    for r in rows:
        if r["provider"].startswith("zenattn") and r["median_s"] and best is not None:
            r["speedup"] = best["median_s"] / r["median_s"]
            r["speedup_vs"] = best["provider"]
