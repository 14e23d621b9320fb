"""Which backend runs an op: the registry, the choice rule and the ``ZENATTN_BACKEND`` override.

Backends:
  ``triton``  Triton kernels (GPU; the default on CUDA once it has kernels)
  ``cuda``    hand-written CUDA C++ in ``zenattn._C``
  ``cpu``     C++ CPU kernels in ``zenattn._C`` (vectorized, multi-threaded)
  ``torch``   the pure-PyTorch reference (``zenattn.reference``), always usable

The rule: an explicit request (``backend=`` argument, else ``ZENATTN_BACKEND``) that cannot run
the op on the given inputs raises :class:`BackendUnavailableError` with the reason; an automatic
choice takes the first capable backend in the device's preference order and records why it
skipped the others (:func:`explain`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from zenattn.triton import interpreting as triton_interpreting

ENV_VAR = "ZENATTN_BACKEND"
ALL_BACKENDS = ("triton", "cuda", "cpu", "torch")
# Preference order per device type for the automatic choice.
PREFERENCE = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the op on these inputs (the message says why)."""


@dataclass(frozen=True)
class BackendStatus:
    name: str
    built: bool      # compiled / importable in this installation
    usable: bool     # built, and the device it needs is present
    reason: str      # what it runs on, or why it cannot run here


@functools.lru_cache(maxsize=None)
def _extension():
    """``(zenattn._C, None)``, or ``(None, why it failed to load)``."""
    try:
        from zenattn import _C  # noqa: PLC0415
    except ImportError as e:  # not built, or built against another torch
        return None, f"zenattn._C failed to load: {e}"
    return _C, None


def extension():
    """The compiled module ``zenattn._C``; raises if it did not build or load."""
    mod, why = _extension()
    if mod is None:
        raise BackendUnavailableError(why)
    return mod


# Probed once per process (zenattn/__init__.py probes every backend at import) and then read from
# this dict, which torch.compile traces as a constant instead of re-running the probe.
_STATUS: dict[str, BackendStatus] = {}


def status(name: str) -> BackendStatus:
    """Whether backend ``name`` is built and usable in this process, and why not."""
    st = _STATUS.get(name)
    if st is None:
        st = _STATUS[name] = _probe(name)
    return st


def refresh() -> None:
    """Probe every backend again (after registering kernels or changing the environment)."""
    _STATUS.clear()
    for name in ALL_BACKENDS:
        status(name)


def _probe(name: str) -> BackendStatus:
    if name == "torch":
        return BackendStatus(name, True, True, f"pure PyTorch {torch.__version__}, any device")
    if name == "cpu":
        mod, why = _extension()
        if mod is None:
            return BackendStatus(name, False, False, why)
        return BackendStatus(name, True, True, f"C++ kernels for {mod.build_info()['cpu_isa']}")
    if name == "cuda":
        mod, why = _extension()
        if mod is None:
            return BackendStatus(name, False, False, why)
        if not mod.build_info()["cuda"]:
            return BackendStatus(name, False, False, "zenattn._C was built without CUDA kernels")
        if not torch.cuda.is_available():
            return BackendStatus(name, True, False, "no CUDA device visible to torch")
        return BackendStatus(name, True, True, f"CUDA C++ kernels on {torch.cuda.get_device_name()}")
    if name == "triton":
        version = _triton_version()
        if version is None:
            return BackendStatus(name, False, False, "triton is not installed")
        if not _LAUNCHERS.get("triton"):
            return BackendStatus(name, False, False,
                                 f"triton {version} found; zenattn has no Triton kernels yet")
        if triton_interpreting():
            return BackendStatus(name, True, True, f"Triton {version} kernels, in the interpreter on CPU "
                                                   f"tensors (TRITON_INTERPRET=1)")
        return BackendStatus(name, True, True, f"Triton {version} kernels ({', '.join(sorted(_LAUNCHERS['triton']))})")
    raise ValueError(f"unknown zenattn backend {name!r}; choose from {ALL_BACKENDS}")


