"""GQA decode attention over a static KV cache with per-sequence lengths and a sigmoid output gate.

Backends: reference (the model's eager attention arithmetic over the cache), torch
(`torch_impl/decode_attention.py`), triton (`kernels/decode_attention.py`). The caches are mutated
(the new token's key/value written at len - 1) when k_new / v_new are given.
"""
from __future__ import annotations

import torch

from .. import reference
from ..torch_impl import decode_attention as torch_decode_attention
from ._registry import define
from ._validate import check_same_device, check_static_cache, check_tensor


def _fake(q, **_):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@define("(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_lens, Tensor? gate, float? scale, "
        "Tensor? k_new, Tensor? v_new, Tensor? mask) -> Tensor", fake=_fake)
def decode_attention(q, k_cache, v_cache, cache_lens, gate=None, *, scale=None, k_new=None, v_new=None, mask=None):
    """One decode token of full attention, [B, Hq, D] out.

    q [B, Hq, D] (after q-norm and rotary); k_cache, v_cache [B, Hkv, Lmax, D] (a static cache;
    Hq a multiple of Hkv, query head i reads kv head i // (Hq / Hkv)); cache_lens [B] int32 on
    q's device: the valid positions of each sequence INCLUDING this token (1 <= len <= Lmax; not
    checked on the host, that would be a sync). k_new, v_new [B, Hkv, D] (both or neither): this
    token's key/value, written into the caches at position len - 1 before attending. gate
    [B, Hq, D]: the output is multiplied by sigmoid(gate) (the Qwen3.5 output gate). scale defaults
    to D^-1/2. mask [B, Lmax] (q's dtype, optional): an additive mask added to the scaled scores as
    the eager layer adds its attention mask (0: attend, the dtype's min: padding) — the static decode
    step's prompt-padding mask; positions >= len are masked whatever it says. The eager path's
    roundings (scores, probabilities, output in q's dtype).
    """
    op = "decode_attention"
    check_tensor(op, "q", q, ndim=3)
    B, Hq, D = q.shape
    check_static_cache(op, k_cache, v_cache, cache_lens, B=B, D=D, dtypes=(q.dtype,))
    Hkv = k_cache.shape[1]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"{op}: q heads ({Hq}) must be a multiple of the cache's kv heads ({Hkv})")
    if gate is not None:
        check_tensor(op, "gate", gate, shape=(B, Hq, D), dtypes=(q.dtype,))
    if (k_new is None) != (v_new is None):
        raise ValueError(f"{op}: give both k_new and v_new or neither")
    if k_new is not None:
        check_tensor(op, "k_new", k_new, shape=(B, Hkv, D))
        check_tensor(op, "v_new", v_new, shape=(B, Hkv, D))
    if mask is not None:
        check_tensor(op, "mask", mask, shape=(B, k_cache.shape[2]), dtypes=(q.dtype,))
    check_same_device(op, q=q, k_cache=k_cache, v_cache=v_cache, cache_lens=cache_lens, gate=gate, k_new=k_new,
                      v_new=v_new, mask=mask)


decode_attention.register("reference")(reference.decode_attention)
decode_attention.register("torch")(torch_decode_attention.decode_attention)


@decode_attention.register("triton")
def _decode_attention_triton(**kw):
    from ..kernels import decode_attention as kernel  # lazily: importing interns2_fast never needs Triton

    return kernel.decode_attention(**kw)
