"""Gated DeltaNet gating in PyTorch: g = -exp(A_log) * softplus(a + dt_bias) (fp32), beta = sigmoid(b).

Same arithmetic and rounding as the inline gating of the transformers layer (beta stays in b's dtype,
g is fp32). `head_major=True` returns g and beta as [B, Hv, T] contiguous (stride 1 along T), the
layout the chunked kernels read gates in.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F


_NEG_EXP: dict[int, tuple] = {}  # id(A_log) -> (weakref(A_log), version, data_ptr, device, -exp(A_log) fp32)


def _neg_exp(A_log: torch.Tensor) -> torch.Tensor:
    """-exp(A_log.float()), kept per parameter tensor and recomputed when it changes (its version
    counter, or its storage: `param.data = ...` keeps the object and the counter) or is gone: two ops
    fewer per call (on an NPU every op is a launch)."""
    if A_log.requires_grad and torch.is_grad_enabled():
        return -A_log.float().exp()
    hit = _NEG_EXP.get(id(A_log))
    if (hit is not None and hit[0]() is A_log and hit[1] == A_log._version and hit[2] == A_log.data_ptr()
            and hit[3] == A_log.device):
        return hit[4]
    val = -A_log.detach().float().exp()
    if len(_NEG_EXP) > 4096:  # parameters of models long gone
        for k in [k for k, v in _NEG_EXP.items() if v[0]() is None]:
            del _NEG_EXP[k]
    _NEG_EXP[id(A_log)] = (weakref.ref(A_log), A_log._version, A_log.data_ptr(), A_log.device, val)
    return val


def gdn_gating(
    A_log: torch.Tensor, a: torch.Tensor, dt_bias: torch.Tensor, b: torch.Tensor, *, head_major: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_log, dt_bias [Hv]; a, b [..., Hv] (exactly [B, T, Hv] when head_major)."""
    # softplus with torch's threshold 20 (x for x > 20, log1p(exp(x)) otherwise), in fp32.
    g = F.softplus(a.float() + dt_bias).mul_(_neg_exp(A_log))
    beta = b.sigmoid()
    if head_major:
        g = g.transpose(1, 2).contiguous()
        beta = beta.transpose(1, 2).contiguous()
    return g, beta
