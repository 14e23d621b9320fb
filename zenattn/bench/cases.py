"""What the harness measures: one :class:`Case` per (op, mode, dtype, shape), the work it does
(DESIGN.md section 5) and the sweeps that generate cases.

Work accounting:

- attention FLOPs ``4 * B * H * Nq * Nk * D`` (two matmuls, 2 FLOPs per multiply-add), x0.5 causal
  (the FlashAttention convention, for square causal and for bottom-right causal alike), with a
  sliding window the exact number of (query, key) pairs it allows instead of ``Nq * Nk``;
  backward x2.5, forward+backward x3.5;
- norm bytes: forward reads x (and the residual) and writes y (and the sum), the weights once;
  backward reads x (the sum, with a residual) and dy (and the weights) and writes dx (and the
  weight gradients; the residual's gradient is dx again: not counted twice);
- the model step: ``flops_per_token`` of the reference Transformer x tokens (its own accounting).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Optional

import torch

OPS = ("attention", "layer_norm", "rms_norm", "model")
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
MODEL_PRESETS = {  # name -> (TransformerConfig fields, batch, seq_len); "tiny" is the trainer's default
    "tiny": (dict(dim=128, n_layers=2, n_heads=4, max_len=256), 16, 128),
    "small": (dict(dim=256, n_layers=4, n_heads=8, max_len=512), 8, 256),
    "gpt2-small": (dict(dim=768, n_layers=12, n_heads=12, max_len=1024), 8, 1024),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case. Attention uses batch, heads, kv_heads, seq_len (Nq = Nk), head_dim,
    causal, window; the norms use rows, hidden and residual (normalize x + r, returning the sum
    too, the pre-norm block's fused add); the model step uses preset (and its own batch and
    sequence length)."""

    op: str
    mode: str
    dtype: str
    batch: int = 1
    heads: int = 8
    kv_heads: Optional[int] = None
    seq_len: int = 1024
    head_dim: int = 64
    causal: bool = False
    window: Optional[int] = None     # local attention: keys within ``window`` positions before the query
                                     # (causal) or on either side of it (not causal)
    rows: int = 4096
    hidden: int = 1024
    residual: bool = False
    preset: str = "tiny"

    def __post_init__(self) -> None:
        problems = []
        if self.op not in OPS:
            problems.append(f"op must be one of {OPS}, got {self.op!r}")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.op == "model" and self.mode != "fwd+bwd":
            problems.append("the model step is always forward + backward + optimizer (mode 'fwd+bwd')")
        if self.op == "model" and self.preset not in MODEL_PRESETS:
            problems.append(f"preset must be one of {tuple(MODEL_PRESETS)}, got {self.preset!r}")
        if self.op == "attention" and self.heads % self.kv_heads_ != 0:
            problems.append(f"kv_heads ({self.kv_heads_}) must divide heads ({self.heads})")
        if self.residual and self.op not in ("layer_norm", "rms_norm"):
            problems.append("residual is a norm parameter (layer_norm, rms_norm)")
        if self.window is not None and self.window < 0:
            problems.append(f"window must be >= 0, got {self.window}")
        if problems:
            raise ValueError("Case: " + "; ".join(problems))

    @property
    def kv_heads_(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def shape(self) -> str:
        """A short, stable description of the shape (a column of the results)."""
        if self.op == "attention":
            kv = f" Hkv={self.kv_heads_}" if self.kv_heads_ != self.heads else ""
            win = f" W={self.window}" if self.window is not None else ""
            return (f"B={self.batch} H={self.heads}{kv} N={self.seq_len} D={self.head_dim}"
                    f"{' causal' if self.causal else ''}{win}")
        if self.op == "model":
            _, batch, seq_len = MODEL_PRESETS[self.preset]
            return f"{self.preset} B={batch} L={seq_len}"
        return f"{self.rows}x{self.hidden}{' +residual' if self.residual else ''}"

    @property
    def sweep_value(self) -> int:
        """The x axis of the plots: sequence length for attention, hidden size for the norms."""
        return {"attention": self.seq_len, "model": MODEL_PRESETS[self.preset][2]}.get(self.op, self.hidden)

    def label(self) -> str:
        return f"{self.op} {self.mode} {self.dtype} {self.shape}"


def attention_pairs(n_q: int, n_k: int, causal: bool, window: Optional[int]) -> float:
    """(query, key) pairs one head computes: Nq*Nk, x0.5 causal; with a window, the exact count over
    the queries i of the keys 0 <= j < Nk with i - window <= j <= i (causal) or <= i + window."""
    if window is None:
        return n_q * n_k * (0.5 if causal else 1.0)
    i = torch.arange(n_q, dtype=torch.float64)
    hi = torch.clamp(i + (0 if causal else window), max=n_k - 1)
    lo = torch.clamp(i - window, min=0)
    return float(torch.clamp(hi - lo + 1, min=0).sum())


def attention_flops(case: Case) -> float:
    pairs = attention_pairs(case.seq_len, case.seq_len, case.causal, case.window)
    return 4.0 * case.batch * case.heads * pairs * case.head_dim * MODE_FACTOR[case.mode]


def norm_bytes(case: Case) -> float:
    """Bytes a norm must move at least (weights counted once, in the activation dtype)."""
    residual = case.residual
    esize = torch.empty((), dtype=case.torch_dtype).element_size()
    act = case.rows * case.hidden * esize
    params = (2 if case.op == "layer_norm" else 1) * case.hidden * esize
    fwd = act * (2 + (2 if residual else 0)) + params            # x (+ r) in, y (+ sum) out
    bwd = act * 3 + 2 * params                                     # x, dy in, dx out; w in, dw out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[case.mode]


def model_flops(case: Case) -> float:
    from zenattn.models.transformer import TransformerConfig, flops_per_token

    fields, batch, seq_len = MODEL_PRESETS[case.preset]
    return flops_per_token(TransformerConfig(**fields), seq_len) * batch * seq_len


def work(case: Case) -> tuple[float, str]:
    """(amount, unit) of the work of one call: FLOPs for attention and the model, bytes for norms."""
    if case.op == "attention":
        return attention_flops(case), "FLOP"
    if case.op == "model":
        return model_flops(case), "FLOP"
    return norm_bytes(case), "B"


# Sweeps: name -> a dict of parameter lists; every combination is a case.
SWEEPS = {
    # What `zenattn-bench` runs with no arguments: a few minutes on a 2-core CPU.
    "default": {
        "attention": dict(mode=["fwd", "fwd+bwd"], dtype=["fp32"], seq_len=[512, 1024, 2048],
                          head_dim=[64], causal=[False, True]),
        "layer_norm": dict(mode=["fwd", "fwd+bwd"], dtype=["fp32"], rows=[4096], hidden=[1024, 4096],
                           residual=[False, True]),
        "rms_norm": dict(mode=["fwd", "fwd+bwd"], dtype=["fp32"], rows=[4096], hidden=[1024, 4096],
                         residual=[False, True]),
        "model": dict(mode=["fwd+bwd"], dtype=["fp32"], preset=["tiny"]),
    },
    # A smoke run (tests, CI): tiny shapes.
    "quick": {
        "attention": dict(mode=["fwd", "fwd+bwd"], dtype=["fp32"], seq_len=[128, 256], head_dim=[32],
                          causal=[True], heads=[2]),
        "layer_norm": dict(mode=["fwd", "fwd+bwd"], dtype=["fp32"], rows=[256], hidden=[256, 512]),
        "rms_norm": dict(mode=["fwd", "fwd+bwd"], dtype=["fp32"], rows=[256], hidden=[256], residual=[True]),
        "model": dict(mode=["fwd+bwd"], dtype=["fp32"], preset=["tiny"]),
    },
    # The GPU run of benchmarks/gpu_check.sh (issue #8): the norms and the model step first (few
    # cases), then B=2, H=16 attention in bf16/fp16.
    "gpu": {
        "layer_norm": dict(mode=["fwd", "fwd+bwd"], dtype=["bf16"], rows=[16384],
                           hidden=[1024, 4096, 8192, 16384]),
        "rms_norm": dict(mode=["fwd", "fwd+bwd"], dtype=["bf16"], rows=[16384],
                         hidden=[1024, 4096, 8192, 16384]),
        "model": dict(mode=["fwd+bwd"], dtype=["bf16"], preset=["gpt2-small"]),
        "attention": dict(mode=["fwd", "fwd+bwd"], dtype=["bf16", "fp16"], batch=[2], heads=[16],
                          seq_len=[1024, 2048, 4096, 8192, 16384], head_dim=[64, 128], causal=[False, True]),
    },
}


def expand(op: str, params: dict) -> list[Case]:
    """Every combination of the parameter lists in ``params`` as a Case of ``op``."""
    names = list(params)
    return [Case(op=op, **dict(zip(names, values))) for values in itertools.product(*(params[n] for n in names))]


def sweep(name: str, ops: Optional[list] = None, overrides: Optional[dict] = None) -> list[Case]:
    """The cases of sweep ``name`` for ``ops`` (default: all of the sweep's ops), with any parameter
    list replaced by ``overrides`` (a parameter that an op does not use is ignored for it)."""
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; choose one of {tuple(SWEEPS)}")
    overrides = overrides or {}
    fields = {f.name for f in dataclasses.fields(Case)}
    used = {"attention": {"mode", "dtype", "batch", "heads", "kv_heads", "seq_len", "head_dim", "causal", "window"},
            "layer_norm": {"mode", "dtype", "rows", "hidden", "residual"},
            "rms_norm": {"mode", "dtype", "rows", "hidden", "residual"},
            "model": {"dtype", "preset"}}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown case parameters {sorted(unknown)}; known: {sorted(fields)}")
    cases = []
    for op in ops or list(SWEEPS[name]):
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; choose from {OPS}")
        params = dict(SWEEPS[name].get(op, SWEEPS["default"][op]))
        params.update({k: v for k, v in overrides.items() if k in used[op]})
        if op == "model":
            params["mode"] = ["fwd+bwd"]
        cases += expand(op, params)
    return cases
