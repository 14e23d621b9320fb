"""Attention: ``zenattn.attention`` (zenattn's own API) and ``zenattn.scaled_dot_product_attention``
(a drop-in for ``torch.nn.functional.scaled_dot_product_attention``).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from zenattn import backends, reference
from zenattn.ops import attention as attention_ops

MAX_HEAD_DIM = 256      # the kernel backends' limit on D and Dv
ALIGNMENTS = ("top_left", "bottom_right")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

Window = Optional[tuple[Optional[int], Optional[int]]]


def _fail(fn: str, message: str, error=ValueError):
    raise error(f"zenattn.{fn}: {message}")


def _check_qkv(fn: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, Tensor):
            _fail(fn, f"{name} must be a Tensor, got {type(t).__name__}", TypeError)
        if t.dim() != 4:
            _fail(fn, f"{name} must be 4-D (batch, heads, seq_len, head_dim), got shape {list(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            _fail(fn, f"{name} has dtype {t.dtype}; supported: float32, float16, bfloat16, float64", TypeError)
    if not (q.dtype == k.dtype == v.dtype):
        _fail(fn, f"query, key and value must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}", TypeError)
    if not (q.device == k.device == v.device):
        _fail(fn, f"query, key and value must be on the same device, got {q.device}, {k.device}, {v.device}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        _fail(fn, f"batch sizes differ: query {list(q.shape)}, key {list(k.shape)}, value {list(v.shape)}")
    if k.shape[1:3] != v.shape[1:3]:
        _fail(fn, f"key {list(k.shape)} and value {list(v.shape)} must have the same heads and seq_len")
    if (k.shape[1] == 0 and q.shape[1] != 0) or (k.shape[1] != 0 and q.shape[1] % k.shape[1] != 0):
        _fail(fn, f"the number of key/value heads ({k.shape[1]}) must divide the number of query heads "
                  f"({q.shape[1]})")
    if q.shape[-1] != k.shape[-1]:
        _fail(fn, f"query and key head dims differ: {q.shape[-1]} vs {k.shape[-1]}")


def _broadcast_shapes(*shapes) -> torch.Size:
    """torch.broadcast_shapes for shapes of plain ints, without its cost (about 15 us a call in
    torch 2.13: it handles symbolic sizes); under torch.compile, it. Raises RuntimeError where the
    shapes do not broadcast, as it does."""
    if torch.compiler.is_compiling() or not all(type(d) is int for shape in shapes for d in shape):
        return torch.broadcast_shapes(*shapes)
    ndim = max([len(shape) for shape in shapes] + [0])
    out = [1] * ndim
    for shape in shapes:
        for i, d in enumerate(shape, ndim - len(shape)):
            if d != 1:
                if out[i] not in (1, d):
                    raise RuntimeError(f"shapes {[list(sh) for sh in shapes]} do not broadcast")
                out[i] = d
    return torch.Size(out)


def _check_mask(fn: str, attn_mask: Tensor, q: Tensor, k: Tensor) -> None:
    if not isinstance(attn_mask, Tensor):
        _fail(fn, f"attn_mask must be a Tensor, got {type(attn_mask).__name__}", TypeError)
    if attn_mask.dtype not in (torch.bool, torch.float32, q.dtype):
        _fail(fn, f"attn_mask must be bool, float32 or the query's dtype ({q.dtype}), got {attn_mask.dtype}",
              TypeError)
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        ok = attn_mask.dim() <= 4 and _broadcast_shapes(attn_mask.shape, target) == target
    except RuntimeError:
        ok = False
    if not ok:
        _fail(fn, f"attn_mask of shape {list(attn_mask.shape)} does not broadcast to (batch, heads, q_len, "
                  f"k_len) = {list(target)}")
    if attn_mask.device != q.device:
        _fail(fn, f"attn_mask is on {attn_mask.device} but query is on {q.device}")
    if attn_mask.requires_grad:
        _fail(fn, "attn_mask requires grad; zenattn gives masks no gradient (its backward would be "
                  "Nq x Nk). Pass attn_mask.detach(), or use torch.nn.functional.scaled_dot_product_attention",
              NotImplementedError)


def _window_sides(fn: str, window: Window, causal: bool) -> tuple[int, int]:
    """(left, right) for the kernels: -1 is unbounded; causal is right = 0."""
    left, right = -1, -1
    if window is not None:
        if not (isinstance(window, (tuple, list)) and len(window) == 2):
            _fail(fn, f"window must be a pair (left, right), got {window!r}")
        sides = []
        for name, side in zip(("left", "right"), window):
            if side is None or side == -1:
                sides.append(-1)
            elif isinstance(side, int) and not isinstance(side, bool) and side >= 0:
                sides.append(side)
            else:
                _fail(fn, f"window {name} must be an int >= 0, or None / -1 for unbounded; got {side!r}")
        left, right = sides
    if causal:
        if right > 0:
            _fail(fn, f"causal=True means window right = 0, but window={tuple(window)} allows {right} future keys")
        right = 0
    return left, right


def _kernel_limits(backend: str, tensors: tuple) -> Optional[str]:
    """What the kernel backends cannot take, for backends.select (tensors: q, k, v as given)."""
    if backend == "torch" or len(tensors) < 3 or tensors[0] is None or tensors[2] is None:
        return None
    q = tensors[0]
    d, dv = q.shape[-1], tensors[2].shape[-1]
    if not (1 <= d <= MAX_HEAD_DIM and 1 <= dv <= MAX_HEAD_DIM):
        return (f"head dims must be in 1..{MAX_HEAD_DIM} for backend {backend!r}, got {d} (query/key) "
                f"and {dv} (value)")
    if backend == "triton" and q.dtype == torch.float64 and q.device.type == "cuda":
        # triton 3.6 cannot lower float64 tl.dot on sm_80 (an assertion in its MMA lowering)
        return "the Triton attention kernels take float32/float16/bfloat16 on GPUs, not float64"
    if backend == "cuda":  # what the call's other options ask for is checked at launch
        from zenattn.cuda.attention import unsupported  # noqa: PLC0415
        return unsupported(q, tensors[1], tensors[2], tensors[3] if len(tensors) > 3 else None)
    return None


backends.register_check("attention", _kernel_limits)


def _autocast(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Under autocast, attention runs in the autocast dtype, as torch's SDPA does: float32, float16
    and bfloat16 inputs are cast to it, float64 ones are left alone."""
    if not all(isinstance(t, Tensor) for t in (q, k, v)):
        return q, k, v
    device = q.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device)
    except (TypeError, AttributeError):  # older torch: CUDA-only query
        enabled = device == "cuda" and torch.is_autocast_enabled()
        dtype = torch.get_autocast_gpu_dtype() if enabled else None
    if not enabled:
        return q, k, v
    cast = (torch.float32, torch.float16, torch.bfloat16)
    return tuple(t.to(dtype) if t.dtype in cast else t for t in (q, k, v))


