"""GQA decode attention over a static KV cache with lengths and a sigmoid output gate:

    k_cache[b, :, len_b - 1] = k_new[b]   (and v; when given)
    s   = round(round(q . k_j) * scale)  for j < len_b        (q's dtype, as the eager path rounds)
    p   = round(softmax_fp32(s))                                (normalised, then rounded)
    out = round(round(p @ v) * round(sigmoid(gate)))
    (with an additive mask [B, Lmax]: s = round(s + mask[b, j]) before the softmax, as the eager path adds it)

One kernel, `_decode_attention_kernel`: a persistent grid over the B * Hkv (sequence, kv head)
tasks; a task holds the G = Hq / Hkv query heads of its kv head as one [BLOCK_G, BLOCK_D] tile
and walks only the first len_b positions of the cache (the length is read on the device, no host
sync) in BLOCK_L blocks, twice: pass 1 the running max and sum of exp over the scores, pass 2 the
normalised probabilities (rounded as the eager softmax output is) times V. Reading K twice keeps
the eager rounding of the probabilities exactly; decode attention is bandwidth-bound on K and V.
A new k/v is written to the cache by the same task and used from registers at position len - 1
(no read of what the program wrote). Dots run on fp32 operands (Triton's interpreter computes
bf16 dots wrongly; fp32 cube is exact for bf16 inputs). Masked tails: any G, D, Lmax.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast.device import device_guard, interpreting, persistent_grid

from . import LoweringConfig
from .rounding import round_to

BLOCK_L = 32


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, lens_ptr, g_ptr, kn_ptr, vn_ptr, mask_ptr, out_ptr,
    Hkv, G, D, num_tasks,
    sqb, sqh, skb, skh, skl, svb, svh, svl, sgb, sgh, sknb, sknh, svnb, svnh, smb, sob, soh, scale,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_GATE: tl.constexpr, HAS_NEW: tl.constexpr, HAS_MASK: tl.constexpr, EMULATE: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    ty = q_ptr.dtype.element_ty
    gs = tl.arange(0, BLOCK_G)
    ds = tl.arange(0, BLOCK_D)
    ls = tl.arange(0, BLOCK_L)
    m_g = gs < G
    m_d = ds < D
    m_gd = m_g[:, None] & m_d[None, :]
    for task in range(pid, num_tasks, nprog):
        b = task // Hkv
        h = task % Hkv
        b64 = tl.cast(b, tl.int64)
        h64 = tl.cast(h, tl.int64)
        n = tl.load(lens_ptr + b)
        heads = tl.cast(h * G + gs, tl.int64)
        q = tl.load(q_ptr + b64 * sqb + heads[:, None] * sqh + ds[None, :], mask=m_gd, other=0.0).to(tl.float32)
        k_base = k_ptr + b64 * skb + h64 * skh
        v_base = v_ptr + b64 * svb + h64 * svh
        if HAS_NEW:
            kn = tl.load(kn_ptr + b64 * sknb + h64 * sknh + ds, mask=m_d, other=0.0)
            vn = tl.load(vn_ptr + b64 * svnb + h64 * svnh + ds, mask=m_d, other=0.0)
            last = tl.cast(n - 1, tl.int64)
            tl.store(k_base + last * skl + ds, kn.to(k_ptr.dtype.element_ty), mask=m_d)
            tl.store(v_base + last * svl + ds, vn.to(v_ptr.dtype.element_ty), mask=m_d)
        # pass 1: running max and sum of exp of the rounded scores
        m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
        for l0 in range(0, n, BLOCK_L):
            pos = l0 + ls
            m_l = pos < n
            pos64 = tl.cast(pos, tl.int64)
            k = tl.load(k_base + pos64[:, None] * skl + ds[None, :], mask=m_l[:, None] & m_d[None, :],
                        other=0.0).to(tl.float32)
            if HAS_NEW:
                k = tl.where((pos == n - 1)[:, None], kn.to(tl.float32)[None, :], k)
            s = round_to(tl.dot(q, tl.trans(k)), ty, EMULATE)
            s = round_to(s * scale, ty, EMULATE)
            if HAS_MASK:
                am = tl.load(mask_ptr + b64 * smb + pos64, mask=m_l, other=0.0).to(tl.float32)
                s = round_to(s + am[None, :], ty, EMULATE)
            s = tl.where(m_l[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
            m_i = m_new
        # pass 2: normalised probabilities (rounded like the eager softmax output) times V
        acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
        inv_l = 1.0 / l_i
        for l0 in range(0, n, BLOCK_L):
            pos = l0 + ls
            m_l = pos < n
            pos64 = tl.cast(pos, tl.int64)
            m_ld = m_l[:, None] & m_d[None, :]
            k = tl.load(k_base + pos64[:, None] * skl + ds[None, :], mask=m_ld, other=0.0).to(tl.float32)
            v = tl.load(v_base + pos64[:, None] * svl + ds[None, :], mask=m_ld, other=0.0).to(tl.float32)
            if HAS_NEW:
                is_new = (pos == n - 1)[:, None]
                k = tl.where(is_new, kn.to(tl.float32)[None, :], k)
                v = tl.where(is_new, vn.to(tl.float32)[None, :], v)
            s = round_to(tl.dot(q, tl.trans(k)), ty, EMULATE)
            s = round_to(s * scale, ty, EMULATE)
            if HAS_MASK:
                am = tl.load(mask_ptr + b64 * smb + pos64, mask=m_l, other=0.0).to(tl.float32)
                s = round_to(s + am[None, :], ty, EMULATE)
            p = tl.exp(s - m_i[:, None]) * inv_l[:, None]
            p = tl.where(m_l[None, :], round_to(p, ty, EMULATE), 0.0)
            acc += tl.dot(p, v)
        out = round_to(acc, ty, EMULATE)
        if HAS_GATE:
            g = tl.load(g_ptr + b64 * sgb + heads[:, None] * sgh + ds[None, :], mask=m_gd, other=0.0).to(tl.float32)
            out = round_to(out * round_to(1.0 / (1.0 + tl.exp(-g)), ty, EMULATE), ty, EMULATE)
        tl.store(out_ptr + b64 * sob + heads[:, None] * soh + ds[None, :], out.to(ty), mask=m_gd)


def _last_dim_contiguous(t):
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def decode_attention(q, k_cache, v_cache, cache_lens, gate=None, *, scale=None, k_new=None, v_new=None, mask=None):
    """See `interns2_fast.ops.decode_attention`. q, gate [B, Hq, D]; caches [B, Hkv, Lmax, D] with a
    stride-1 last axis (written in place when k_new / v_new are given); cache_lens [B] int32; mask
    [B, Lmax] additive (or None)."""
    B, Hq, D = q.shape
    Hkv = k_cache.shape[1]
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("decode_attention[triton]: k_cache / v_cache need a stride-1 last axis")
    q, gate, k_new, v_new, mask = (_last_dim_contiguous(t) for t in (q, gate, k_new, v_new, mask))
    lens = cache_lens if cache_lens.dtype == torch.int32 else cache_lens.to(torch.int32)
    out = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    G = Hq // Hkv
    num_tasks = B * Hkv
    if num_tasks == 0 or D == 0:
        return out
    g, kn, vn = (t if t is not None else q for t in (gate, k_new, v_new))
    grid = (persistent_grid(q.device, num_tasks, cube=True),)
    with device_guard(q):
        _decode_attention_kernel[grid](
            q, k_cache, v_cache, lens, g, kn, vn, q if mask is None else mask, out,
            Hkv, G, D, num_tasks,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), g.stride(0), g.stride(1),
            kn.stride(0), kn.stride(1), vn.stride(0), vn.stride(1), 0 if mask is None else mask.stride(0),
            out.stride(0), out.stride(1),
            float(D**-0.5 if scale is None else scale),
            BLOCK_G=max(16, triton.next_power_of_2(G)), BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_L=BLOCK_L,
            HAS_GATE=gate is not None, HAS_NEW=k_new is not None, HAS_MASK=mask is not None,
            EMULATE=interpreting(),
        )
    return out


def _config(name, dtype, G, D, has_gate, has_new, has_mask=False):
    ty = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    sig = {"q_ptr": f"*{ty}", "k_ptr": f"*{ty}", "v_ptr": f"*{ty}", "lens_ptr": "*i32", "g_ptr": f"*{ty}",
           "kn_ptr": f"*{ty}", "vn_ptr": f"*{ty}", "mask_ptr": f"*{ty}", "out_ptr": f"*{ty}"}
    sig.update({k: "i32" for k in ("Hkv", "G", "D", "num_tasks", "sqb", "sqh", "skb", "skh", "skl", "svb", "svh",
                                   "svl", "sgb", "sgh", "sknb", "sknh", "svnb", "svnh", "smb", "sob", "soh")})
    sig["scale"] = "fp32"
    return LoweringConfig(
        f"decode_attention/{name}", _decode_attention_kernel, sig,
        {"BLOCK_G": max(16, triton.next_power_of_2(G)), "BLOCK_D": max(16, triton.next_power_of_2(D)),
         "BLOCK_L": BLOCK_L, "HAS_GATE": has_gate, "HAS_NEW": has_new, "HAS_MASK": has_mask, "EMULATE": False},
    )


LOWERING_CONFIGS = [
    # Intern-S2 / Qwen3.5-35B-A3B full attention: 16 q / 2 kv heads (G = 8), head_dim 256, bf16, gated
    _config("gqa8_d256_bf16_gate_write", torch.bfloat16, 8, 256, True, True),
    _config("gqa8_d256_bf16_gate", torch.bfloat16, 8, 256, True, False),
    # the patched attention layer's decode step: the cache written by attention_prologue, the static
    # step's prompt-padding mask
    _config("gqa8_d256_bf16_gate_mask", torch.bfloat16, 8, 256, True, False, True),
]
