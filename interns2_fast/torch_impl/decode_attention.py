"""GQA decode attention over a static KV cache in plain PyTorch, with the eager path's rounding.

One decode token per sequence: q [B, Hq, D] against k_cache / v_cache [B, Hkv, Lmax, D] of which
the first cache_lens[b] positions are valid (a device tensor: no host read). The Hq / Hkv query
heads of a kv head are one [G, D] matrix against that head's cache (no repeat_kv copy); scores
and probabilities are rounded to the input dtype where `eager_attention_forward` rounds them
(scores after the product and after the scale, probabilities after the fp32 softmax), positions
past the length get the dtype's min as the eager mask does. The optional new k/v are written at
position len - 1 first; the sigmoid output gate is applied in the input dtype. An additive
mask [B, Lmax] (0 / the dtype's min) is added to the scaled scores, as the eager path adds its mask.
"""
from __future__ import annotations

import torch


def write_at_len(k_cache, v_cache, cache_lens, k, v) -> None:
    """k, v [B, Hkv, D] into the static caches [B, Hkv, Lmax, D] at position cache_lens - 1 (in place)."""
    B, Hkv, _, D = k_cache.shape
    pos = (cache_lens.to(torch.long) - 1).view(B, 1, 1, 1).expand(B, Hkv, 1, D)
    k_cache.scatter_(2, pos, k.to(k_cache.dtype).reshape(B, Hkv, 1, D))
    v_cache.scatter_(2, pos, v.to(v_cache.dtype).reshape(B, Hkv, 1, D))


def decode_attention(q, k_cache, v_cache, cache_lens, gate=None, *, scale=None, k_new=None, v_new=None, mask=None):
    """See `interns2_fast.ops.decode_attention`."""
    B, Hq, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    lens = cache_lens.to(torch.long)
    if k_new is not None:
        write_at_len(k_cache, v_cache, lens, k_new, v_new)
    scale = D**-0.5 if scale is None else scale
    qg = q.view(B, Hkv, G, D)
    scores = torch.matmul(qg, k_cache.transpose(2, 3)).mul_(scale)  # [B, Hkv, G, L], in q's dtype
    if mask is not None:  # the additive (prompt-padding) mask, added in q's dtype as the eager path adds it
        scores.add_(mask.to(scores.dtype).view(B, 1, 1, L))
    pad = torch.arange(L, device=q.device).view(1, 1, 1, L) >= lens.view(B, 1, 1, 1)
    scores.masked_fill_(pad, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, v_cache).view(B, Hq, D)
    if gate is not None:
        out = out * torch.sigmoid(gate)
    return out
