"""Short depthwise causal conv1d in plain PyTorch: prefill and in-place decode update.

Same semantics and rounding as `interns2_fast.reference` (the transformers fallback): the inputs
are rounded to the weight's dtype, the taps are accumulated in fp32 (the CPU conv does the same),
the sum (bias included) is rounded to the weight's dtype, the activation runs on that, and the
result is cast to x's dtype.

Why it is faster than the fallback:
  * prefill: W shifted multiply-adds (one `addcmul_` per tap, bias folded into the first) over
    large chunks of x (no padded copy of x, no `F.conv1d` over a padded sequence, no extra output
    columns); the chunks run along whichever axis is not the stride-1 one, so the transposed
    projection output [B, D, T] with stride 1 along D is read in place (no `.contiguous()`).
  * update: no `cat` + `conv1d`; when the state is long enough to hold the whole window
    (S >= W - 1 + T, the transformers cache keeps S = W), the state is rolled in place by one
    flat shift, x is written into its tail, and the taps are a multiply plus one small GEMV over
    the state itself. One fp32 step with S == W (the model's decode) takes six tensor ops: the new
    state built once in a scratch buffer, copied into the cache, multiplied in place by the taps,
    one GEMV, SiLU in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: Elements per prefill chunk: bounds the fp32 accumulator of 16-bit inputs (64 MB) while keeping
#: the number of ops small (many small ops cost more than cache misses on a busy 2-core machine).
CHUNK_ELEMENTS = 1 << 24


def _activate(acc: torch.Tensor, w_dtype: torch.dtype, activation: str | None) -> torch.Tensor:
    """The fallback's rounding after the fp32 sum: to weight dtype, activation, (caller casts to x)."""
    if acc.dtype != w_dtype:
        acc = acc.to(w_dtype)
        if activation is not None:
            acc = F.silu(acc)
        return acc
    if activation is not None:
        F.silu(acc, inplace=True)
    return acc


