"""Gated RMSNorm (norm before gate), as the GatedDeltaNet output norm computes it.

Backends: reference (the installed transformers module's arithmetic), torch
(`torch_impl/norm_gated.py`), triton (`kernels/norm_gated.py`, rows up to MAX_WIDTH wide).
"""
from __future__ import annotations

import torch

from .. import reference
from ..torch_impl import norm_gated as torch_norm_gated
from . import _empty
from ._registry import OK, define
from ._validate import check_positive_dims, check_same_device, check_tensor


@define("(Tensor x, Tensor gate, Tensor weight, float eps) -> Tensor",
        fake=lambda x, **_: torch.empty_like(x, memory_format=torch.contiguous_format),
        empty=lambda x, **_: _empty.like(x) if x.numel() == 0 else None)
def rms_norm_gated(x, gate, weight, eps=1e-6):
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


def _triton_width(device, x, **_):
    from ..kernels.norm_gated import MAX_WIDTH

    N = x.shape[-1]
    return OK if N <= MAX_WIDTH else (False, f"row width N <= {MAX_WIDTH}, got {N}")


rms_norm_gated.register("reference")(reference.rms_norm_gated)
rms_norm_gated.register("torch")(torch_norm_gated.rms_norm_gated)


@rms_norm_gated.register("triton", supports=_triton_width)
def _rms_norm_gated_triton(**kw):
    from ..kernels import norm_gated as kernel  # lazily: importing interns2_fast never needs Triton

    return kernel.rms_norm_gated(**kw)


def _pto_norm(device, x, gate, weight, **_):
    from .. import pto

    why = pto.norm_problem(x, gate, weight)
    return OK if why is None else (False, why)


@rms_norm_gated.register("pto", supports=_pto_norm)
def _rms_norm_gated_pto(**kw):
    from .. import pto  # lazy: the csrc/ extension is optional (CPU simulator / unverified NPU build)

    return pto.rms_norm_gated(**kw)
