"""The full-attention decode prologue in one launch: per q head and per k head of each sequence

    n   = round(x_fp32 * rsqrt(mean(x_fp32^2) + eps) * (1 + w_fp32))          (q_norm / k_norm)
    out[i]     = round(round(n[i] * cos[i]) - round(n[i + R/2] * sin[i]))       i < R/2
    out[i]     = round(round(n[i] * cos[i]) + round(n[i - R/2] * sin[i]))       R/2 <= i < R
    out[i]     = n[i]                                                           i >= R
    k_cache[b, h, len_b - 1] = out_k;  v_cache[b, h, len_b - 1] = v             (when caches are given)

(`apply_rotary_pos_emb`'s roundings: each product and the sum in the input dtype.) q rows are the
first D of each head of q_proj's output (the gated layout keeps the gate in the second D: it is
not touched here, the attention reads it in place).

One kernel, `_attention_prologue_kernel`: vector-only, persistent grid, two task loops in the same
launch (B * Hq q rows, then B * Hkv k rows, which also copy v). A row is held as three masked
segments: the two rotary halves [BLOCK_H] and the pass-through tail [BLOCK_P] (any D, any even
R <= D, no power-of-two restriction). The write position is read on the device (no host sync).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast.device import device_guard, interpreting, persistent_grid

from . import LoweringConfig
from .rounding import round_to


@triton.jit
def _norm_rope_row(x_ptr, w_ptr, c_ptr, s_ptr, o_ptr, D, HALF, eps,
                   BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, EMULATE: tl.constexpr):
    ty = o_ptr.dtype.element_ty
    hs = tl.arange(0, BLOCK_H)
    ps = tl.arange(0, BLOCK_P)
    R = 2 * HALF
    m_h = hs < HALF
    m_p = ps < D - R
    x1 = tl.load(x_ptr + hs, mask=m_h, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + HALF + hs, mask=m_h, other=0.0).to(tl.float32)
    xp = tl.load(x_ptr + R + ps, mask=m_p, other=0.0).to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x1 * x1, 0) + tl.sum(x2 * x2, 0) + tl.sum(xp * xp, 0)) / D + eps)
    n1 = round_to(x1 * rstd * (1.0 + tl.load(w_ptr + hs, mask=m_h, other=0.0).to(tl.float32)), ty, EMULATE)
    n2 = round_to(x2 * rstd * (1.0 + tl.load(w_ptr + HALF + hs, mask=m_h, other=0.0).to(tl.float32)), ty, EMULATE)
    npass = round_to(xp * rstd * (1.0 + tl.load(w_ptr + R + ps, mask=m_p, other=0.0).to(tl.float32)), ty, EMULATE)
    c1 = tl.load(c_ptr + hs, mask=m_h, other=0.0).to(tl.float32)
    c2 = tl.load(c_ptr + HALF + hs, mask=m_h, other=0.0).to(tl.float32)
    s1 = tl.load(s_ptr + hs, mask=m_h, other=0.0).to(tl.float32)
    s2 = tl.load(s_ptr + HALF + hs, mask=m_h, other=0.0).to(tl.float32)
    o1 = round_to(round_to(n1 * c1, ty, EMULATE) - round_to(n2 * s1, ty, EMULATE), ty, EMULATE)
    o2 = round_to(round_to(n2 * c2, ty, EMULATE) + round_to(n1 * s2, ty, EMULATE), ty, EMULATE)
    tl.store(o_ptr + hs, o1.to(ty), mask=m_h)
    tl.store(o_ptr + HALF + hs, o2.to(ty), mask=m_h)
    tl.store(o_ptr + R + ps, npass.to(ty), mask=m_p)
    return o1, o2, npass


@triton.jit
def _attention_prologue_kernel(
    q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, kc_ptr, vc_ptr, lens_ptr,
    Hq, Hkv, D, HALF, nq, nk,
    sqb, sqh, skb, skh, svb, svh, scb, ssb, sqob, sqoh, skob, skoh, skcb, skch, skcl, svcb, svch, svcl, eps,
    BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, HAS_CACHE: tl.constexpr, EMULATE: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    for task in range(pid, nq, nprog):
        b = tl.cast(task // Hq, tl.int64)
        h = tl.cast(task % Hq, tl.int64)
        _norm_rope_row(q_ptr + b * sqb + h * sqh, qw_ptr, cos_ptr + b * scb, sin_ptr + b * ssb,
                       qo_ptr + b * sqob + h * sqoh, D, HALF, eps, BLOCK_H, BLOCK_P, EMULATE)
    for task in range(pid, nk, nprog):
        b = tl.cast(task // Hkv, tl.int64)
        h = tl.cast(task % Hkv, tl.int64)
        o1, o2, npass = _norm_rope_row(k_ptr + b * skb + h * skh, kw_ptr, cos_ptr + b * scb, sin_ptr + b * ssb,
                                       ko_ptr + b * skob + h * skoh, D, HALF, eps, BLOCK_H, BLOCK_P, EMULATE)
        if HAS_CACHE:
            R = 2 * HALF
            hs = tl.arange(0, BLOCK_H)
            ps = tl.arange(0, BLOCK_P)
            m_h = hs < HALF
            m_p = ps < D - R
            last = tl.cast(tl.load(lens_ptr + b) - 1, tl.int64)
            kc = kc_ptr + b * skcb + h * skch + last * skcl
            c_ty = kc_ptr.dtype.element_ty
            tl.store(kc + hs, o1.to(c_ty), mask=m_h)
            tl.store(kc + HALF + hs, o2.to(c_ty), mask=m_h)
            tl.store(kc + R + ps, npass.to(c_ty), mask=m_p)
            vrow = v_ptr + b * svb + h * svh
            vc = vc_ptr + b * svcb + h * svch + last * svcl
            cv_ty = vc_ptr.dtype.element_ty
            tl.store(vc + hs, tl.load(vrow + hs, mask=m_h, other=0.0).to(cv_ty), mask=m_h)
            tl.store(vc + HALF + hs, tl.load(vrow + HALF + hs, mask=m_h, other=0.0).to(cv_ty), mask=m_h)
            tl.store(vc + R + ps, tl.load(vrow + R + ps, mask=m_p, other=0.0).to(cv_ty), mask=m_p)


def _blocks(D, R):
    return max(16, triton.next_power_of_2(max(R // 2, 1))), max(16, triton.next_power_of_2(max(D - R, 1)))


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def attention_prologue(q, k, v, q_weight, k_weight, cos, sin, eps=1e-6, *, k_cache=None, v_cache=None,
                       cache_lens=None):
    """See `interns2_fast.ops.attention_prologue`: q [B, Hq, W >= D], k, v [B, Hkv, D], cos / sin [B, R];
    returns (q [B, Hq, D], k [B, Hkv, D]) contiguous in q's dtype; caches written in place."""
    B, Hq = q.shape[:2]
    Hkv = k.shape[1]
    D = q_weight.shape[0]
    R = cos.shape[-1]
    if k_cache is not None and (k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1):
        raise ValueError("attention_prologue[triton]: k_cache / v_cache need a stride-1 last axis")
    q, k, v, cos, sin = (_last_dim_contiguous(t) for t in (q, k, v, cos, sin))
    qw, kw = q_weight.contiguous(), k_weight.contiguous()
    qo = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    ko = torch.empty(B, Hkv, D, dtype=q.dtype, device=q.device)
    nq, nk = B * Hq, B * Hkv
    if nq == 0 or D == 0:
        return qo, ko
    has_cache = k_cache is not None
    kc, vc = (k_cache, v_cache) if has_cache else (ko, ko)
    lens = cache_lens if has_cache else torch.ones(1, dtype=torch.int32, device=q.device)
    if lens.dtype != torch.int32:
        lens = lens.to(torch.int32)
    skc = (kc.stride(0), kc.stride(1), kc.stride(2)) if has_cache else (0, 0, 0)
    svc = (vc.stride(0), vc.stride(1), vc.stride(2)) if has_cache else (0, 0, 0)
    BLOCK_H, BLOCK_P = _blocks(D, R)
    grid = (persistent_grid(q.device, nq, cube=False),)
    with device_guard(q):
        _attention_prologue_kernel[grid](
            q, k, v, qw, kw, cos, sin, qo, ko, kc, vc, lens,
            Hq, Hkv, D, R // 2, nq, nk,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0),
            sin.stride(0), qo.stride(0), qo.stride(1), ko.stride(0), ko.stride(1), *skc, *svc, float(eps),
            BLOCK_H=BLOCK_H, BLOCK_P=BLOCK_P, HAS_CACHE=has_cache, EMULATE=interpreting(),
        )
    return qo, ko


