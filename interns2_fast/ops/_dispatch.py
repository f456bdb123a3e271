"""The backend registry behind every op in `interns2_fast.ops`.

Each op module registers its implementations under one of BACKENDS; `resolve` picks one for a
call. The Triton backends import their kernels lazily, so importing interns2_fast never needs
Triton.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from .. import device as _device

logger = logging.getLogger("interns2_fast")

#: "npu_native" wraps torch_npu's fused Ascend C operators where they exist. It cannot run on any
#: machine this project has, so `auto` never picks it and tests never select it.
#: "pto" runs the PTO tile-library kernels of csrc/ (CPU simulator / unverified NPU build; see
#: interns2_fast.pto); `auto` never picks it either, until it has been measured on an NPU.
BACKENDS = ("triton", "torch", "reference", "npu_native", "pto")
_REGISTRY: dict[str, dict[str, Callable]] = {}


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: `fn` implements `op` for `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def decorate(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = fn
        return fn

    return decorate


def registered(op: str) -> tuple[str, ...]:
    return tuple(b for b in BACKENDS if b in _REGISTRY.get(op, {}))


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """Return (backend name, implementation) of `op` for tensors on `device`."""
    impls = _REGISTRY.get(op)
    if impls is None:
        raise KeyError(f"interns2_fast: no op named {op!r}")
    if backend == "auto":
        for name in _device.auto_backends(device):
            if name in impls:
                logger.debug("%s: backend auto -> %s on %s", op, name, device)
                return name, impls[name]
        raise RuntimeError(f"{op}: no backend available for device {device}")
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in impls:
        raise NotImplementedError(f"{op}: backend {backend!r} is not implemented (have {registered(op)})")
    if backend == "triton" and not _device.triton_usable(device):
        raise RuntimeError(
            f"{op}: backend 'triton' cannot run on {device} "
            f"(triton flavour {_device.triton_flavour()!r}, interpreter {'on' if _device.interpreting() else 'off'}); "
            "set TRITON_INTERPRET=1 for CPU tensors, or use backend='torch'"
        )
    return backend, impls[backend]
