"""Recurrent (decode) gated delta rule: one launch per layer step for all sequences.

Per value head h (key head h // (Hv // Hk): grouped value attention read natively, q/k never
repeated) and per [K, BV] tile of the fp32 state:
    S <- exp(g_t) S;   S <- S + k_t (beta_t (v_t - S^T k_t))^T;   o_t = S^T (scale q_t)
for each token of the sequence, the state tile staying on chip between tokens. The step runs as
two reductions over the old state (S^T k, S^T q) and one fused update pass. Vector-only
(no tl.dot) on a persistent grid over the vector cores; tasks are (sequence, value head, V tile).
Options: q/k L2 norm in the kernel, packed sequences (cu_seqlens; offsets clamped into [0, T]),
initial state in, final state
out or written back in place, and the gating fused in (raw a, b, A_log, dt_bias instead of g, beta;
beta rounded to b's dtype, as the separate gating op returns it).

BV = 32 keeps the [128, 32] fp32 state tile and its temporaries inside the 192 KB Unified Buffer
(a [128, 128] tile does not fit, see BRIEF §6).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast import device as _device

from . import LoweringConfig
from .gdn_gating import softplus_fp32

#: V tile width: 32 lowers for Ascend910_9362 at K = V = 128 (128 does not fit the UB).
BLOCK_V = 32


@triton.jit
def gdn_recurrent_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, A_log_ptr, dt_bias_ptr,
    o_ptr, h0_ptr, ht_ptr, cu_ptr,
    T, Hk, Hv, K, V, scale,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_gb, stride_gt, stride_betab, stride_betat,
    num_tasks, num_v_blocks,
    BK: tl.constexpr, BV: tl.constexpr, GATING: tl.constexpr, USE_L2: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, VARLEN: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    group = Hv // Hk
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < K
    offs_kv = tl.arange(0, BV)
    for task in range(pid, num_tasks, nprog):
        n = task // (Hv * num_v_blocks)
        rem = task % (Hv * num_v_blocks)
        hv = rem // num_v_blocks
        iv = rem % num_v_blocks
        hk = hv // group
        offs_v = iv * BV + offs_kv
        mask_v = offs_v < V
        mask_h = mask_k[:, None] & mask_v[None, :]
        n64 = tl.cast(n, tl.int64)
        hv64 = tl.cast(hv, tl.int64)
        hk64 = tl.cast(hk, tl.int64)
        if VARLEN:
            # offsets clamped into [0, T] (and eos >= bos) before narrowing: a bad cu_seqlens on the
            # device (not validated there, that would be a sync) never makes an access out of bounds
            bos_raw = tl.minimum(tl.maximum(tl.load(cu_ptr + n64), 0), T)
            bos = bos_raw.to(tl.int32)
            eos = tl.minimum(tl.maximum(tl.load(cu_ptr + n64 + 1), bos_raw), T).to(tl.int32)
            bat = n64 * 0
            o_row = n64 * 0
        else:
            bos = 0
            eos = T
            bat = n64
            o_row = n64 * T
        state_off = (n64 * Hv + hv64) * K * V + offs_k[:, None] * V + offs_v[None, :]
        if HAS_H0:
            h = tl.load(h0_ptr + state_off, mask=mask_h, other=0.0).to(tl.float32)
        else:
            h = tl.zeros([BK, BV], dtype=tl.float32)
        if GATING:
            neg_A = -tl.exp(tl.load(A_log_ptr + hv64).to(tl.float32))
            dt_bias = tl.load(dt_bias_ptr + hv64).to(tl.float32)
        for t in range(bos, eos):
            t64 = tl.cast(t, tl.int64)
            q = tl.load(q_ptr + bat * stride_qb + t64 * stride_qt + hk64 * stride_qh + offs_k, mask=mask_k,
                        other=0.0).to(tl.float32)
            k = tl.load(k_ptr + bat * stride_kb + t64 * stride_kt + hk64 * stride_kh + offs_k, mask=mask_k,
                        other=0.0).to(tl.float32)
            v = tl.load(v_ptr + bat * stride_vb + t64 * stride_vt + hv64 * stride_vh + offs_v, mask=mask_v,
                        other=0.0).to(tl.float32)
            g_raw = tl.load(g_ptr + bat * stride_gb + t64 * stride_gt + hv64).to(tl.float32)
            b_raw = tl.load(beta_ptr + bat * stride_betab + t64 * stride_betat + hv64)
            if GATING:
                g = neg_A * softplus_fp32(g_raw + dt_bias)
                beta = tl.sigmoid(b_raw.to(tl.float32)).to(beta_ptr.dtype.element_ty).to(tl.float32)
            else:
                g = g_raw
                beta = b_raw.to(tl.float32)
            if USE_L2:
                q = q * tl.rsqrt(tl.sum(q * q, axis=0) + 1e-6)
                k = k * tl.rsqrt(tl.sum(k * k, axis=0) + 1e-6)
            q = q * scale
            # Both reductions read the state before the token; decay and rank-1 update are then
            # one pass: S_new = d S + k delta^T, o = S_new^T q = d (S^T q) + (q . k) delta.
            decay = tl.exp(g)
            k_s = tl.sum(h * k[:, None], axis=0)
            q_s = tl.sum(h * q[:, None], axis=0)
            delta = (v - decay * k_s) * beta
            o = decay * q_s + tl.sum(q * k, axis=0) * delta
            h = h * decay + k[:, None] * delta[None, :]
            tl.store(o_ptr + ((o_row + t64) * Hv + hv64) * V + offs_v, o.to(o_ptr.dtype.element_ty), mask=mask_v)
        if STORE_HT:
            tl.store(ht_ptr + state_off, h, mask=mask_h)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch(q, k, v, g, beta, A_log, dt_bias, *, gating, scale, initial_state, output_final_state,
            use_qk_l2norm_in_kernel, cu_seqlens, inplace_final_state):
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if scale is None:
        scale = K**-0.5
    q, k, v, g, beta = (_last_dim_contiguous(x) for x in (q, k, v, g, beta))
    inplace = bool(inplace_final_state and initial_state is not None)
    o = torch.empty(B, T, Hv, V, dtype=q.dtype, device=q.device)
    h0 = None
    if initial_state is not None:
        h0 = initial_state if (inplace or initial_state.is_contiguous()) else initial_state.contiguous()
    if inplace:
        ht = h0
    elif output_final_state or inplace_final_state:
        ht = torch.empty(N, Hv, K, V, dtype=torch.float32, device=q.device)
    else:
        ht = None
    num_v_blocks = triton.cdiv(V, BLOCK_V)
    num_tasks = N * Hv * num_v_blocks
    if num_tasks > 0:
        grid = (_device.persistent_grid(q.device, num_tasks, cube=False),)
        with _device.device_guard(q):
            gdn_recurrent_kernel[grid](
                q, k, v, g, beta, A_log if gating else g, dt_bias if gating else g,
                o, h0 if h0 is not None else o, ht if ht is not None else o,
                cu_seqlens if cu_seqlens is not None else o,
                T, Hk, Hv, K, V, float(scale),
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2), g.stride(0), g.stride(1), beta.stride(0), beta.stride(1),
                num_tasks, num_v_blocks,
                BK=triton.next_power_of_2(K), BV=BLOCK_V, GATING=gating, USE_L2=bool(use_qk_l2norm_in_kernel),
                HAS_H0=h0 is not None, STORE_HT=ht is not None, VARLEN=cu_seqlens is not None,
            )
    if inplace:
        return o, initial_state
    return o, (ht if (output_final_state or inplace_final_state) else None)


def fused_recurrent_gated_delta_rule(
    q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, cu_seqlens=None, inplace_final_state=False,
):
    """See interns2_fast.ops.fused_recurrent_gated_delta_rule (inputs validated there)."""
    return _launch(q, k, v, g, beta, None, None, gating=False, scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                   cu_seqlens=cu_seqlens, inplace_final_state=inplace_final_state)


def fused_recurrent_gated_delta_rule_with_gating(
    q, k, v, a, b, A_log, dt_bias, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, inplace_final_state=False, cu_seqlens=None,
):
    """The same step with the gating computed in the kernel from raw a, b [B,T,Hv], A_log, dt_bias [Hv]."""
    return _launch(q, k, v, a, b, A_log.contiguous(), dt_bias.contiguous(), gating=True, scale=scale,
                   initial_state=initial_state, output_final_state=output_final_state,
                   use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens,
                   inplace_final_state=inplace_final_state)


def _config(name, gating):
    sig = {
        "q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16",
        "g_ptr": "*bf16" if gating else "*fp32", "beta_ptr": "*bf16",
        "A_log_ptr": "*bf16" if gating else "*fp32", "dt_bias_ptr": "*bf16" if gating else "*fp32",
        "o_ptr": "*bf16", "h0_ptr": "*fp32", "ht_ptr": "*fp32", "cu_ptr": "*bf16",
        "T": "i32", "Hk": "i32", "Hv": "i32", "K": "i32", "V": "i32", "scale": "fp32",
        "stride_qb": "i32", "stride_qt": "i32", "stride_qh": "i32",
        "stride_kb": "i32", "stride_kt": "i32", "stride_kh": "i32",
        "stride_vb": "i32", "stride_vt": "i32", "stride_vh": "i32",
        "stride_gb": "i32", "stride_gt": "i32", "stride_betab": "i32", "stride_betat": "i32",
        "num_tasks": "i32", "num_v_blocks": "i32",
    }
    consts = dict(BK=128, BV=BLOCK_V, GATING=gating, USE_L2=True, HAS_H0=True, STORE_HT=True, VARLEN=False)
    return LoweringConfig(name, gdn_recurrent_kernel, sig, consts)


#: Intern-S2 decode: K = V = 128, 16 key / 32 value heads, bf16 q/k/v, T = 1, state updated in place.
LOWERING_CONFIGS = [
    _config("gdn_recurrent/K128-V128-Hk16-Hv32-bf16", False),
    _config("gdn_recurrent/K128-V128-Hk16-Hv32-bf16-fused_gating", True),
]