def _config(name, dtype, D, R, has_cache):
    ty = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    sig = {n: f"*{ty}" for n in ("q_ptr", "k_ptr", "v_ptr", "qw_ptr", "kw_ptr", "cos_ptr", "sin_ptr", "qo_ptr",
                                 "ko_ptr", "kc_ptr", "vc_ptr")}
    sig["lens_ptr"] = "*i32"
    sig.update({n: "i32" for n in ("Hq", "Hkv", "D", "HALF", "nq", "nk", "sqb", "sqh", "skb", "skh", "svb", "svh",
                                   "scb", "ssb", "sqob", "sqoh", "skob", "skoh", "skcb", "skch", "skcl", "svcb",
                                   "svch", "svcl")})
    sig["eps"] = "fp32"
    BLOCK_H, BLOCK_P = _blocks(D, R)
    return LoweringConfig(f"attention_prologue/{name}", _attention_prologue_kernel, sig,
                          {"BLOCK_H": BLOCK_H, "BLOCK_P": BLOCK_P, "HAS_CACHE": has_cache, "EMULATE": False})


LOWERING_CONFIGS = [
    # Intern-S2 / Qwen3.5-35B-A3B and Qwen3-Next full attention: head_dim 256, rotary 64 (0.25), bf16,
    # writing the static cache; and returning k/v only (a non-static cache)
    _config("d256_r64_bf16_write", torch.bfloat16, 256, 64, True),
    _config("d256_r64_bf16", torch.bfloat16, 256, 64, False),
    # head_dim 128, rotary 64
    _config("d128_r64_bf16_write", torch.bfloat16, 128, 64, True),
]