def _triton_version() -> Optional[str]:
    """Triton's version without importing it (importing triton takes about a second)."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- launcher registry -----------------------------------------------------------------------
# _LAUNCHERS[backend][op] is a zero-argument callable returning the object whose functions
# (layer_norm_fwd, layer_norm_bwd, ...) implement that op family with the common signatures
# documented in zenattn/ops/. Registering is cheap; loading happens at first use.
_LAUNCHERS: dict[str, dict[str, Callable[[], object]]] = {}
# Device types each backend's kernels accept.
_DEVICES = {"cpu": ("cpu",), "cuda": ("cuda",), "triton": ("cuda",), "torch": None}


def register(backend: str, op: str, loader: Callable[[], object]) -> None:
    _LAUNCHERS.setdefault(backend, {})[op] = loader
    refresh()


# _CHECKS[op](backend, tensors) says why ``backend`` cannot take these particular arguments of
# ``op`` (for example a head dim over a kernel's limit), or returns None. Set by the op's module.
_CHECKS: dict[str, Callable[[str, tuple], Optional[str]]] = {}


def register_check(op: str, check: Callable[[str, tuple], Optional[str]]) -> None:
    _CHECKS[op] = check


def has_kernel(backend: str, op: str) -> bool:
    """Whether zenattn has ``backend`` kernels for ``op`` at all (built and usable here or not)."""
    return backend == "torch" or op in _LAUNCHERS.get(backend, {})


def launchers(backend: str, op: str):
    """The object holding ``backend``'s launchers for ``op`` (e.g. ``zenattn._C`` for cpu)."""
    return _LAUNCHERS[backend][op]()


def why_not(backend: str, op: str, *tensors: Optional[torch.Tensor]) -> Optional[str]:
    """``None`` if ``backend`` can run ``op`` on these tensors, else the reason it cannot."""
    st = status(backend)
    if not st.usable:
        return st.reason
    if backend != "torch" and op not in _LAUNCHERS.get(backend, {}):
        return f"backend {backend!r} has no {op} kernel"
    devices = _DEVICES[backend]
    if backend == "triton" and triton_interpreting():
        devices = ("cuda", "cpu")
    for t in tensors:
        if t is None:
            continue
        if devices is not None and t.device.type not in devices:
            return f"backend {backend!r} runs on {'/'.join(devices)} tensors, got a tensor on {t.device}"
        if backend != "torch" and t.dtype not in KERNEL_DTYPES and t.dtype != torch.bool:  # bool: masks
            return f"backend {backend!r} supports float32/float16/bfloat16/float64, got {t.dtype}"
    check = _CHECKS.get(op)
    return check(backend, tensors) if check is not None else None


@dataclass(frozen=True)
class Choice:
    backend: str
    requested: str                # "auto", or the explicit request
    skipped: tuple[tuple[str, str], ...]  # (backend, reason) for each one passed over

    def describe(self) -> str:
        lines = [f"backend {self.backend!r} ({self.requested} choice): {status(self.backend).reason}"]
        lines += [f"  skipped {name!r}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def requested_backend(backend: Optional[str] = None) -> str:
    """The explicit request (argument, else ``ZENATTN_BACKEND``), or ``"auto"``."""
    name = backend if backend is not None else os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if name != "auto" and name not in ALL_BACKENDS:
        source = "backend=" if backend is not None else f"{ENV_VAR}="
        raise ValueError(f"{source}{name!r} is not a zenattn backend; choose from "
                         f"{('auto',) + ALL_BACKENDS}")
    return name


def select(op: str, *tensors: Optional[torch.Tensor], backend: Optional[str] = None) -> Choice:
    """Choose the backend for ``op`` on ``tensors`` (first tensor decides the device)."""
    requested = requested_backend(backend)
    if requested != "auto":
        why = why_not(requested, op, *tensors)
        if why is not None:
            raise BackendUnavailableError(f"zenattn {op}: requested backend {requested!r} cannot run "
                                          f"here: {why}")
        return Choice(requested, requested, ())
    device = next((t.device.type for t in tensors if t is not None), "cpu")
    skipped = []
    for name in PREFERENCE.get(device, ("torch",)):
        why = why_not(name, op, *tensors)
        if why is None:
            return Choice(name, "auto", tuple(skipped))
        skipped.append((name, why))
    raise BackendUnavailableError(f"zenattn {op}: no backend can run on these inputs: {skipped}")
