"""Gated RMSNorm (norm before gate), as the GatedDeltaNet output norm computes it."""
from __future__ import annotations

import torch

from .. import reference
from ..torch_impl import norm_gated as torch_norm_gated
from ._dispatch import register, resolve
from . import _empty
from ._validate import check_positive_dims, check_same_device, check_tensor


def rms_norm_gated(
    x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, backend: str = "auto"
) -> torch.Tensor:
    """weight * rmsnorm_fp32(x).to(x.dtype) * silu(gate_fp32), returned in x's dtype.

    x, gate [..., N]; weight [N]. Statistics in fp32; the normalised value is rounded to x's dtype
    before the weight multiply, exactly as transformers does.
    """
    op = "rms_norm_gated"
    check_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension")
    N = x.shape[-1]
    check_tensor(op, "gate", gate, shape=tuple(x.shape))
    check_tensor(op, "weight", weight, ndim=1, shape=(N,))
    check_positive_dims(op, N=N)
    check_same_device(op, x=x, gate=gate, weight=weight)
    if x.numel() == 0:
        return _empty.like(x)
    _, impl = resolve(op, backend, x.device)
    return impl(x, gate, weight, eps)


register("rms_norm_gated", "reference")(reference.rms_norm_gated)
register("rms_norm_gated", "torch")(torch_norm_gated.rms_norm_gated)


@register("rms_norm_gated", "triton")
def _rms_norm_gated_triton(x, gate, weight, eps=1e-6):
    from ..kernels import norm_gated as kernel  # lazily: importing interns2_fast never needs Triton

    return kernel.rms_norm_gated(x, gate, weight, eps)
