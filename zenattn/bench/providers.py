"""Who is measured: every zenattn backend usable here, PyTorch's own implementations, and the peer
libraries (flash-attn, xformers, Liger-Kernel) where they are installed.

A :class:`Provider` turns a :class:`~zenattn.bench.cases.Case` into a function of the case's
tensors: attention ``fn(q, k, v) -> out`` with q ``(B, H, N, D)`` and k, v ``(B, Hkv, N, D)``;
norms ``fn(x, weight, bias[, residual]) -> y`` (bias None for RMSNorm; a residual case passes r and
gets y = norm(x + r)). The model-step providers are built
differently (see :mod:`zenattn.bench.runner`). ``why_not`` says why a provider cannot run a case
here (None if it can); ``opt_in`` says why it only runs when asked for by name (compiling a
kernel per shape on a small CPU, say), None if it runs by default.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import zenattn
from zenattn.bench.cases import Case

LN_EPS, RMS_EPS = 1e-5, 1e-6
ZENATTN_BACKENDS = ("cpu", "triton", "cuda", "torch")


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    op: str                                                   # "attention", "norm" or "model"
    version: str
    make: Callable[[Case, torch.device], Callable]
    why_not: Callable[[Case, torch.device], Optional[str]] = lambda case, device: None
    opt_in: Callable[[torch.device], Optional[str]] = lambda device: None
    baseline: bool = False    # torch's plain computation in the case's dtype: its error sets the bound

    def serves(self, case: Case) -> bool:
        return self.op == ("norm" if case.op in ("layer_norm", "rms_norm") else case.op)


def _module_version(module: str, dist: Optional[str] = None) -> Optional[str]:
    """The installed version of a peer library, or None if it is not importable."""
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - an installed but broken peer is simply absent
        return None
    try:
        return importlib.metadata.version(dist or module)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(mod, "__version__", "unknown"))


def _needs_cuda(case: Case, device: torch.device) -> Optional[str]:
    return None if device.type == "cuda" else "needs a CUDA device"


def _compile_opt_in(device: torch.device) -> Optional[str]:
    if device.type == "cuda":
        return None
    return "compiles a kernel per shape (seconds each on a small CPU); run it by naming it in --providers"


def window_of(case: Case) -> Optional[tuple[int, int]]:
    """The case's local window as zenattn's (left, right)."""
    if case.window is None:
        return None
    return (case.window, 0 if case.causal else case.window)


def _allowed(case: Case, device: torch.device) -> Optional[torch.Tensor]:
    """The bool (N, N) "may attend" matrix of a windowed case (None when causal alone says it)."""
    if case.window is None:
        return None
    i = torch.arange(case.seq_len, device=device)[:, None]
    j = torch.arange(case.seq_len, device=device)[None, :]
    right = 0 if case.causal else case.window
    return (j >= i - case.window) & (j <= i + right)


# --- zenattn -------------------------------------------------------------------------------------

def _zenattn_attention(backend: str) -> Provider:
    def make(case: Case, device: torch.device):
        window = window_of(case)
        return lambda q, k, v: zenattn.attention(q, k, v, causal=case.causal, window=window, backend=backend)
    return Provider(f"zenattn-{backend}", "attention", _zenattn_version(backend), make,
                    why_not=lambda case, device: _zenattn_why_not(backend, "attention", case, device),
                    opt_in=lambda device: _zenattn_opt_in(backend, device))


def _zenattn_norm(backend: str) -> Provider:
    def make(case: Case, device: torch.device):
        def run(x, w, b, r=None):  # with a residual: the fused add, which also returns the sum
            if case.op == "layer_norm":
                out = zenattn.layer_norm(x, (case.hidden,), w, b, LN_EPS, residual=r, backend=backend)
            else:
                out = zenattn.rms_norm(x, (case.hidden,), w, RMS_EPS, residual=r, backend=backend)
            return out if r is None else out[0]
        return run
    return Provider(f"zenattn-{backend}", "norm", _zenattn_version(backend), make,
                    why_not=lambda case, device: _zenattn_why_not(backend, case.op, case, device),
                    opt_in=lambda device: _zenattn_opt_in(backend, device))


def _zenattn_version(backend: str) -> str:
    version = f"zenattn {zenattn.__version__}"
    if backend == "triton":
        triton_version = _module_version("triton")
        version += f", triton {triton_version}" if triton_version else ""
    return version


def _zenattn_why_not(backend: str, op: str, case: Case, device: torch.device) -> Optional[str]:
    probe = torch.empty(0, device=device, dtype=case.torch_dtype)
    return zenattn.backends.why_not(backend, op, probe)


def _zenattn_opt_in(backend: str, device: torch.device) -> Optional[str]:
    if backend == "torch":
        return "zenattn's pure-PyTorch reference backend (materializes N x N); run it by naming it"
    if backend == "triton" and device.type == "cpu":
        return "runs in Triton's interpreter on the CPU (a correctness tool, not a speed); run it by naming it"
    return None


# --- PyTorch -------------------------------------------------------------------------------------

def _sdpa(backend_name: str) -> Provider:
    """``F.scaled_dot_product_attention`` with one of its backends forced."""
    def make(case: Case, device: torch.device):
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

        backend = getattr(SDPBackend, backend_name)
        mask = _allowed(case, device)
        gqa = case.kv_heads_ != case.heads
        native_gqa = _torch_at_least(2, 5)
        group = case.heads // case.kv_heads_

        def run(q, k, v):
            if gqa and not native_gqa:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            extra = {"enable_gqa": True} if gqa and native_gqa else {}
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                      is_causal=case.causal and mask is None, **extra)
        return run

    def why_not(case: Case, device: torch.device) -> Optional[str]:
        from torch.nn.attention import SDPBackend  # noqa: PLC0415

        if not hasattr(SDPBackend, backend_name):
            return f"this torch has no SDPBackend.{backend_name}"
        if device.type != "cuda" and backend_name in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            return "a CUDA-only SDPA backend"
        return None

    short = {"MATH": "math", "FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient",
             "CUDNN_ATTENTION": "cudnn"}[backend_name]
    return Provider(f"sdpa-{short}", "attention", f"torch {torch.__version__}", make, why_not=why_not,
                    baseline=backend_name == "MATH")


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


def _flex() -> Provider:
    def make(case: Case, device: torch.device):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: PLC0415

        compiled = torch.compile(flex_attention, dynamic=False)
        right = 0 if case.causal else case.window

        def mask_mod(b, h, q_idx, kv_idx):
            ok = kv_idx <= q_idx if case.causal else kv_idx >= 0
            if case.window is not None:
                ok = ok & (kv_idx >= q_idx - case.window) & (kv_idx <= q_idx + right)
            return ok
        block_mask = None
        if case.causal or case.window is not None:
            block_mask = create_block_mask(mask_mod, None, None, case.seq_len, case.seq_len, device=device)
        gqa = {"enable_gqa": True} if case.kv_heads_ != case.heads else {}
        return lambda q, k, v: compiled(q, k, v, block_mask=block_mask, **gqa)

    def why_not(case: Case, device: torch.device) -> Optional[str]:
        if not _torch_at_least(2, 5):
            return "FlexAttention needs torch >= 2.5"
        if device.type == "cpu" and case.mode != "fwd":
            return "FlexAttention has no backward on the CPU"
        return None
    return Provider("flex", "attention", f"torch {torch.__version__}", make, why_not=why_not,
                    opt_in=_compile_opt_in)


def _torch_norm(compiled: bool) -> Provider:
    def make(case: Case, device: torch.device):
        def fn(x, w, b, r=None):  # with a residual: the add, then the norm (compiled: fused by Inductor)
            s = x if r is None else x + r
            if case.op == "layer_norm":
                return F.layer_norm(s, (case.hidden,), w, b, LN_EPS)
            return F.rms_norm(s, (case.hidden,), w, RMS_EPS)
        return torch.compile(fn, dynamic=False) if compiled else fn

    def why_not(case: Case, device: torch.device) -> Optional[str]:
        if case.op == "rms_norm" and not hasattr(F, "rms_norm"):
            return "this torch has no F.rms_norm"
        return None
    return Provider("torch-compile" if compiled else "torch-eager", "norm", f"torch {torch.__version__}", make,
                    why_not=why_not, opt_in=_compile_opt_in if compiled else (lambda device: None),
                    baseline=not compiled)


# --- peers (each only where installed) -----------------------------------------------------------

def _flash_attn(version: str) -> Provider:
    def make(case: Case, device: torch.device):
        from flash_attn import flash_attn_func  # noqa: PLC0415

        window = window_of(case) or (-1, -1)
        # flash-attn takes (B, N, H, D); the transposes are views, its own layout copy is part of it.
        return lambda q, k, v: flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               causal=case.causal, window_size=window).transpose(1, 2)

    def why_not(case: Case, device: torch.device) -> Optional[str]:
        return _needs_cuda(case, device) or (None if case.dtype in ("bf16", "fp16") else "bf16/fp16 only")
    return Provider("flash-attn", "attention", f"flash-attn {version}", make, why_not=why_not)


def _xformers(version: str) -> Provider:
    def make(case: Case, device: torch.device):
        import xformers.ops as xops  # noqa: PLC0415

        bias = xops.LowerTriangularMask() if case.causal else None
        return lambda q, k, v: xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias).transpose(1, 2)

    def why_not(case: Case, device: torch.device) -> Optional[str]:
        if case.kv_heads_ != case.heads or case.window is not None:
            return "GQA and windows are not wired up for xformers here"
        return _needs_cuda(case, device)
    return Provider("xformers", "attention", f"xformers {version}", make, why_not=why_not)


def _liger(version: str) -> Provider:
    def make(case: Case, device: torch.device):
        # Liger's functional forms (its modules own their parameters; these take the case's tensors).
        from liger_kernel.transformers.functional import liger_layer_norm, liger_rms_norm  # noqa: PLC0415

        if case.op == "layer_norm":
            return lambda x, w, b: liger_layer_norm(x, w, b, LN_EPS)
        return lambda x, w, b: liger_rms_norm(x, w, RMS_EPS, in_place=False)

    def why_not(case: Case, device: torch.device) -> Optional[str]:
        if case.residual:
            return "Liger's LayerNorm / RMSNorm have no fused residual add"
        return _needs_cuda(case, device)
    return Provider("liger", "norm", f"liger-kernel {version}", make, why_not=why_not)


# --- the model step ------------------------------------------------------------------------------

def _model(kernels: str) -> Provider:
    return Provider(f"{kernels}-modules", "model", f"{kernels} {zenattn.__version__ if kernels == 'zenattn' else torch.__version__}",
                    make=lambda case, device: kernels, baseline=kernels == "torch")


def all_providers() -> list[Provider]:
    """Every provider this installation knows of, available here or not."""
    providers = [_zenattn_attention(b) for b in ZENATTN_BACKENDS]
    providers += [_sdpa(b) for b in ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")]
    providers.append(_flex())
    providers += [_zenattn_norm(b) for b in ZENATTN_BACKENDS if b != "torch"]
    providers += [_torch_norm(False), _torch_norm(True)]
    providers += [_model("zenattn"), _model("torch")]
    for module, dist, factory in (("flash_attn", "flash-attn", _flash_attn), ("xformers", None, _xformers),
                                  ("liger_kernel", "liger-kernel", _liger)):
        version = _module_version(module, dist)
        provider = factory(version or "not installed")
        if version is None:
            reason = f"not installed (pip install {dist or module})"
            provider = dataclasses.replace(provider, why_not=lambda case, device, reason=reason: reason)
        providers.append(provider)
    return providers


def select(case: Case, device: torch.device, names: Optional[list] = None,
           providers: Optional[list] = None) -> tuple[list[Provider], dict]:
    """The providers that run ``case`` here, and {name: reason} for each one that does not.

    ``names`` None runs every available provider that is not opt-in; otherwise only those named
    (opt-in ones included)."""
    chosen, skipped = [], {}
    for p in providers if providers is not None else all_providers():
        if not p.serves(case) or (names is not None and p.name not in names):
            continue
        reason = p.why_not(case, device)
        if reason is None and names is None:
            reason = p.opt_in(device)
        if reason is None:
            chosen.append(p)
        else:
            skipped[p.name] = reason
    return chosen, skipped
