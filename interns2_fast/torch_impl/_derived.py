"""Tensors derived from a weight (-exp(A_log), 1 + w), kept per weight tensor between calls.

The torch paths would otherwise form them on every call: two ops each, and on an NPU every op is a
launch. A kept value is used again only while the weight is the same object with the same version
counter (in-place updates), the same storage address (`param.data = ...` keeps the object and the
counter) and the same device; otherwise it is computed again. Under autograd with a weight that
requires grad it is always computed (and differentiable).
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch

# (id(weight), fn) -> (weakref(weight), version, data_ptr, device, derived)
_KEPT: dict[tuple, tuple] = {}


def derived(weight: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn(weight), kept for `weight` (see the module docstring). `fn` must be a module-level function."""
    if weight.requires_grad and torch.is_grad_enabled():
        return fn(weight)
    key = (id(weight), fn)
    hit = _KEPT.get(key)
    if (hit is not None and hit[0]() is weight and hit[1] == weight._version and hit[2] == weight.data_ptr()
            and hit[3] == weight.device):
        return hit[4]
    value = fn(weight.detach())
    if len(_KEPT) > 4096:  # weights of models long gone
        for k in [k for k, v in _KEPT.items() if v[0]() is None]:
            del _KEPT[k]
    _KEPT[key] = (weakref.ref(weight), weight._version, weight.data_ptr(), weight.device, value)
    return value
