"""Recurrent (decode) gated delta rule in PyTorch, built for the one-token step.

Per value head h (key head h // G, G = Hv // Hk), with decay d = exp(g_t) and S the state before
the token, the step is rewritten so that the [K, V] state is read once by one batched matmul:
    [qS; kS] = [q; k]^T S                     (one matmul, both rows at once)
    delta    = beta (v - d kS)
    o        = d qS + (q . k) delta           (= q^T S_new, without reading S_new)
    S_new    = d S + k delta^T                 (mul_ + addcmul_ in place)
q and k are stacked once, so their L2 norm, scaling and dtype cast are one op each.
Value heads are viewed as [Hk, G] and broadcast against the key heads, so q/k are never
repeated. No host syncs, except reading the sequence lengths once when `cu_seqlens` is given.
T == 1 runs the step once; T > 1 loops over tokens.
"""
from __future__ import annotations

import torch

from .gdn_gating import gdn_gating


def _dense(q, k, v, g, beta, scale, state, use_qk_l2norm_in_kernel, inplace):
    """q, k [B,T,Hk,K]; v [B,T,Hv,V]; g, beta [B,T,Hv] (any float dtype); state [B,Hv,K,V] fp32 or None.

    Returns o [B,T,Hv,V] fp32 and the final state ([B,Hv,K,V] fp32; `state` itself when inplace).
    """
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    G = Hv // Hk
    qk = torch.stack((q, k), dim=3).float()                   # [B,T,Hk,2,K]: q and k handled together
    if use_qk_l2norm_in_kernel:
        qk = qk * torch.rsqrt((qk * qk).sum(-1, keepdim=True) + 1e-6)
    qk[..., 0, :] *= scale
    qdotk = (qk[..., 0, :] * qk[..., 1, :]).sum(-1)          # [B,T,Hk]
    # v and beta stay in their dtype: they only meet fp32 operands (addcmul, mul_), whose type
    # promotion upcasts them exactly as .float() would, one cast op fewer each
    vf = v.reshape(B, T, Hk, G, V)
    decay = g.float().exp().reshape(B, T, Hk, G, 1)
    betaf = beta.reshape(B, T, Hk, G, 1)

    S = None if state is None else (state.view if inplace else state.reshape)(B, Hk, G, K, V)
    owned = inplace  # may S be written in place?
    outs = []
    for t in range(T):
        d, bt = decay[:, t], betaf[:, t]                      # [B,Hk,G,1]
        k5 = qk[:, t, :, None, 1, :, None]                    # [B,Hk,1,K,1]
        qdk = qdotk[:, t, :, None, None]                      # [B,Hk,1,1]
        if S is None:  # zero state: S^T q = S^T k = 0
            delta = vf[:, t].float() * bt                     # [B,Hk,G,V]
            outs.append(qdk * delta)
            S = k5 * delta[:, :, :, None, :]
            owned = True
            continue
        r = torch.matmul(qk[:, t, :, None], S)                # [B,Hk,1,2,K] @ [B,Hk,G,K,V] -> [B,Hk,G,2,V]
        delta = torch.addcmul(vf[:, t], d, r[..., 1, :], value=-1.0).mul_(bt)
        outs.append(torch.addcmul(d * r[..., 0, :], qdk, delta))
        if owned:
            S.mul_(d[..., None])
        else:
            S = S * d[..., None]
            owned = True
        S.addcmul_(k5, delta[:, :, :, None, :])
    if T == 1:
        o = outs[0].view(B, 1, Hv, V)
    elif T == 0:
        o = vf.new_zeros(B, 0, Hv, V, dtype=torch.float32)
    else:
        o = torch.stack(outs, dim=1).view(B, T, Hv, V)
    if inplace:
        return o, state
    if S is None:
        return o, torch.zeros(B, Hv, K, V, dtype=torch.float32, device=q.device)
    if not owned:  # T == 0: never hand back the caller's tensor as a new state
        S = S.clone()
    return o, S.reshape(B, Hv, K, V)


def fused_recurrent_gated_delta_rule(
    q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, cu_seqlens=None, inplace_final_state=False,
):
    """See interns2_fast.ops.fused_recurrent_gated_delta_rule (inputs validated there)."""
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    if scale is None:
        scale = K**-0.5
    inplace = bool(inplace_final_state and initial_state is not None)
    if cu_seqlens is None:
        o, s = _dense(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel, inplace)
        o = o.to(q.dtype)
    else:
        # Gather the packed sequences into a padded [N, L] batch (padding at the end, with g = 0
        # and beta = 0 so that padding leaves the state exactly unchanged), run it, scatter back.
        N = cu_seqlens.numel() - 1
        cu = cu_seqlens.to(torch.int64)
        lens = cu[1:] - cu[:-1]
        L = int(lens.max()) if N > 0 else 0  # the one host sync of this backend
        if T == 0 or L == 0:
            o = q.new_zeros(B, T, Hv, V)
            if initial_state is None:
                s = q.new_zeros(N, Hv, K, V, dtype=torch.float32)
            else:
                s = initial_state if inplace else initial_state.clone()
            return o, (s if (output_final_state or inplace_final_state) else None)
        pos = torch.arange(L, device=q.device)
        valid = pos[None, :] < lens[:, None]                  # [N, L]
        # clamped into [0, T-1]: a bad cu_seqlens on a device (not validated: no sync) stays in bounds
        idx = (cu[:-1, None] + pos[None, :]).clamp_(0, T - 1)  # [N, L]
        qp, kp, vp = q[0, idx], k[0, idx], v[0, idx]
        gp = g[0, idx].float().masked_fill_(~valid[..., None], 0.0)
        bp = beta[0, idx].float().masked_fill_(~valid[..., None], 0.0)
        op, s = _dense(qp, kp, vp, gp, bp, scale, initial_state, use_qk_l2norm_in_kernel, inplace)
        # Scatter back without a host sync: padding rows go to a dummy row T.
        dst = torch.where(valid, idx, torch.full_like(idx, T)).flatten()
        o = q.new_zeros(T + 1, Hv, V).index_copy_(0, dst, op.flatten(0, 1).to(q.dtype))[:T].unsqueeze(0)
    if not (output_final_state or inplace_final_state):
        s = None
    return o, s


def fused_recurrent_gated_delta_rule_with_gating(
    q, k, v, a, b, A_log, dt_bias, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, inplace_final_state=False, cu_seqlens=None,
):
    """Gating (g, beta from raw a, b) followed by the recurrence; same rounding as the two ops in turn."""
    g, beta = gdn_gating(A_log, a, dt_bias, b)
    return fused_recurrent_gated_delta_rule(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens,
        inplace_final_state=inplace_final_state,
    )
