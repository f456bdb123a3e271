"""Chunked gated delta rule (prefill) in portable PyTorch.

Same semantics as the transformers fallback (`torch_chunk_gated_delta_rule`, chunk 64), computed
chunk-parallel in fp32:

  * everything inside a chunk is batched over (batch, heads, chunks): the gate cumsum, the
    decayed beta*K*K^T, ONE `torch.linalg.solve_triangular` call for all chunks that yields
    T = (I + A)^-1, and the decayed q*K^T;
  * only the inter-chunk state pass is a Python loop (one iteration per 64 tokens, four batched
    matmuls each: v_new = T (beta v - beta exp(g) k S), so w = T beta exp(g) k is never formed);
  * grouped value attention (Hv = G*Hk) without repeating q/k: value heads are viewed as
    [Hk, G] and q/k broadcast over G, so K*K^T and q*K^T are computed once per key head.

No host synchronisation on the dense path. With `cu_seqlens` the packed sequences are gathered
into a padded [N, T_max] batch first, which reads `cu_seqlens` on the host once (prefill only).
"""
from __future__ import annotations

import torch

CHUNK = 64


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def _to_chunks(x: torch.Tensor, NT: int, C: int) -> torch.Tensor:
    """[B, T, H, D] (any float dtype) -> fp32 [NT, B, H, C, D], zero-padded to NT*C tokens (one copy)."""
    B, T, H, D = x.shape
    full = T // C
    out = torch.empty(NT, B, H, C, D, dtype=torch.float32, device=x.device)
    if full:
        out[:full].copy_(x[:, : full * C].view(B, full, C, H, D).permute(1, 0, 3, 2, 4))
    rem = T - full * C
    if full < NT:
        out[full, :, :, rem:].zero_()
        if rem:
            out[full, :, :, :rem].copy_(x[:, full * C :].permute(0, 2, 1, 3))
    return out


