"""Input checks shared by the ops: each error names the op and what it expected."""
from __future__ import annotations

from typing import Sequence

import torch

from ..cu_seqlens import check_cu_seqlens_values  # noqa: F401  (re-exported)

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(
    op: str,
    name: str,
    t: torch.Tensor,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES,
    shape: Sequence[int | None] | None = None,
) -> None:
    """Raise a TypeError/ValueError naming `op` unless `t` has the given rank, dtype and shape.

    `shape` may hold None for free dimensions.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if shape is not None and t.shape != shape:  # shape: the common case of no free dimension is one compare
        if len(shape) != t.dim() or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{op}: {name} must have shape {want}, got {list(t.shape)}")


def check_static_cache(op: str, k_cache, v_cache, cache_lens, *, B: int, D: int, Hkv: int | None = None,
                       dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    """k_cache and v_cache [B, Hkv, Lmax, D] of one shape (Hkv free when None), cache_lens [B] int32/int64:
    a static KV cache with per-sequence lengths, as the full-attention decode ops take it."""
    check_tensor(op, "k_cache", k_cache, shape=(B, Hkv, None, D), dtypes=dtypes)
    check_tensor(op, "v_cache", v_cache, shape=tuple(k_cache.shape), dtypes=dtypes)
    check_tensor(op, "cache_lens", cache_lens, shape=(B,), dtypes=(torch.int32, torch.int64))


def check_same_device(op: str, **tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (None skipped) on one device; returns it."""
    first = None
    for t in tensors.values():  # the common case without building anything
        if t is not None:
            if first is None:
                first = t.device
            elif t.device != first:
                break
    else:
        return first
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listing}")
    return first


def check_index(op: str, name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as a Python int: any integral number (int, numpy integer, 0-d integer tensor: whatever
    `operator.index` takes), never a bool; within [minimum, maximum] when given."""
    import operator

    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{op}: {name} must be an integer, got the bool {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an integer, got {type(value).__name__} {value!r}") from None
    if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise ValueError(f"{op}: {name} must be an integer in [{lo}, {hi}], got {n}")
    return int(n)


def check_positive_dims(op: str, **dims: int) -> None:
    """Feature dimensions (head counts, head dims, widths) must be >= 1: an op over zero features
    has no meaningful result, so it is one clear error on every backend."""
    bad = {k: v for k, v in dims.items() if v < 1}
    if bad:
        listing = ", ".join(f"{k}={v}" for k, v in bad.items())
        what = f"{', '.join(dims)} must all be" if len(dims) > 1 else f"{next(iter(dims))} must be"
        raise ValueError(f"{op}: {what} >= 1 (an empty feature axis has no result), got {listing}")


def check_cu_seqlens(op: str, cu_seqlens: torch.Tensor, total: int) -> None:
    """Check the values of `cu_seqlens` when they are in host memory (a CPU tensor: no sync).

    On a device the values are not read here (that would be a host sync per call): the contract is
    the same (start at 0, non-decreasing, end at T) and the kernels clamp every offset into [0, T],
    so a bad device tensor gives wrong results but never an out-of-bounds access."""
    if values_in_host_memory(cu_seqlens):
        check_cu_seqlens_values(op, cu_seqlens.tolist(), total)


def values_in_host_memory(t: torch.Tensor) -> bool:
    """Can `t`'s values be read without a device sync? (a real CPU tensor, not while tracing)"""
    from torch._subclasses.fake_tensor import FakeTensor

    return t.device.type == "cpu" and not isinstance(t, FakeTensor) and not torch.compiler.is_compiling()
