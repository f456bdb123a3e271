"""Chunked gated delta rule (prefill), chunk 64: two Triton kernels + launcher.

Per value head h with state S in R^{K x V} (fp32):
    S <- exp(g_t) S;   S <- S + k_t (beta_t (v_t - S^T k_t))^T;   o_t = S^T (scale q_t)
Value head h reads key head h // (Hv // Hk) (grouped value attention, no repeated q/k copy).

Chunked form, per chunk of BT = 64 tokens with gc = cumsum(g) inside the chunk:
  A  = strictly-lower(beta_i k_i.k_j exp(gc_i - gc_j));   T = (I + A)^-1
  w  = T (beta exp(gc) k),  u = T (beta v)
  v' = u - w S;  o = (scale q exp(gc)) S + (scale q k^T exp(gc_i - gc_j))_{j<=i} v'
  S  <- exp(gc_last) S + (k exp(gc_last - gc))^T v'

Launches:
  1. `_gdn_chunk_prep_kernel`, one task per (chunk, key head): K K^T once per key head (over K
     tiles of 64), then for each of its G value heads the gate cumsum, the decayed beta K K^T,
     (I + A)^-1 in registers (forward substitution on the four 16x16 diagonal blocks at once,
     16 steps, then a merge with four 64x64 dots), and w, u (fp32 workspaces [Hv, T, K] /
     [Hv, T, V]); with the L2 norm also 1/|k| per token ([Hk, T]).
  2. `_gdn_chunk_fwd_kernel`, one task per (sequence, value head, V tile): the sequential pass
     over the sequence's chunks with the state slice S[:, V tile] in registers (as one or two
     K tiles of up to 128 rows), writing o and the final state. Row scales (scale, L2 norms,
     decays) are applied outside the K-tile products, so each q/k tile is loaded once.
Both use persistent grids (cube cores: they use tl.dot) with the task loop inside.

Chunks never cross sequence boundaries: with `cu_seqlens` the launcher builds the chunk list
(sequence, chunk index) on the host, which reads `cu_seqlens` once (one host sync, prefill only).
Without `cu_seqlens` the B sequences of length T are treated as packed (no sync).
g and beta are transposed on the host to [Hv, T_total] fp32 so that the kernels read them stride-1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast.device import device_guard, persistent_grid
from interns2_fast.cu_seqlens import check_cu_seqlens_values

from . import LoweringConfig

OP = "chunk_gated_delta_rule[triton]"
BT = 64  # chunk size
MAX_HEAD_DIM = 256


@triton.jit
def _gdn_chunk_prep_kernel(
    k_ptr, v_ptr, g_ptr, beta_ptr, cu_ptr, chunks_ptr, w_ptr, u_ptr, rk_ptr,
    total_t, num_tasks,
    HK: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_L2: tl.constexpr,
):
    HV: tl.constexpr = HK * G
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = tl.arange(0, BT)
    cols_k = tl.arange(0, BK)
    cols_v = tl.arange(0, BV)
    strict = rows[:, None] > rows[None, :]
    SB: tl.constexpr = BT // 4  # diagonal block of the blocked inverse (BT = 64: four 16x16 blocks)
    same_blk = (rows[:, None] // SB) == (rows[None, :] // SB)
    eye = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
    for task in range(pid, num_tasks, nprog):
        i_c = task // HK
        i_hk = task % HK
        i_n = tl.load(chunks_ptr + 2 * i_c)
        i_t = tl.load(chunks_ptr + 2 * i_c + 1)
        # offsets clamped into [0, total_t]: never an access out of bounds, whatever cu_seqlens holds
        bos = tl.minimum(tl.maximum(tl.load(cu_ptr + i_n), 0), total_t)
        eos = tl.minimum(tl.maximum(tl.load(cu_ptr + i_n + 1), bos), total_t)
        tok = bos + i_t * BT + rows
        m_t = tok < eos
        tok64 = tl.cast(tok, tl.int64)

        # K K^T over K tiles of BK (k is reloaded tile by tile for w below: no [BT, K] tile stays live)
        k_row = k_ptr + tok64[:, None] * (HK * K) + i_hk * K
        b_kk = tl.zeros([BT, BT], dtype=tl.float32)
        b_ss = tl.zeros([BT], dtype=tl.float32)
        for i_k in range(0, K, BK):
            ck = i_k + cols_k
            b_kt = tl.load(k_row + ck[None, :], mask=m_t[:, None] & (ck < K)[None, :], other=0.0).to(tl.float32)
            b_kk += tl.dot(b_kt + 0.0, tl.trans(b_kt))
            b_ss += tl.sum(b_kt * b_kt, 1)
        if USE_L2:
            b_rn = tl.rsqrt(b_ss + 1e-6)  # q/k L2 norm: k_i.k_j / (|k_i| |k_j|)
            tl.store(rk_ptr + tl.cast(i_hk, tl.int64) * total_t + tok64, b_rn, mask=m_t)  # for the fwd kernel
        else:
            b_rn = tl.full([BT], 1.0, dtype=tl.float32)
        b_kk = b_kk * b_rn[:, None] * b_rn[None, :]  # once per key head, shared by its G value heads

        for i_g in range(G):
            i_hv = i_hk * G + i_g
            gb = tl.cast(i_hv, tl.int64) * total_t + tok64
            b_g = tl.load(g_ptr + gb, mask=m_t, other=0.0)
            b_beta = tl.load(beta_ptr + gb, mask=m_t, other=0.0)
            b_gc = tl.cumsum(b_g, 0)
            b_a = tl.where(strict, b_kk * tl.exp(tl.where(strict, b_gc[:, None] - b_gc[None, :], 0.0)), 0.0)
            b_a = b_a * b_beta[:, None]
            # T = (I + A)^-1. Split A = D + E, D the four 16x16 diagonal blocks, E below them.
            # Td = (I + D)^-1 by forward substitution, the four blocks at once (16 steps): at step
            # i rows i, 16+i, 32+i, 48+i are solved; they touch disjoint column blocks, so one
            # masked reduction serves all four.
            b_d = tl.where(same_blk, b_a, 0.0)
            b_td = tl.zeros([BT, BT], dtype=tl.float32)
            for i in range(SB):
                sel = (rows % SB) == i
                x = tl.sum(tl.where(sel[:, None], b_d, 0.0), 0)  # x_j = D[row of j's block, j]
                y = tl.sum(x[:, None] * b_td, 0)  # y_c = sum_j D[r(c), j] Td[j, c]
                b_td = tl.where(sel[:, None] & same_blk, eye - y[None, :], b_td)
            # (I + A)^-1 = (I + N)^-1 Td with N = Td E nilpotent (N^4 = 0): (I + N)^-1 = (I + N^2)(I - N)
            b_e = tl.where(same_blk, 0.0, b_a)
            b_n = tl.dot(b_td + 0.0, b_e)
            b_p = b_td - tl.dot(b_n + 0.0, b_td)
            b_n2 = tl.dot(b_n + 0.0, b_n)
            b_ti = b_p + tl.dot(b_n2, b_p)

            row64 = tl.cast(i_hv, tl.int64) * total_t + tok64  # workspace row of (head, token)
            b_ks = b_beta * tl.exp(b_gc) * b_rn
            for i_k in range(0, K, BK):
                ck = i_k + cols_k
                m_tk = m_t[:, None] & (ck < K)[None, :]
                b_kt = tl.load(k_row + ck[None, :], mask=m_tk, other=0.0).to(tl.float32)
                b_w = tl.dot(b_ti + 0.0, b_kt * b_ks[:, None])
                tl.store(w_ptr + row64[:, None] * K + ck[None, :], b_w, mask=m_tk)
            for i_v in range(0, V, BV):
                cv = i_v + cols_v
                m_v = cv < V
                m_tv = m_t[:, None] & m_v[None, :]
                b_v = tl.load(v_ptr + tok64[:, None] * (HV * V) + i_hv * V + cv[None, :], mask=m_tv,
                              other=0.0).to(tl.float32)
                b_u = tl.dot(b_ti + 0.0, b_v * b_beta[:, None])
                tl.store(u_ptr + row64[:, None] * V + cv[None, :], b_u, mask=m_tv)


@triton.jit
def _gdn_chunk_fwd_kernel(
    q_ptr, k_ptr, w_ptr, u_ptr, g_ptr, rk_ptr, cu_ptr, h0_ptr, ht_ptr, o_ptr,
    scale, total_t, num_tasks,
    HK: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, NK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr,
    USE_L2: tl.constexpr, HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
):
    # K is covered by NK (1 or 2) tiles of BK (<= 128): the state slice is held as S0 = S[:BK] and,
    # when K > BK, S1 = S[BK:], so that no [BT, K] tile wider than BK is ever live (UB budget).
    HV: tl.constexpr = HK * G
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = tl.arange(0, BT)
    ck0 = tl.arange(0, BK)
    ck1 = BK + tl.arange(0, BK)
    cols_v = tl.arange(0, BV)
    m_k0 = ck0 < K
    m_k1 = ck1 < K
    incl = rows[:, None] >= rows[None, :]
    for task in range(pid, num_tasks, nprog):
        i_v = task % NV
        i_nh = task // NV
        i_hv = i_nh % HV
        i_n = i_nh // HV
        i_hk = i_hv // G
        bos = tl.minimum(tl.maximum(tl.load(cu_ptr + i_n), 0), total_t)
        eos = tl.minimum(tl.maximum(tl.load(cu_ptr + i_n + 1), bos), total_t)
        n_chunks = (eos - bos + BT - 1) // BT
        cv = i_v * BV + cols_v
        m_v = cv < V
        s_base = tl.cast(i_n * HV + i_hv, tl.int64) * K
        s_off0 = (s_base + ck0[:, None]) * V + cv[None, :]
        s_off1 = (s_base + ck1[:, None]) * V + cv[None, :]
        m_s0 = m_k0[:, None] & m_v[None, :]
        m_s1 = m_k1[:, None] & m_v[None, :]
        if HAS_H0:
            b_s0 = tl.load(h0_ptr + s_off0, mask=m_s0, other=0.0).to(tl.float32)
        else:
            b_s0 = tl.zeros([BK, BV], dtype=tl.float32)
        if NK > 1 and HAS_H0:
            b_s1 = tl.load(h0_ptr + s_off1, mask=m_s1, other=0.0).to(tl.float32)
        else:
            b_s1 = tl.zeros([BK, BV], dtype=tl.float32)
        for i_t in range(0, n_chunks):
            tok = bos + i_t * BT + rows
            m_t = tok < eos
            tok64 = tl.cast(tok, tl.int64)
            m_tv = m_t[:, None] & m_v[None, :]
            m_t0 = m_t[:, None] & m_k0[None, :]
            m_t1 = m_t[:, None] & m_k1[None, :]
            qk_row = tok64[:, None] * (HK * K) + i_hk * K
            row64 = tl.cast(i_hv, tl.int64) * total_t + tok64  # workspace row of (head, token)
            b_g = tl.load(g_ptr + row64, mask=m_t, other=0.0)
            b_gc = tl.cumsum(b_g, 0)
            g_last = tl.sum(b_g, 0)  # padding rows hold g = 0
            b_eg = tl.exp(b_gc)
            b_gd = tl.exp(g_last - b_gc)

            # v' = u - w S
            b_u = tl.load(u_ptr + row64[:, None] * V + cv[None, :], mask=m_tv, other=0.0)
            b_w = tl.load(w_ptr + row64[:, None] * K + ck0[None, :], mask=m_t0, other=0.0)
            b_vn = b_u - tl.dot(b_w, b_s0)
            if NK > 1:
                b_w1 = tl.load(w_ptr + row64[:, None] * K + ck1[None, :], mask=m_t1, other=0.0)
                b_vn = b_vn - tl.dot(b_w1, b_s1)

            # Row scales are applied outside the K-tile products, so each q/k tile is loaded once:
            # q's (scale, L2 norm) to the rows of q k^T and of the inter-chunk output, k's (L2 norm
            # from the prep kernel) to the columns of q k^T and, with the decay, to the rows of v'.
            if USE_L2:
                b_rk = tl.load(rk_ptr + tl.cast(i_hk, tl.int64) * total_t + tok64, mask=m_t, other=0.0)
            else:
                b_rk = tl.full([BT], 1.0, dtype=tl.float32)
            b_vs = b_vn * (b_rk * b_gd)[:, None]  # k exp(g_last - gc) folded into v' for the state update
            dl = tl.exp(g_last)

            b_q = tl.load(q_ptr + qk_row + ck0[None, :], mask=m_t0, other=0.0).to(tl.float32)
            b_k = tl.load(k_ptr + qk_row + ck0[None, :], mask=m_t0, other=0.0).to(tl.float32)
            b_qss = tl.sum(b_q * b_q, 1)
            b_qk = tl.dot(b_q + 0.0, tl.trans(b_k))
            b_oi = tl.dot(b_q * b_eg[:, None], b_s0)
            b_s0 = b_s0 * dl + tl.dot(tl.trans(b_k), b_vs)
            if NK > 1:  # K tile 1
                b_q = tl.load(q_ptr + qk_row + ck1[None, :], mask=m_t1, other=0.0).to(tl.float32)
                b_k = tl.load(k_ptr + qk_row + ck1[None, :], mask=m_t1, other=0.0).to(tl.float32)
                b_qss += tl.sum(b_q * b_q, 1)
                b_qk += tl.dot(b_q + 0.0, tl.trans(b_k))
                b_oi += tl.dot(b_q * b_eg[:, None], b_s1)
                b_s1 = b_s1 * dl + tl.dot(tl.trans(b_k), b_vs)
            if USE_L2:
                b_rq = tl.rsqrt(b_qss + 1e-6) * scale
            else:
                b_rq = tl.full([BT], 1.0, dtype=tl.float32) * scale

            # o = scale q exp(gc) S + (scale q k^T exp(gc_i - gc_j))_{j<=i} v'
            b_qk = b_qk * (b_rq[:, None] * b_rk[None, :])
            b_qk = tl.where(incl, b_qk * tl.exp(tl.where(incl, b_gc[:, None] - b_gc[None, :], 0.0)), 0.0)
            b_o = b_oi * b_rq[:, None] + tl.dot(b_qk, b_vn)
            tl.store(o_ptr + tok64[:, None] * (HV * V) + i_hv * V + cv[None, :],
                     b_o.to(o_ptr.dtype.element_ty), mask=m_tv)
        if STORE_FINAL:
            tl.store(ht_ptr + s_off0, b_s0, mask=m_s0)
            if NK > 1:
                tl.store(ht_ptr + s_off1, b_s1, mask=m_s1)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _block_v(V: int) -> int:
    """V tile of the state pass: the state slice [BK, BV] plus the chunk tiles must fit the UB."""
    return min(_block(V), 64)


def chunk_gated_delta_rule(
    q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, cu_seqlens=None,
):
    """q, k [B,T,Hk,K]; v [B,T,Hv,V]; g, beta [B,T,Hv] -> (o [B,T,Hv,V] in q.dtype, final state
    [N,Hv,K,V] fp32 or None). Inputs are validated by `interns2_fast.ops.gdn`."""
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"{OP}: head dims up to {MAX_HEAD_DIM} are supported, got K={K}, V={V}")
    G = Hv // Hk
    if scale is None:
        scale = K**-0.5
    dev = q.device
    TT = B * T
    n_t = triton.cdiv(T, BT)
    if cu_seqlens is None:
        N = B
        cu = torch.arange(B + 1, dtype=torch.int32, device=dev) * T
        ids = torch.arange(B * n_t, dtype=torch.int32, device=dev)  # built on the device: no copy, no sync
        chunks = torch.stack([ids // n_t, ids % n_t], -1)
    else:
        N = cu_seqlens.numel() - 1
        cu = cu_seqlens.to(device=dev, dtype=torch.int32)
        bounds = cu_seqlens.tolist()  # host sync: the chunk list depends on the lengths
        check_cu_seqlens_values(OP, bounds, TT)  # free after that sync (device tensors too)
        chunks = torch.tensor(
            [(n, c) for n in range(N) for c in range(triton.cdiv(bounds[n + 1] - bounds[n], BT))],
            dtype=torch.int32,
        ).reshape(-1, 2).to(dev)
    chunks = chunks.contiguous()
    n_chunks = chunks.shape[0]

    q = q.contiguous()
    k = k.contiguous()
    v = v.contiguous()
    g_t = g.reshape(TT, Hv).t().to(torch.float32).contiguous()  # [Hv, TT]: stride 1 along T
    beta_t = beta.reshape(TT, Hv).t().to(torch.float32).contiguous()
    w = torch.empty(Hv, TT, K, dtype=torch.float32, device=dev)
    u = torch.empty(Hv, TT, V, dtype=torch.float32, device=dev)
    rk = torch.empty(Hk, TT, dtype=torch.float32, device=dev) if use_qk_l2norm_in_kernel else w  # 1/|k|
    o = torch.empty(B, T, Hv, V, dtype=q.dtype, device=dev)
    final = torch.empty(N, Hv, K, V, dtype=torch.float32, device=dev) if output_final_state else None
    h0 = initial_state.contiguous() if initial_state is not None else None

    BK, BV = _block(K), _block(V)
    BKS = min(BK, 128)  # K tile of the state pass (NK = 1 or 2 tiles)
    BVS = _block_v(V)
    NV = triton.cdiv(V, BVS)
    with device_guard(q):
        if n_chunks:
            tasks = n_chunks * Hk
            _gdn_chunk_prep_kernel[(persistent_grid(dev, tasks, cube=True),)](
                k, v, g_t, beta_t, cu, chunks, w, u, rk, TT, tasks,
                HK=Hk, G=G, K=K, V=V, BT=BT, BK=min(BK, 64), BV=min(BV, 64), USE_L2=use_qk_l2norm_in_kernel,
            )
        tasks = N * Hv * NV
        _gdn_chunk_fwd_kernel[(persistent_grid(dev, tasks, cube=True),)](
            q, k, w, u, g_t, rk, cu, h0 if h0 is not None else w, final if final is not None else w, o,
            float(scale), TT, tasks,
            HK=Hk, G=G, K=K, V=V, BT=BT, BK=BKS, NK=triton.cdiv(K, BKS), BV=BVS, NV=NV,
            USE_L2=use_qk_l2norm_in_kernel, HAS_H0=h0 is not None, STORE_FINAL=final is not None,
        )
    return o, final


def _configs():
    """Production: Intern-S2 linear attention, K = V = 128, Hk = 16, Hv = 32, chunk 64, bf16; plus the
    largest head dims the launcher accepts (K = V = 256, two K tiles in the state pass)."""
    Hk, G = 16, 2
    cfgs = []
    for D, flags in ((128, (True, False)), (256, (True,))):
        K = V = D
        BK, BVP, BVS = _block(K), min(_block(V), 64), _block_v(V)
        for l2 in flags:
            tag = f"bf16_k{K}_v{V}_hk16_hv32_{'l2' if l2 else 'nol2'}"
            cfgs.append(LoweringConfig(
                name=f"gdn_chunk/prep_{tag}",
                kernel=_gdn_chunk_prep_kernel,
                signature={"k_ptr": "*bf16", "v_ptr": "*bf16", "g_ptr": "*fp32", "beta_ptr": "*fp32",
                           "cu_ptr": "*i32", "chunks_ptr": "*i32", "w_ptr": "*fp32", "u_ptr": "*fp32",
                           "rk_ptr": "*fp32", "total_t": "i32", "num_tasks": "i32"},
                constants={"HK": Hk, "G": G, "K": K, "V": V, "BT": BT, "BK": min(BK, 64), "BV": BVP, "USE_L2": l2},
            ))
            cfgs.append(LoweringConfig(
                name=f"gdn_chunk/fwd_{tag}_bv{BVS}",
                kernel=_gdn_chunk_fwd_kernel,
                signature={"q_ptr": "*bf16", "k_ptr": "*bf16", "w_ptr": "*fp32", "u_ptr": "*fp32", "g_ptr": "*fp32",
                           "rk_ptr": "*fp32", "cu_ptr": "*i32", "h0_ptr": "*fp32", "ht_ptr": "*fp32",
                           "o_ptr": "*bf16", "scale": "fp32", "total_t": "i32", "num_tasks": "i32"},
                constants={"HK": Hk, "G": G, "K": K, "V": V, "BT": BT, "BK": min(BK, 128),
                           "NK": triton.cdiv(K, min(BK, 128)), "BV": BVS, "NV": triton.cdiv(V, BVS),
                           "USE_L2": l2, "HAS_H0": True, "STORE_FINAL": True},
            ))
    return cfgs


LOWERING_CONFIGS = _configs()