def draw_seed() -> Tensor:
    """The dropout seed, drawn from torch's default CPU generator (torch.manual_seed reproduces it)."""
    return torch.randint(0, 2**62, (), dtype=torch.int64, device="cpu")


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Optional[Tensor] = None,
    causal: bool = False,
    alignment: str = "top_left",
    window: Window = None,
    softcap: Optional[float] = None,
    alibi_slopes: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    return_lse: bool = False,
    deterministic: bool = False,
    backend: Optional[str] = None,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Fused scaled dot-product attention with masks as parameters, never an (Nq, Nk) matrix.

    Shapes:
        q ``(B, Hq, Nq, D)``, k ``(B, Hkv, Nk, D)``, v ``(B, Hkv, Nk, Dv)``: float32, float16,
        bfloat16 or float64, one dtype and device. Any strides with a unit last stride are read in
        place. Hkv must divide Hq (GQA / MQA): query head ``h`` reads key/value head
        ``h // (Hq // Hkv)``, as ``k.repeat_interleave(Hq // Hkv, dim=1)`` would. The kernel
        backends take D and Dv up to 256; Nq may differ from Nk.

    Scores, in this order: ``s = scale * q @ k^T`` (``scale`` defaults to ``1/sqrt(D)``);
    ``softcap * tanh(s / softcap)`` if ``softcap``; ``- slope[h] * |i + offset - j|`` with
    ``alibi_slopes`` of shape ``(Hq,)`` or ``(B, Hq)``; ``+ attn_mask`` if it is floating point.
    Query ``i`` may attend key ``j`` only where a bool ``attn_mask`` is True, ``j <= i + offset``
    if ``causal``, and ``i + offset - left <= j <= i + offset + right`` for ``window=(left, right)``
    (None or -1: unbounded on that side). ``offset`` is 0 for ``alignment="top_left"`` (torch's
    ``is_causal``) and ``Nk - Nq`` for ``"bottom_right"`` (the last query sees the last key: decoding
    against a KV cache). ``attn_mask`` broadcasts to ``(B, Hq, Nq, Nk)`` and is read in place.

    A query that may attend no key gets output 0, log-sum-exp ``-inf`` and zero gradients.
    ``dropout_p`` zeroes probabilities with that chance and scales the rest by ``1/(1-p)``; the mask
    is drawn from a seed taken from torch's default generator, so ``torch.manual_seed`` reproduces
    it. ``deterministic=True`` asks for a bitwise-repeatable backward (the cpu and triton backends
    always are: neither uses atomics); ``torch.use_deterministic_algorithms(True)`` asks for it too.

    Returns:
        ``out (B, Hq, Nq, Dv)`` in q's dtype, and with ``return_lse`` also the log-sum-exp of each
        query's scores ``lse (B, Hq, Nq)`` in float32 (float64 for float64 input), differentiable.
    """
    return _attention("attention", q, k, v, attn_mask=attn_mask, causal=causal, alignment=alignment,
                      window=window, softcap=softcap, alibi_slopes=alibi_slopes, dropout_p=dropout_p,
                      scale=scale, return_lse=return_lse, deterministic=deterministic, backend=backend)


def _attention(fn: str, q, k, v, *, attn_mask, causal, alignment, window, softcap, alibi_slopes, dropout_p,
               scale, return_lse, deterministic, backend, seed: Optional[Tensor] = None):
    """zenattn.attention, with errors naming ``fn`` (the public function the caller used). ``seed``
    (an int64 scalar tensor) fixes the dropout mask; by default one is drawn (:func:`draw_seed`)."""
    q, k, v = _autocast(q, k, v)
    _check_qkv(fn, q, k, v)
    if attn_mask is not None:
        _check_mask(fn, attn_mask, q, k)
    if alignment not in ALIGNMENTS:
        _fail(fn, f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    left, right = _window_sides(fn, window, causal)
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        _fail(fn, f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and 0 < softcap < math.inf):
        _fail(fn, f"softcap must be a finite number > 0 (or None for no cap), got {softcap!r}")
    if alibi_slopes is not None:
        hq, b = q.shape[1], q.shape[0]
        if alibi_slopes.shape not in ((hq,), (b, hq)) or not alibi_slopes.is_floating_point():
            _fail(fn, f"alibi_slopes must be a floating tensor of shape ({hq},) or ({b}, {hq}), got "
                      f"{alibi_slopes.dtype} {list(alibi_slopes.shape)}")
        if alibi_slopes.requires_grad:
            _fail(fn, "alibi_slopes requires grad; zenattn gives the slopes no gradient", NotImplementedError)
        if alibi_slopes.device != q.device:
            _fail(fn, f"alibi_slopes is on {alibi_slopes.device} but query is on {q.device}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0

    choice = backends.select("attention", q, k, v, attn_mask, backend=backend)
    if dropout_p > 0 and seed is None:
        seed = draw_seed()
    if choice.backend == "torch":  # the same dropout mask as the kernels draw for this seed
        keep = (reference.dropout_keep_ref(int(seed), q.shape[0], q.shape[1], q.shape[2], k.shape[2], dropout_p,
                                           q.device) if dropout_p > 0 else None)
        return reference.attention_ref(
            q, k, v, attn_mask=attn_mask, scale=scale, causal=causal, alignment=alignment,
            window=(left, right), softcap=softcap, alibi_slopes=alibi_slopes, dropout_p=dropout_p,
            dropout_keep=keep, upcast=True, return_lse=return_lse)

    out, lse, *_ = attention_ops.attention(
        q, k, v, attn_mask, alibi_slopes, seed, float(scale), float(softcap or 0.0), left, right,
        alignment == "bottom_right", float(dropout_p),
        bool(deterministic) or torch.are_deterministic_algorithms_enabled(), choice.backend)
    return (out, lse) if return_lse else out


def _as_4d(t: Tensor) -> Tensor:
    """(..., N, E) -> (B, H, N, E): rank 2 gains batch and heads of 1, rank 3 (H, N, E) a batch of 1
    (dim -3 is the head dim, as enable_gqa reads it), and the leading dims of rank > 4 fold into
    the batch."""
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return t[None]
    if t.dim() > 4:
        return t.reshape(-1, *t.shape[-3:])
    return t


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``, on zenattn's kernels.

    Same signature and semantics: query ``(..., L, E)``, key ``(..., S, E)``, value ``(..., S, Ev)``
    with broadcastable leading dims; ``is_causal`` is top-left aligned; a bool ``attn_mask`` says
    where a query may attend, a floating one is added to the scores; it broadcasts to
    ``(..., L, S)``; ``enable_gqa`` lets key/value have fewer heads (dim -3) than the query.
    Differences: dropout draws its mask with zenattn's generator (reproducible from torch's seed,
    but not the same mask torch draws), and queries that may attend no key give 0, never NaN.
    ``backend`` (keyword-only, zenattn's addition) picks the kernels as in :func:`attention`.
    """
    fn = "scaled_dot_product_attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            _fail(fn, f"{name} must be a Tensor, got {type(t).__name__}", TypeError)
        if t.dim() < 2:
            _fail(fn, f"{name} must have at least 2 dims (seq_len, head_dim), got shape {list(t.shape)}")
    if attn_mask is not None and is_causal:
        _fail(fn, "attn_mask and is_causal=True were both given; pass one (torch documents this as an error)")
    if not (query.dtype == key.dtype == value.dtype):
        _fail(fn, f"query, key and value must have the same dtype, got {query.dtype}, {key.dtype}, "
                  f"{value.dtype}", TypeError)

    lead_q, lead_k = query.shape[:-2], key.shape[:-2]
    hq = query.shape[-3] if query.dim() >= 3 else 1
    hkv = key.shape[-3] if key.dim() >= 3 else 1
    gqa = enable_gqa and query.dim() >= 3 and key.dim() >= 3 and hkv != hq
    if gqa and (value.dim() < 3 or value.shape[-3] != hkv):
        _fail(fn, f"with enable_gqa=True, key and value must have the same number of heads (dim -3), got "
                  f"key {list(key.shape)} and value {list(value.shape)}")
    if gqa and (hkv == 0 or hq % hkv != 0):
        _fail(fn, f"with enable_gqa=True the key/value heads ({hkv}) must divide the query heads ({hq})")
    try:  # leading dims broadcast (with the head dim left out under GQA)
        if gqa:
            batch = _broadcast_shapes(lead_q[:-1], lead_k[:-1], value.shape[:-3])
            lead_out = (*batch, hq)
        else:
            lead_out = tuple(_broadcast_shapes(lead_q, lead_k, value.shape[:-2]))
    except RuntimeError:
        _fail(fn, f"the leading dims of query {list(query.shape)}, key {list(key.shape)} and value "
                  f"{list(value.shape)} do not broadcast" +
              ("" if enable_gqa else " (different head counts need enable_gqa=True)"))

    def expand(t: Tensor, heads: Optional[int]) -> Tensor:
        shape = (*lead_out[:-1], heads, *t.shape[-2:]) if heads is not None else (*lead_out, *t.shape[-2:])
        return t.expand(shape) if tuple(t.shape) != shape else t

    q = _as_4d(expand(query, None))
    k = _as_4d(expand(key, hkv if gqa else None))
    v = _as_4d(expand(value, hkv if gqa else None))
    mask = attn_mask
    if mask is not None:
        if not isinstance(mask, Tensor):
            _fail(fn, f"attn_mask must be a Tensor, got {type(mask).__name__}", TypeError)
        target = (*lead_out, query.shape[-2], key.shape[-2])
        try:
            _broadcast_shapes(mask.shape, target)
        except RuntimeError:
            _fail(fn, f"attn_mask of shape {list(mask.shape)} does not broadcast to {list(target)}")
        if len(target) < 4:  # leading dims of 1, as _as_4d gives q: a view, nothing copied
            mask = mask.expand(target)[(None,) * (4 - len(target))]
        elif len(target) > 4:  # leading dims folded into the batch, as for q (copies if they must)
            mask = mask.expand(target).reshape(q.shape[0], q.shape[1], *target[-2:])
    out = _attention(fn, q, k, v, attn_mask=mask, causal=is_causal, alignment="top_left", window=None,
                     softcap=None, alibi_slopes=None, dropout_p=dropout_p, scale=scale, return_lse=False,
                     deterministic=False, backend=backend)
    return out.reshape(*lead_out, query.shape[-2], value.shape[-1])


