"""The full-attention decode prologue in plain PyTorch: q/k RMSNorm ((1 + w), fp32 statistics, one
rounding) and partial rotary in the input dtype, the eager path's roundings (each product and the
sum rounded, as `apply_rotary_pos_emb` computes them), then the k/v write at len - 1.

q [B, Hq, W] (the first D of each head: the gated q_proj layout), k, v [B, Hkv, D], cos / sin [B, R].
"""
from __future__ import annotations

import torch

from .decode_attention import write_at_len


def _norm(x, w, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * (1.0 + w.float())).to(x.dtype)


def _rope_(x, cos, sin):
    """Rotate the first R dims of x [B, H, D] in place (x is a fresh tensor)."""
    R = cos.shape[-1]
    h = R // 2
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    xr = x[..., :R]
    rot = torch.cat((-xr[..., h:], xr[..., :h]), dim=-1)
    x[..., :R] = xr * c + rot * s
    return x


def attention_prologue(q, k, v, q_weight, k_weight, cos, sin, eps=1e-6, *, k_cache=None, v_cache=None,
                       cache_lens=None):
    """See `interns2_fast.ops.attention_prologue`."""
    D = q_weight.shape[0]
    qo = _rope_(_norm(q[..., :D], q_weight, eps), cos, sin)
    ko = _rope_(_norm(k, k_weight, eps), cos, sin)
    if k_cache is not None:
        write_at_len(k_cache, v_cache, cache_lens, ko, v)
    return qo, ko