def _from_chunks(o: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """fp32 [NT, B, H, C, D] -> [B, T, H, D] in `dtype` (one copy)."""
    NT, B, H, C, D = o.shape
    full = T // C
    out = torch.empty(B, T, H, D, dtype=dtype, device=o.device)
    if full:
        out[:, : full * C].view(B, full, C, H, D).copy_(o[:full].permute(1, 0, 3, 2, 4))
    rem = T - full * C
    if rem:
        out[:, full * C :].copy_(o[full, :, :, :rem].permute(0, 2, 1, 3))
    return out


def _dense(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel):
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    G = Hv // Hk
    C = CHUNK
    NT = max(1, (T + C - 1) // C)
    BH = B * Hv
    dev = q.device
    f32 = torch.float32

    # Chunk-major layout: key heads [NT, B, Hk, 1, C, K], value heads [NT, B, Hk, G, C, *]
    # (value head h = hk*G + i), so that every chunk's slice is contiguous for the state pass.
    qc = _to_chunks(q, NT, C)
    kc = _to_chunks(k, NT, C)
    if use_qk_l2norm_in_kernel:
        qc, kc = _l2norm(qc), _l2norm(kc)
    qc = qc.mul_(scale).unsqueeze(3)
    kc = kc.unsqueeze(3)
    vc = _to_chunks(v, NT, C).view(NT, B, Hk, G, C, V)
    gc = _to_chunks(g.unsqueeze(-1), NT, C).view(NT, B, Hk, G, C).cumsum_(-1)
    bc = _to_chunks(beta.unsqueeze(-1), NT, C).view(NT, B, Hk, G, C)

    idx = torch.arange(C, device=dev)
    lower_incl = idx[:, None] >= idx[None, :]
    strict = idx[:, None] > idx[None, :]
    # exp(gc_i - gc_j) on and below the diagonal, 0 above (masked before exp: no overflow)
    decay = (gc[..., :, None] - gc[..., None, :]).masked_fill_(~lower_incl, float("-inf")).exp_()

    # key-head products, computed once per key head and broadcast over the G value heads
    kt = kc.transpose(-1, -2)
    kk = kc @ kt  # [NT, B, Hk, 1, C, C]
    attn = (qc @ kt).mul_(decay) if G == 1 else (qc @ kt) * decay  # decayed q.k, zero above diag

    # (I + A)^-1 with A = strictly-lower(beta_i * k_i.k_j * decay_ij): one triangular solve for all
    a = (kk * decay).mul_(bc[..., :, None]).masked_fill_(~strict, 0.0)
    a.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    del kk, decay
    eye = torch.eye(C, dtype=f32, device=dev).expand_as(a)
    tinv = torch.linalg.solve_triangular(a, eye, upper=False, unitriangular=True)  # [NT, B, Hk, G, C, C]
    del a, eye
    eg = gc.exp()
    # u = T (beta v) and w = T (beta exp(gc) k) are never formed: per chunk
    # v_new = u - w S = T (beta v - beta exp(gc) k S), which saves the C*C*K product of w.
    vb = vc.mul_(bc[..., None]).view(NT, BH, C, V)  # beta v, in place
    kbs = bc * eg  # row scales of k for w: beta exp(gc)
    g_last = gc[..., -1:]  # padding has g = 0, so this is the last real token's cumulative gate
    kds = (g_last - gc).exp_()  # row scales of k for the state update: exp(g_last - gc)
    dl = g_last.exp().view(NT, BH, 1, 1)
    tinv = tinv.view(NT, BH, C, C)

    if initial_state is None:
        state = torch.zeros(BH, K, V, dtype=f32, device=dev)
    else:
        state = initial_state.to(f32).reshape(BH, K, V).clone()
    o = torch.empty(NT, BH, C, V, dtype=f32, device=dev)
    v_new = torch.empty(NT, BH, C, V, dtype=f32, device=dev)
    tmp = torch.empty(BH, C, V, dtype=f32, device=dev)
    # per-chunk row-scaled copies of q / k for the value heads (small, cache-resident buffers)
    qg, kb, kd = (torch.empty(B, Hk, G, C, K, dtype=f32, device=dev) for _ in range(3))
    qg_, kb_, kd_ = qg.view(BH, C, K), kb.view(BH, C, K), kd.view(BH, C, K)
    for c in range(NT):  # the sequential inter-chunk state pass
        torch.mul(qc[c], eg[c, ..., None], out=qg)  # q exp(gc): reads the state at the chunk start
        torch.mul(kc[c], kbs[c, ..., None], out=kb)
        torch.mul(kc[c], kds[c, ..., None], out=kd)
        torch.bmm(qg_, state, out=o[c])
        torch.baddbmm(vb[c], kb_, state, alpha=-1.0, out=tmp)
        torch.bmm(tinv[c], tmp, out=v_new[c])
        state.mul_(dl[c]).baddbmm_(kd_.transpose(-1, -2), v_new[c])
    # intra-chunk term, batched over all chunks: o += attn @ v_new
    o = o.view(NT * BH, C, V).baddbmm_(attn.reshape(NT * BH, C, C), v_new.view(NT * BH, C, V))
    out = _from_chunks(o.view(NT, B, Hv, C, V), T, q.dtype)
    final = state.view(B, Hv, K, V) if output_final_state else None
    return out, final


def chunk_gated_delta_rule(
    q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, cu_seqlens=None,
):
    """q, k [B,T,Hk,K]; v [B,T,Hv,V]; g, beta [B,T,Hv] -> (o [B,T,Hv,V] in q.dtype, final state
    [N,Hv,K,V] fp32 or None). See `interns2_fast.ops.gdn.chunk_gated_delta_rule`."""
    K = q.shape[-1]
    if scale is None:
        scale = K**-0.5
    if cu_seqlens is None:
        return _dense(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)

    # Packed sequences: gather into a zero-padded [N, T_max] batch. Padding tokens have g = 0,
    # beta = 0 and k = 0, so they leave the state untouched; their outputs are dropped.
    bounds = cu_seqlens.tolist()  # the one host sync of this path
    from ..cu_seqlens import check_cu_seqlens_values

    check_cu_seqlens_values("chunk_gated_delta_rule[torch]", bounds, q.shape[1])  # free after the sync
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    N, t_max = len(lengths), max(max(lengths), 1)
    dev = q.device
    starts = cu_seqlens[:-1].to(device=dev, dtype=torch.long)
    lens = cu_seqlens[1:].to(device=dev, dtype=torch.long) - starts
    pos = torch.arange(t_max, device=dev)
    valid = pos[None, :] < lens[:, None]  # [N, t_max]
    src = torch.where(valid, starts[:, None] + pos[None, :], torch.zeros((), dtype=torch.long, device=dev))

    def gather(x):
        y = x[0][src]  # [N, t_max, ...]
        return y.masked_fill_(~valid.view(N, t_max, *([1] * (y.dim() - 2))), 0)

    o, final = _dense(gather(q), gather(k), gather(v), gather(g), gather(beta), scale, initial_state,
                      output_final_state, use_qk_l2norm_in_kernel)
    out = o[valid].unsqueeze(0)  # [1, T_total, Hv, V], sequences back in packed order
    return out, final
