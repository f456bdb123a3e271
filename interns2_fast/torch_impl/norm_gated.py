"""Gated RMSNorm (norm before gate) in plain PyTorch, with the transformers rounding.

out = (weight * rmsnorm_fp32(x).to(x.dtype)) * silu(gate.float()), cast to x's dtype: the same
sequence of roundings as `Qwen3_5MoeRMSNormGated.forward`, in fewer ops (the statistics and
normalisation in one fused `F.rms_norm` over fp32 rows, the gate product in place).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_FUSED = hasattr(F, "rms_norm")


def rms_norm_gated(x, gate, weight, eps=1e-6):
    """See `interns2_fast.ops.rms_norm_gated`. Any width; any leading shape."""
    xf = x.to(torch.float32)
    if _FUSED:
        n = F.rms_norm(xf, (x.shape[-1],), eps=eps)
    else:  # pragma: no cover - torch < 2.4
        n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if n.dtype != x.dtype:
        n = n.to(x.dtype)
    y = weight * n  # rounded to the promoted dtype of weight and x, as transformers does
    g = F.silu(gate.to(torch.float32))  # a fresh fp32 tensor: safe to multiply in place
    g.mul_(y)
    return g if g.dtype == x.dtype else g.to(x.dtype)
