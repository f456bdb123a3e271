"""Residual add + RMSNorm with (1 + w) scaling in plain PyTorch, with the transformers rounding.

    s   = residual + x                       # in the tensors' dtype (the decoder layer's add)
    out = (rmsnorm_fp32(s) * (1 + w_fp32)).to(s.dtype)

the same roundings as the decoder layer followed by `Qwen3_5MoeRMSNorm.forward`; the
normalisation runs as one `torch.rms_norm` call (one fused op where PyTorch has one) and the
(1 + w) product in place on its fresh output.
"""
from __future__ import annotations

import torch


def add_rms_norm(x, residual, weight, eps=1e-6):
    """See `interns2_fast.ops.add_rms_norm`. Any width; any leading shape."""
    s = x if residual is None else residual + x
    sf = s.to(torch.float32)
    n = torch.rms_norm(sf, (s.shape[-1],), None, eps)
    if n is sf or n.data_ptr() == sf.data_ptr():  # never scale the caller's tensor in place
        n = n.clone()
    n.mul_(weight.to(torch.float32) + 1.0)
    return (n if n.dtype == s.dtype else n.to(s.dtype)), s
