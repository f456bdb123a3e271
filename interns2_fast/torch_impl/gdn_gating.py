"""Gated DeltaNet gating in PyTorch: g = -exp(A_log) * softplus(a + dt_bias) (fp32), beta = sigmoid(b).

Same arithmetic and rounding as the inline gating of the transformers layer (beta stays in b's dtype,
g is fp32). `head_major=True` returns g and beta as [B, Hv, T] contiguous (stride 1 along T), the
layout the chunked kernels read gates in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._derived import derived


def _neg_exp(A_log: torch.Tensor) -> torch.Tensor:
    return -A_log.float().exp()


def gdn_gating(
    A_log: torch.Tensor, a: torch.Tensor, dt_bias: torch.Tensor, b: torch.Tensor, *, head_major: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_log, dt_bias [Hv]; a, b [..., Hv] (exactly [B, T, Hv] when head_major)."""
    # softplus with torch's threshold 20 (x for x > 20, log1p(exp(x)) otherwise), in fp32.
    g = F.softplus(a.float() + dt_bias).mul_(derived(A_log, _neg_exp))  # -exp(A_log), kept per parameter
    beta = b.sigmoid()
    if head_major:
        g = g.transpose(1, 2).contiguous()
        beta = beta.transpose(1, 2).contiguous()
    return g, beta
