"""Gated RMSNorm (norm before gate) in plain PyTorch, with the transformers rounding.

out = (weight * rmsnorm_fp32(x).to(x.dtype)) * silu(gate.float()), cast to x's dtype: the same
sequence of roundings as `Qwen3_5MoeRMSNormGated.forward` (the same fp32 statistics: x*x, then
the mean over the row), with fewer full-size temporaries: the weight and gate products run in
place on fresh tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_gated(x, gate, weight, eps=1e-6):
    """See `interns2_fast.ops.rms_norm_gated`. Any width; any leading shape.

    Where a cast to x's dtype follows a product, the product is written straight into a tensor of
    that dtype (`out=`: computed in fp32, rounded once on the write — the same value as the product
    then `.to()`), one op fewer each; not under autograd (out= takes none)."""
    xf = x.to(torch.float32)
    rstd = torch.mul(xf, xf).mean(-1, keepdim=True).add_(eps).rsqrt_()
    grad = torch.is_grad_enabled() and (x.requires_grad or gate.requires_grad or weight.requires_grad)
    low = x.dtype != torch.float32 and not grad
    if low:
        n = torch.mul(xf, rstd, out=torch.empty_like(x, memory_format=torch.contiguous_format))
    else:
        n = xf * rstd  # fresh
        if x.dtype != torch.float32:
            n = n.to(x.dtype)
    if torch.promote_types(weight.dtype, n.dtype) == n.dtype:
        y = n * weight if grad else n.mul_(weight)  # rounded to x's dtype, as `weight * n` is
    else:
        y = weight * n
    g = F.silu(gate.to(torch.float32))  # a fresh fp32 tensor: safe to multiply in place
    if low and torch.promote_types(g.dtype, y.dtype) == torch.float32:
        return torch.mul(g, y, out=torch.empty_like(x, memory_format=torch.contiguous_format))
    g = g * y if grad else g.mul_(y)
    return g if g.dtype == x.dtype else g.to(x.dtype)