PROBS_BLOCK_ELEMENTS = 1 << 22   # attention_probs' working set per block of query rows (elements)


def attention_probs(
    q: Tensor,
    k: Tensor,
    lse: Tensor,
    *,
    attn_mask: Optional[Tensor] = None,
    causal: bool = False,
    alignment: str = "top_left",
    window: Window = None,
    softcap: Optional[float] = None,
    alibi_slopes: Optional[Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    seed: Optional[Tensor] = None,
    average_heads: bool = False,
    queries: Optional[list[int]] = None,
) -> Tensor:
    """The exact attention probabilities of a :func:`attention` call, from its log-sum-exp.

    Takes the same q, k and options as the call, and the ``lse`` it returned (``return_lse=True``):
    ``p = exp(s - lse)`` with the scores ``s`` built as the kernels build them, 0 where a query may
    not attend. With ``dropout_p`` and the call's ``seed``, the dropped entries are 0 and the rest
    scaled by ``1/(1-p)``: the matrix the output was actually computed with. Returns
    ``(B, Hq, Nq, Nk)``, or ``(B, Nq, Nk)`` averaged over heads with ``average_heads``, in q's
    dtype, differentiable (through q, k and lse). ``queries`` keeps only those query rows (negative
    counts from the end) in the result. Works one head and one block of query rows at a time:
    without autograd, the memory beyond the result is O(Nk) per row of a block, not O(Nq x Nk).
    """
    B, H, Nq, _ = q.shape
    Hk, Nk = k.shape[1], k.shape[2]
    group = H // Hk if Hk else 1
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse_safe = torch.where(torch.isinf(lse), 0, lse).to(compute)       # rows that attend nothing: p = 0
    rows = (torch.arange(Nq, device=q.device) if queries is None else
            torch.tensor([i % Nq for i in queries] if Nq else [], dtype=torch.long, device=q.device))
    n_rows = len(rows)
    # Blocks of query rows, so the working memory is (B, block, Nk): O(Nk) per row, not O(Nq x Nk).
    block = max(1, PROBS_BLOCK_ELEMENTS // max(1, B * Nk))

    def head_and_rows(t: Optional[Tensor], h: int, r: Tensor) -> Optional[Tensor]:
        """Head h and query rows r of a mask broadcasting to (B, H, Nq, Nk)."""
        if t is None:
            return None
        if t.dim() >= 3 and t.shape[-3] == H:
            t = t[..., h:h + 1, :, :]
        return t.index_select(-2, r) if t.dim() >= 2 and t.shape[-2] == Nq else t

    # Without autograd every block is written into the result in place; with it, the blocks are
    # kept (autograd saves them anyway) and joined at the end.
    in_place = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or lse.requires_grad))
    shape = (B, n_rows, Nk) if average_heads else (B, H, n_rows, Nk)
    result = q.new_zeros(shape, dtype=compute if average_heads else q.dtype) if in_place else None
    pieces = []
    for h in range(H):
        slopes = alibi_slopes[..., h:h + 1] if alibi_slopes is not None else None
        kh = k[:, h // group:h // group + 1].to(compute)
        head_pieces = []
        for r0 in range(0, n_rows, block):
            r = rows[r0:r0 + block]
            s = reference.attention_scores(
                q[:, h:h + 1].index_select(2, r).to(compute), kh, attn_mask=head_and_rows(attn_mask, h, r),
                scale=scale, causal=causal, alignment=alignment, window=window, softcap=softcap,
                alibi_slopes=slopes, query_positions=r, q_len=Nq)             # (B, 1, block, Nk)
            p = torch.exp(s - lse_safe[:, h:h + 1].index_select(2, r)[..., None])
            if dropout_p > 0:
                keep = reference.dropout_keep_ref(int(seed), B, H, Nq, Nk, dropout_p, q.device, head=h, rows=r)
                p = p * keep / (1.0 - dropout_p)
            if not in_place:
                head_pieces.append(p)
            elif average_heads:
                result[:, r0:r0 + len(r)] += p[:, 0]
            else:
                result[:, h, r0:r0 + len(r)] = p[:, 0]
        if head_pieces:
            pieces.append(torch.cat(head_pieces, dim=2))                   # (B, 1, n_rows, Nk)
    if not in_place:
        if not pieces:
            return q.new_zeros(shape)
        stacked = torch.cat(pieces, dim=1)                                 # (B, H, n_rows, Nk)
        return (stacked.mean(1) if average_heads else stacked).to(q.dtype)
    return (result / max(H, 1)).to(q.dtype) if average_heads else result
