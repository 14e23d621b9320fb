"""The ``zenattn`` torch.library namespace and the helpers every op module defines its ops with."""

from __future__ import annotations

import torch

lib = torch.library.Library("zenattn", "DEF")


def define(schema: str, impl, fake):
    """Define zenattn::<schema>, implemented by ``impl`` on CPU and CUDA tensors (the ``backend``
    argument picks the kernels) and by ``fake`` for meta/fake tensors; returns the op."""
    name = schema.split("(", 1)[0]
    lib.define(schema)
    for key in ("CPU", "CUDA"):
        lib.impl(name, impl, key)
    torch.library.register_fake(f"zenattn::{name}", fake, lib=lib)
    return getattr(torch.ops.zenattn, name).default


def register_autograd(op, impl, setup_context, backward, native=None):
    """Register ``op``'s autograd with torch.library (``setup_context`` and ``backward`` as
    ``torch.library.register_autograd`` takes them) and return the callable the functional API
    calls instead of the op:

    - while torch.compile traces, under functorch transforms, or on tensor subclasses (fake
      tensors, ...): the op itself, so graphs hold ``zenattn::<op>`` and its registrations apply;
    - in eager mode on plain tensors: ``impl`` directly, wrapped when a gradient is needed in an
      ``autograd.Function`` running the same ``setup_context`` and ``backward``. That skips the
      dispatcher and torch.library's per-call argument handling, which cost 30-70 us a call in
      torch 2.13 (its ``fill_defaults`` alone ~30 us): more than the kernel of a 16x128x128
      LayerNorm (~70 us).

    ``native``, if given, maps a backend name to a function of the same arguments that runs the op
    with its autograd in C++ (the op's last argument names the backend): used instead of the
    ``autograd.Function`` for eager calls on that backend that track a gradient, it also saves the Python autograd.Function's cost (measured at 4x8 on the project's
    VM: a LayerNorm forward 34 -> 25.5 us, forward+backward 132 -> 117 us; attention
    forward+backward 137 -> 111 us)."""
    torch.library.register_autograd(op._name, backward, setup_context=setup_context, lib=lib)

    def forward(ctx, *args):
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    # Built with its name (not renamed afterwards) so that its backward node, which autograd names
    # when the class is created, reads "<op>_eagerBackward" in profiles too.
    Eager = type(f"{op._opname}_eager", (torch.autograd.Function,),
                 {"forward": staticmethod(forward), "backward": staticmethod(lambda ctx, *grads: backward(ctx, *grads))})

    def call(*args):
        tensors = _tensors(args)
        if _needs_op(tensors):
            return op(*args)
        if _tracks_grad(tensors):
            fast = native.get(args[-1]) if native else None
            return fast(*args) if fast is not None else Eager.apply(*args)
        return impl(*args)
    return call


def refuse_double_backward(op, what: str) -> None:
    """Make differentiating backward op ``op`` (create_graph=True, then a second backward through
    it) raise, naming ``what``: without an autograd registration torch only warns and treats the
    op as constant, a silently wrong (zero) higher-order gradient."""
    def backward(ctx, *grads):
        raise RuntimeError(f"zenattn {what}: the backward is not differentiable (no double backward / "
                           f"create_graph=True through {what}); use backend='torch' for higher-order gradients")
    torch.library.register_autograd(op._name, backward, lib=lib)


def eager(op, impl):
    """The callable for an op that has no gradient of its own to give (the backward ops, whose
    autograd registration only refuses double backward): ``impl`` directly in eager mode on plain
    tensors when no gradient is tracked, as register_autograd's callable does, else ``op``."""
    def call(*args):
        tensors = _tensors(args)
        if _needs_op(tensors) or _tracks_grad(tensors):
            return op(*args)
        return impl(*args)
    return call


def _tensors(args) -> list:
    return [a for a in args if isinstance(a, torch.Tensor)]


def _needs_op(tensors: list) -> bool:
    """Whether the op itself must run: while torch.compile traces, under functorch transforms, or
    on tensor subclasses (fake tensors, ...)."""
    return (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or any(type(t) not in _PLAIN for t in tensors))


# Plain tensors: nn.Parameter is a subclass that disables __torch_function__, nothing to dispatch.
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _tracks_grad(tensors: list) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics / log-sum-exp dtype: float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32
