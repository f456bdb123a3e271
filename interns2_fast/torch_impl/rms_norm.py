"""Residual add + RMSNorm with (1 + w) scaling in plain PyTorch, with the transformers rounding.

    s   = residual + x                       # in the tensors' dtype (the decoder layer's add)
    out = (rmsnorm_fp32(s) * (1 + w_fp32)).to(s.dtype)

the same roundings as the decoder layer followed by `Qwen3_5MoeRMSNorm.forward`, as one
`torch.rms_norm` call with the fp32 (1 + w) as its weight. (1 + w) is kept per weight tensor
(`_derived.derived`: recomputed when the weight changes): per call that is two ops fewer than
forming it again (on an NPU every op is a launch).
"""
from __future__ import annotations

import torch

from ._derived import derived


def _one_plus_w(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.float32) + 1.0


def add_rms_norm(x, residual, weight, eps=1e-6):
    """See `interns2_fast.ops.add_rms_norm`. Any width; any leading shape.

    The transformers formula op by op (x.pow(2).mean, + eps, rsqrt, x * rstd, * (1 + w), cast), with
    the statistics reduced in place and the last product written straight into an output of s's dtype
    (`out=`: computed in fp32, rounded once on the write, as `.to(dtype)` after it would): 8 ops on
    bf16 with the residual add, where `torch.rms_norm` decomposes into more on backends without a
    fused kernel.
    """
    s = x if residual is None else residual + x
    if s.dtype == torch.float32:
        # fp32: torch.rms_norm with (1 + w) as its weight is the same arithmetic (mean of squares,
        # + eps, rsqrt, two products in fp32; bit-identical, tests/ops/test_rms_norm.py), run as one
        # ATen call: on the CPU its composite runs in C++, not op by op from Python
        return torch.rms_norm(s, (s.shape[-1],), derived(weight, _one_plus_w), eps), s
    sf = s.to(torch.float32)
    rstd = sf.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
    n = sf * rstd
    w1 = derived(weight, _one_plus_w)
    grad = torch.is_grad_enabled() and (n.requires_grad or w1.requires_grad)
    if s.dtype != torch.float32 and not grad:  # out= takes no autograd
        return torch.mul(n, w1, out=torch.empty_like(s, memory_format=torch.contiguous_format)), s
    out = n * w1 if grad else n.mul_(w1)
    return (out if out.dtype == s.dtype else out.to(s.dtype)), s
