"""Results of the ops on empty inputs, made in one place so that every backend agrees.

Rule (all ops): a zero-sized batch / token / row axis (B = 0, T = 0, zero rows, zero channels)
gives empty results of the documented shapes and dtypes, computed here without calling any
backend; a zero-sized feature axis (head count, head dim, kernel width, norm width, hidden size,
expert count, top-k) is a ValueError raised by the op's input checks. State outputs of an empty
call are never the caller's tensor unless the op updates that tensor in place: a final state
after T = 0 steps is a copy of the initial state (zeros without one).
"""
from __future__ import annotations

import torch


def gdn(q, v, initial_state, cu_seqlens, output_final_state, inplace_final_state=False):
    """(o [B, T, Hv, V] in q's dtype, final state [N, Hv, K, V] fp32 or None) for B * T == 0."""
    B, T, _, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    o = q.new_empty(B, T, Hv, V)
    if not (output_final_state or inplace_final_state):
        return o, None
    if inplace_final_state and initial_state is not None:
        return o, initial_state  # updated in place by zero steps: unchanged
    if initial_state is not None:
        return o, initial_state.clone()
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    return o, torch.zeros(N, Hv, K, V, dtype=torch.float32, device=q.device)


def gating(a, b, head_major):
    """(g fp32, beta in b's dtype) shaped like a ([B, Hv, T] with head_major) for a.numel() == 0."""
    shape = (a.shape[0], a.shape[2], a.shape[1]) if head_major else tuple(a.shape)
    return (torch.empty(shape, dtype=torch.float32, device=a.device),
            torch.empty(shape, dtype=b.dtype, device=a.device))


def conv1d_fn(x, weight, initial_states, return_final_states, final_states_out):
    """causal_conv1d_fn for B * D * T == 0: out [B, D, T]; final states = the initial states (a
    copy; zeros without them) when T == 0, else (B or D is 0) empty."""
    B, D, T = x.shape
    W = weight.shape[1]
    out = torch.empty_like(x)
    if not return_final_states:
        return out
    if initial_states is not None and T == 0:
        final = initial_states.clone()
    else:
        final = x.new_zeros(B, D, W - 1)
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


def conv1d_update(x):
    """causal_conv1d_update for B * D * T == 0: out [B, D, T]; the state is left as it is."""
    return x.new_empty(x.shape)


def like(x, dtype=None):
    """An empty result shaped like x."""
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)


def moe_route(hidden, num_experts, top_k):
    """(logits [0, E] in hidden's dtype, weights [0, k] fp32, ids [0, k] int64)."""
    T = hidden.shape[0]
    dev = hidden.device
    return (torch.empty(T, num_experts, dtype=hidden.dtype, device=dev),
            torch.empty(T, top_k, dtype=torch.float32, device=dev),
            torch.empty(T, top_k, dtype=torch.int64, device=dev))
