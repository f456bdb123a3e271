"""The full-attention decode prologue: q/k RMSNorm + partial rotary + the static-cache KV write, one op.

Backends: reference (the installed `Qwen3_5MoeRMSNorm` and `apply_rotary_pos_emb`), torch
(`torch_impl/attention_prologue.py`), triton (`kernels/attention_prologue.py`, one launch). The
caches are mutated (this token's rotated key and its value written at cache_lens - 1) when given.
"""
from __future__ import annotations

from .. import reference
from ..torch_impl import attention_prologue as torch_attention_prologue
from ._registry import define
from ._validate import check_same_device, check_static_cache, check_tensor


def _fake(q, k, q_weight, **_):
    D = q_weight.shape[0]
    return q.new_empty(*q.shape[:2], D), q.new_empty(*k.shape[:2], D)


@define("(Tensor q, Tensor k, Tensor v, Tensor q_weight, Tensor k_weight, Tensor cos, Tensor sin, float eps, "
        "Tensor(a!)? k_cache, Tensor(b!)? v_cache, Tensor? cache_lens) -> (Tensor, Tensor)", fake=_fake)
def attention_prologue(q, k, v, q_weight, k_weight, cos, sin, eps=1e-6, *, k_cache=None, v_cache=None,
                       cache_lens=None):
    """(q, k) of one decode token after the layer's q_norm / k_norm and partial rotary.

    q [B, Hq, W] with W >= D = q_weight.shape[0]: the first D of each head are the query (the gated
    q_proj layout [q | gate] per head is passed as it is; the gate is not read); k, v [B, Hkv, D];
    q_weight, k_weight [D] (the (1 + w) RMSNorm weights, eps theirs); cos, sin [B, R] (R even, R <= D:
    the rotary embedding of this token's text position, in q's dtype; the first R dims are rotated).
    k_cache, v_cache [B, Hkv, Lmax, D] with cache_lens [B] int32/int64 (the valid positions including
    this token, on the device; not checked on the host): the rotated k and v are written at
    cache_lens - 1. Returns q [B, Hq, D] and k [B, Hkv, D] in q's dtype.
    """
    op = "attention_prologue"
    check_tensor(op, "q", q, ndim=3)
    B, Hq, W = q.shape
    check_tensor(op, "q_weight", q_weight, ndim=1)
    D = q_weight.shape[0]
    if D == 0 or W < D:
        raise ValueError(f"{op}: q must hold at least head_dim = q_weight.shape[0] = {D} values per head, got {W}")
    check_tensor(op, "k", k, ndim=3, dtypes=(q.dtype,))
    Hkv = k.shape[1]
    if k.shape[0] != B or k.shape[2] != D:
        raise ValueError(f"{op}: k must have shape [{B}, Hkv, {D}], got {list(k.shape)}")
    check_tensor(op, "v", v, shape=(B, Hkv, D))
    check_tensor(op, "k_weight", k_weight, shape=(D,))
    check_tensor(op, "cos", cos, ndim=2, dtypes=(q.dtype,))
    R = cos.shape[1]
    if cos.shape[0] != B or R % 2 or R == 0 or R > D:
        raise ValueError(f"{op}: cos must have shape [{B}, R] with R even, 0 < R <= {D}, got {list(cos.shape)}")
    check_tensor(op, "sin", sin, shape=(B, R), dtypes=(q.dtype,))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"{op}: eps must be a non-negative number, got {eps!r}")
    given = [t is not None for t in (k_cache, v_cache, cache_lens)]
    if any(given) and not all(given):
        raise ValueError(f"{op}: give k_cache, v_cache and cache_lens together or none of them")
    if k_cache is not None:
        check_static_cache(op, k_cache, v_cache, cache_lens, B=B, D=D, Hkv=Hkv)
    check_same_device(op, q=q, k=k, v=v, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, k_cache=k_cache,
                      v_cache=v_cache, cache_lens=cache_lens)


attention_prologue.register("reference")(reference.attention_prologue)
attention_prologue.register("torch")(torch_attention_prologue.attention_prologue)


@attention_prologue.register("triton")
def _attention_prologue_triton(**kw):
    from ..kernels import attention_prologue as kernel  # lazily: importing interns2_fast never needs Triton

    return kernel.attention_prologue(**kw)