def _same_seq_masks(seq_idx: torch.Tensor, W: int, T: int) -> list:
    """masks[s][b, 0, t - s] = 1.0 where x[t - s] belongs to the same packed sequence as x[t]."""
    masks = [None]
    for s in range(1, W):
        if s >= T:
            masks.append(None)
            continue
        masks.append((seq_idx[:, s:] == seq_idx[:, :-s]).unsqueeze(1).to(torch.float32))
    return masks


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """See `interns2_fast.ops.causal_conv1d_fn`. Any W works; any x strides are read in place.

    seq_idx [B, T] (packed sequences): a tap never reads across a change of seq_idx, seq_idx < 0
    marks padding (zero outputs there); the final states then belong to the last sequence
    (entries of earlier sequences and of padding are zero). seq_idx
    together with initial_states is not supported (as in the causal-conv1d package).
    """
    if seq_idx is not None and initial_states is not None:
        raise NotImplementedError("causal_conv1d_fn[torch]: seq_idx together with initial_states is not supported")
    B, D, T = x.shape
    W = weight.shape[1]
    w_dtype = weight.dtype
    taps = weight.to(torch.float32).t().contiguous()  # [W, D]: one stride-1 column per tap
    bias32 = None if bias is None else bias.to(w_dtype).to(torch.float32)
    xw = x if x.dtype == w_dtype else x.to(w_dtype)
    init = None
    if initial_states is not None:
        init = initial_states if initial_states.dtype == w_dtype else initial_states.to(w_dtype)
    masks = _same_seq_masks(seq_idx, W, T) if seq_idx is not None else None

    out = torch.empty_like(x)
    direct = x.dtype == torch.float32 and w_dtype == torch.float32
    if T > 0:
        if x.stride(1) == 1 and x.stride(2) != 1:  # channel-last: chunks of whole time steps
            step = max(1, CHUNK_ELEMENTS // max(1, B * D))
            chunks = [(slice(None), t0, min(T, t0 + step)) for t0 in range(0, T, step)]
        else:  # time-contiguous (or anything else): chunks of whole channels
            step = max(1, CHUNK_ELEMENTS // max(1, B * T))
            chunks = [(slice(d0, min(D, d0 + step)), 0, T) for d0 in range(0, D, step)]
        for dsl, t0, t1 in chunks:
            o = out[:, dsl, t0:t1]
            acc = o if direct else torch.empty(o.shape, dtype=torch.float32, device=x.device)
            xd = xw[:, dsl]
            w_last = taps[W - 1, dsl].unsqueeze(-1)
            if bias32 is None:
                torch.mul(xd[..., t0:t1], w_last, out=acc)
            else:
                torch.addcmul(bias32[dsl].unsqueeze(-1), xd[..., t0:t1], w_last, out=acc)
            for k in range(W - 1):
                s = W - 1 - k
                wk = taps[k, dsl].unsqueeze(-1)
                a = max(t0, s)
                if a < t1:
                    src = xd[..., a - s:t1 - s]
                    if masks is not None:
                        src = src * masks[s][..., a - s:t1 - s]
                    acc[..., a - t0:].addcmul_(src, wk)
                if init is not None and t0 < s:
                    e = min(s, t1)
                    acc[..., : e - t0].addcmul_(init[:, dsl, k + t0:k + e], wk)
            r = _activate(acc, w_dtype, activation)
            if r is not o:
                o.copy_(r)
        if seq_idx is not None:  # seq_idx < 0 marks padding: zeros there (as the causal-conv1d package)
            out.masked_fill_((seq_idx < 0).unsqueeze(1), 0)
    if not return_final_states:
        return out
    final = _final_states(x, initial_states, seq_idx, W)
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


def _final_states(x, initial_states, seq_idx, W):
    """The last W-1 inputs (initial states, then zeros, before t = 0), in x's dtype."""
    B, D, T = x.shape
    n = W - 1
    final = torch.zeros(B, D, n, dtype=x.dtype, device=x.device)
    take = min(n, T)
    if take:
        final[..., n - take:] = x[..., T - take:]
    if T < n and initial_states is not None:
        final[..., : n - T] = initial_states[..., T:]
    if seq_idx is not None and take:
        tail = seq_idx[:, T - take:]
        keep = ((tail == seq_idx[:, -1:]) & (tail >= 0)).unsqueeze(1)
        final[..., n - take:] *= keep.to(x.dtype)
    return final


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """See `interns2_fast.ops.causal_conv1d_update`: out [B, D, T]; conv_state [B, D, S] ends up
    holding the last S inputs (exactly what the fallback's `cat` + `copy_` leaves there)."""
    B, D, T = x.shape
    S = conv_state.shape[2]
    W = weight.shape[1]
    w_dtype = weight.dtype
    if (T == 1 and S == W and w_dtype == torch.float32 and x.dtype == torch.float32
            and conv_state.dtype == torch.float32 and conv_state.is_contiguous()):
        return _update_one_step_fp32(x, conv_state, weight, bias, activation)
    xw = x if x.dtype == w_dtype else x.to(w_dtype)
    L = W - 1 + T  # inputs one step of T outputs reads
    if T < S and S >= L and conv_state.dtype == x.dtype and conv_state.is_contiguous():
        # Roll the state in place (one flat shift by T; each row's tail is then overwritten by x)
        # and read the whole window from the rolled state.
        flat = conv_state.view(-1)
        flat[:-T].copy_(flat[T:].clone())
        conv_state[:, :, S - T:].copy_(xw)
        window = conv_state[..., S - L:]
    else:
        full = torch.cat([conv_state, x], dim=-1).to(w_dtype)
        window = full[..., full.shape[-1] - L:]
        conv_state.copy_(full[..., full.shape[-1] - S:])
    if window.dtype != w_dtype:
        window = window.to(w_dtype)
    # products in fp32 (exact for fp32/bf16/fp16 operands), then one GEMV sums the W taps.
    w32 = weight if w_dtype == torch.float32 else weight.to(torch.float32)
    if T == 1:
        prod = torch.mul(window, w32)  # [B, D, W]
    else:
        prod = torch.empty(B, D, T, W, dtype=torch.float32, device=x.device)
        torch.mul(window.unfold(-1, W, 1), w32.unsqueeze(1), out=prod)
    ones = _ONES.get((W, x.device))
    if ones is None:
        ones = _ONES[(W, x.device)] = torch.ones(W, dtype=torch.float32, device=x.device)
    acc = torch.mv(prod.view(-1, W), ones).view(B, D, T)
    if bias is not None:
        acc += bias.to(w_dtype).to(torch.float32).unsqueeze(-1)
    if w_dtype == torch.float32:
        if activation is not None:
            F.silu(acc, inplace=True)
    else:
        acc = _activate(acc, w_dtype, activation)
    return acc if acc.dtype == x.dtype else acc.to(x.dtype)


def _update_one_step_fp32(x, conv_state, weight, bias, activation):
    """One fp32 decode step with the transformers cache layout (S == W): six tensor ops.

    The new state is built once in a scratch buffer (x into the slots the shift drops, then a flat
    shift by one), copied into the cache, then multiplied in place by the taps and summed by one
    GEMV."""
    B, D, S = conv_state.shape
    flat = conv_state.view(-1)
    xf = x.reshape(-1)  # [B, D, 1] in (b, d) order: one value per state row
    # Row r's new last slot is, after a flat shift by one, the old first slot of row r + 1 (which
    # the shift drops): put x there first, then one contiguous cat makes the whole new state.
    flat[S::S].copy_(xf[:-1])
    new = torch.cat([flat[1:], xf[-1:]])
    flat.copy_(new)
    new.view(B, D * S).mul_(weight.reshape(1, D * S))
    ones = _ONES.get((S, x.device))
    if ones is None:
        ones = _ONES[(S, x.device)] = torch.ones(S, dtype=torch.float32, device=x.device)
    acc = torch.mv(new.view(-1, S), ones)
    if bias is not None:
        acc.view(B, D).add_(bias.to(torch.float32))
    if activation is not None:
        F.silu(acc, inplace=True)
    return acc.view(B, D, 1)


#: (W, device) -> fp32 ones [W], the GEMV vector of the update
_ONES: dict = {}
