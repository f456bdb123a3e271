"""Residual add + RMSNorm with (1 + w) scaling: the decoder layer's `residual + h` and its norm.

Backends: reference (the decoder's add, then the installed `Qwen3_5MoeRMSNorm`), torch
(`torch_impl/rms_norm.py`), triton (`kernels/rms_norm.py`, any width, masked tails).
"""
from __future__ import annotations

import torch

from .. import reference
from ..torch_impl import rms_norm as torch_rms_norm
from ._registry import define
from ._validate import check_same_device, check_tensor


def _fake(x, residual, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        x, memory_format=torch.contiguous_format)


@define("(Tensor x, Tensor? residual, Tensor weight, float eps) -> (Tensor, Tensor)", fake=_fake)
def add_rms_norm(x, residual, weight, eps=1e-6):
    """(out, new_residual): new_residual = residual + x (in the tensors' dtype; a copy of x when
    residual is None), out = (rmsnorm_fp32(new_residual) * (1 + weight_fp32)).to(new_residual.dtype).

    x, residual [..., N] of one shape; weight [N]. Exactly the decoder layer's add followed by
    `Qwen3_5MoeRMSNorm` (statistics and the (1 + w) product in fp32, one rounding at the end).
    """
    op = "add_rms_norm"
    check_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension")
    N = x.shape[-1]
    if residual is not None:
        check_tensor(op, "residual", residual, shape=tuple(x.shape))
    check_tensor(op, "weight", weight, ndim=1, shape=(N,))
    check_same_device(op, x=x, residual=residual, weight=weight)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"{op}: eps must be a non-negative number, got {eps!r}")


add_rms_norm.register("reference")(reference.add_rms_norm)
add_rms_norm.register("torch")(torch_rms_norm.add_rms_norm)


@add_rms_norm.register("triton")
def _add_rms_norm_triton(**kw):
    from ..kernels import rms_norm as kernel  # lazily: importing interns2_fast never needs Triton

    return kernel.add_rms_norm(**kw)
