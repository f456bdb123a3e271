"""Short depthwise causal conv1d (the causal-conv1d package's API): prefill and in-place decode update.

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (W-1) + k])

Rounding as the transformers fallback (`interns2_fast.reference`): inputs rounded to the weight's
dtype, taps accumulated in fp32, the sum rounded to the weight's dtype, SiLU on that (fp32 math,
rounded again to the weight's dtype), result cast to x's dtype.

Kernels (vector-only; persistent grids of vector-core size with the task loop inside):
  * `_conv1d_fwd_kernel` — prefill. One task per (batch, T tile, D tile). x is read in place with
    any strides; the tile is laid out [BLOCK_T, BLOCK_D] (D last) when x has stride 1 along D
    (the transposed projection output transformers passes in) and [BLOCK_D, BLOCK_T] (T last)
    otherwise, so that the last tile axis is the stride-1 one. The W taps are W shifted loads of
    the tile; positions before t = 0 read `initial_states` (or zeros); with `seq_idx` a tap never
    reads across a change of sequence. The task holding a row's last T tile also writes the final
    states (the last W-1 inputs) when asked. seq_idx < 0 marks padding: its outputs are zeros and it
    never enters the final states.
  * `_conv1d_update_kernel` — decode. One task per (batch, D tile): reads the old state and x,
    writes out[:, :, t] for the T new steps, then the new state (the last S inputs of
    cat(state, x), what the causal-conv1d package and the fallback leave there). Every load of
    a task precedes its stores, and tasks own disjoint rows, so the in-place update is safe.

Supported: W = 2, 3, 4 are the tested widths; any W <= 8 works (the taps are unrolled, W is a
constexpr). x any strides; weight [D, W] any strides (a contiguous copy, [D, W], is made when
needed); fp32/bf16/fp16 (mixed dtypes follow the rounding above); conv_state any strides with
S >= W - 1; T of the update any (it is a runtime loop, meant for a few steps); `seq_idx` [B, T]
(packed sequences) without `initial_states`, as in the causal-conv1d package.

Ascend notes: every tile address is an int64 scalar base (the tile origin) plus int32 offsets
linear in tl.arange, so the adapter sees strided block accesses; the stride-1 axis of x is the
tile's last axis (Triton specialises a stride equal to 1 at launch; LOWERING_CONFIGS declare it
so). Initial / final states are handed to the kernel in the tile's orientation (a [B, D, W-1]
copy when they are laid out the other way): gathers with a runtime stride along the last tile
axis overflow the Unified Buffer at these tile sizes. Under TRITON_INTERPRET the bf16 roundings
are done on the bits (`rounding.round_to`), because the interpreter truncates fp32 -> bf16.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast.device import device_guard, interpreting, persistent_grid

from . import LoweringConfig
from .rounding import round_to

MAX_WIDTH = 8
#: prefill tile: BLOCK_T x BLOCK_D (fp32 accumulator 16 KB; W shifted bf16 loads)
BLOCK_T = 32
BLOCK_D = 128
#: update tile along D
UPDATE_BLOCK_D = 128


@triton.jit
def _via(v, TY: tl.constexpr, EMULATE: tl.constexpr):
    """A loaded value (any float dtype) as fp32 after rounding to TY (the fallback's `.to(TY)`)."""
    if v.dtype == TY:
        return v.to(tl.float32)
    else:
        return round_to(v.to(tl.float32), TY, EMULATE)


@triton.jit
def _conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, out_ptr, final_ptr,
    T, D, num_t_tiles, num_d_tiles, num_tasks,
    sxb, sxd, sxt, sob, sod, sot, sib, sid, sik, ssb, sst, sfb, sfd, sfk,
    W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, CHANNEL_LAST: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_FINAL: tl.constexpr,
    SILU: tl.constexpr, EMULATE: tl.constexpr,
):
    # Addresses: an int64 scalar base per task (tile origin) plus int32 offsets inside the tile,
    # linear in tl.arange so that the Ascend adapter sees structured (strided) accesses.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    w_ty = w_ptr.dtype.element_ty
    out_ty = out_ptr.dtype.element_ty
    ar_t = tl.arange(0, BLOCK_T)
    ar_d = tl.arange(0, BLOCK_D)
    ar_f = tl.arange(0, 8)  # final-state slots (W - 1 <= 7)
    for task in range(pid, num_tasks, nprog):
        i_b = task // (num_t_tiles * num_d_tiles)
        rem = task % (num_t_tiles * num_d_tiles)
        i_t = rem // num_d_tiles
        i_d = rem % num_d_tiles
        t0 = i_t * BLOCK_T
        d0 = i_d * BLOCK_D
        b64 = tl.cast(i_b, tl.int64)
        d064 = tl.cast(d0, tl.int64)
        t064 = tl.cast(t0, tl.int64)
        m_d = (d0 + ar_d) < D
        m_t = (t0 + ar_t) < T
        x_tile = x_ptr + b64 * sxb + d064 * sxd + t064 * sxt
        if CHANNEL_LAST:  # tile [BLOCK_T, BLOCK_D]
            tt = ar_t[:, None]
            od = ar_d[None, :] * sxd
            m_out = m_t[:, None] & m_d[None, :]
        else:  # tile [BLOCK_D, BLOCK_T]
            tt = ar_t[None, :]
            od = ar_d[:, None] * sxd
            m_out = m_t[None, :] & m_d[:, None]
        if HAS_SEQ:
            seq_tile = seq_ptr + b64 * ssb + t064 * sst
            seq_t = tl.load(seq_tile + tt * sst, mask=(t0 + tt) < T, other=0)
        acc = tl.zeros((BLOCK_T, BLOCK_D) if CHANNEL_LAST else (BLOCK_D, BLOCK_T), dtype=tl.float32)
        for k in tl.static_range(W):
            s = W - 1 - k
            m_src = m_out & ((t0 + tt) >= s)
            if HAS_SEQ:
                seq_s = tl.load(seq_tile + (tt - s) * sst, mask=((t0 + tt) < T) & ((t0 + tt) >= s), other=0)
                m_src = m_src & (seq_s == seq_t)
            xv = _via(tl.load(x_tile + (tt - s) * sxt + od, mask=m_src, other=0.0), w_ty, EMULATE)
            if HAS_INIT:
                if t0 < s:  # only the first T tile reaches back into the initial states
                    # position t0 + tt - s < 0 is initial_states[..., W - 1 + t0 + tt - s]
                    i_tile = init_ptr + b64 * sib + d064 * sid
                    if CHANNEL_LAST:
                        oi = ar_d[None, :] * sid
                    else:
                        oi = ar_d[:, None] * sid
                    m_init = m_out & ((t0 + tt) < s)
                    iv = tl.load(i_tile + (t0 + tt + (W - 1 - s)) * sik + oi, mask=m_init, other=0.0)
                    xv += _via(iv, w_ty, EMULATE)
            # weight is contiguous [D, W] (the launcher makes it so): int32 offsets, constexpr row stride
            wk = tl.load(w_ptr + (d0 + ar_d) * W + k, mask=m_d, other=0.0).to(tl.float32)
            if CHANNEL_LAST:
                acc += xv * wk[None, :]
            else:
                acc += xv * wk[:, None]
        if HAS_BIAS:
            bv = _via(tl.load(bias_ptr + d0 + ar_d, mask=m_d, other=0.0), w_ty, EMULATE)
            if CHANNEL_LAST:
                acc += bv[None, :]
            else:
                acc += bv[:, None]
        acc = round_to(acc, w_ty, EMULATE)
        if SILU:
            acc = round_to(acc / (1.0 + tl.exp(-acc)), w_ty, EMULATE)
        if HAS_SEQ:  # seq_idx < 0 marks padding: zeros there (as the causal-conv1d package)
            acc = tl.where(seq_t >= 0, acc, 0.0)
        if CHANNEL_LAST:
            oo = ar_t[:, None] * sot + ar_d[None, :] * sod
        else:
            oo = ar_t[None, :] * sot + ar_d[:, None] * sod
        tl.store(out_ptr + b64 * sob + d064 * sod + t064 * sot + oo, round_to(acc, out_ty, EMULATE).to(out_ty),
                 mask=m_out)

        if HAS_FINAL:
            if i_t == num_t_tiles - 1:
                # final[b, d, j] = input at position T - (W-1) + j (initial states / zeros before 0)
                m_f = ar_f < W - 1
                if CHANNEL_LAST:
                    jj = ar_f[:, None]
                    mf = m_f[:, None] & m_d[None, :]
                    od_f = ar_d[None, :]
                else:
                    jj = ar_f[None, :]
                    mf = m_f[None, :] & m_d[:, None]
                    od_f = ar_d[:, None]
                pp = T - (W - 1) + jj
                row = x_ptr + b64 * sxb + d064 * sxd
                fv = tl.load(row + tl.cast(pp, tl.int64) * sxt + od_f * sxd, mask=mf & (pp >= 0), other=0.0)
                fv = fv.to(tl.float32)
                if HAS_SEQ:
                    seq_row = seq_ptr + b64 * ssb
                    seq_last = tl.load(seq_row + tl.cast(T - 1, tl.int64) * sst)
                    seq_p = tl.load(seq_row + tl.cast(pp, tl.int64) * sst, mask=(pp >= 0) & (jj < W - 1), other=0)
                    fv = tl.where((seq_p == seq_last) & (seq_p >= 0), fv, 0.0)
                if HAS_INIT:
                    irow = init_ptr + b64 * sib + d064 * sid
                    iv = tl.load(irow + (pp + (W - 1)) * sik + od_f * sid, mask=mf & (pp < 0), other=0.0)
                    fv += iv.to(tl.float32)
                tl.store(final_ptr + b64 * sfb + d064 * sfd + jj * sfk + od_f * sfd,
                         fv.to(final_ptr.dtype.element_ty), mask=mf)


@triton.jit
def _conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr,
    T, D, S, num_d_tiles, num_tasks,
    sxb, sxd, sxt, ssb, ssd, sss, swd, swk, sob, sod, sot,
    W: tl.constexpr, BLOCK_D: tl.constexpr, S_BLOCK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, EMULATE: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    w_ty = w_ptr.dtype.element_ty
    out_ty = out_ptr.dtype.element_ty
    ar_d = tl.arange(0, BLOCK_D)
    ar_s = tl.arange(0, S_BLOCK)
    for task in range(pid, num_tasks, nprog):
        i_b = task // num_d_tiles
        i_d = task % num_d_tiles
        b64 = tl.cast(i_b, tl.int64)
        offs_d = i_d * BLOCK_D + ar_d
        m_d = offs_d < D
        d64 = tl.cast(offs_d, tl.int64)
        x_row = x_ptr + b64 * sxb + d64 * sxd
        s_row = state_ptr + b64 * ssb + d64 * ssd
        # The new state, read before anything is written: full[T + j] of full = cat(state, x).
        src = ar_s[None, :] + T
        m_s = m_d[:, None] & (ar_s[None, :] < S)
        # (values pass through the weight's dtype on the way, as the fallback's `.to(weight.dtype)` does)
        s_ty = state_ptr.dtype.element_ty
        new_state = _via(tl.load(s_row[:, None] + tl.cast(src, tl.int64) * sss, mask=m_s & (src < S),
                                 other=0.0), w_ty, EMULATE)
        new_state += _via(tl.load(x_row[:, None] + tl.cast(src - S, tl.int64) * sxt, mask=m_s & (src >= S),
                                  other=0.0), w_ty, EMULATE)
        new_state = round_to(new_state, s_ty, EMULATE).to(s_ty)
        if HAS_BIAS:
            bv = _via(tl.load(bias_ptr + offs_d, mask=m_d, other=0.0), w_ty, EMULATE)
        for t in range(T):
            acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
            for k in tl.static_range(W):
                p = S - (W - 1) + t + k  # position in full = cat(state, x)
                wk = tl.load(w_ptr + d64 * swd + k * swk, mask=m_d, other=0.0).to(tl.float32)
                if p < S:
                    v = tl.load(s_row + tl.cast(p, tl.int64) * sss, mask=m_d, other=0.0)
                else:
                    v = tl.load(x_row + tl.cast(p - S, tl.int64) * sxt, mask=m_d, other=0.0)
                acc += _via(v, w_ty, EMULATE) * wk
            if HAS_BIAS:
                acc += bv
            acc = round_to(acc, w_ty, EMULATE)
            if SILU:
                acc = round_to(acc / (1.0 + tl.exp(-acc)), w_ty, EMULATE)
            tl.store(out_ptr + b64 * sob + d64 * sod + tl.cast(t, tl.int64) * sot,
                     round_to(acc, out_ty, EMULATE).to(out_ty), mask=m_d)
        tl.store(s_row[:, None] + tl.cast(ar_s[None, :], tl.int64) * sss, new_state, mask=m_s)


def _silu(activation) -> bool:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d[triton]: activation must be None, 'silu' or 'swish', got {activation!r}")
    return activation is not None


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """See `interns2_fast.ops.causal_conv1d_fn`. x any strides (read in place); out has x's layout
    when x is dense (the transposed projection output stays channel-last), else contiguous. Final
    states made here are [B, D, W-1] in the tile's orientation (channel-last for channel-last x);
    `final_states_out`, when given, is filled whatever its strides."""
    B, D, T = x.shape
    W = weight.shape[1]
    if W > MAX_WIDTH:
        raise ValueError(f"causal_conv1d_fn[triton]: kernel width W <= {MAX_WIDTH} supported, got {W}")
    if seq_idx is not None and initial_states is not None:
        raise NotImplementedError("causal_conv1d_fn[triton]: seq_idx together with initial_states is not supported")
    silu = _silu(activation)
    w = weight.contiguous()  # [D, W], tiny
    out = torch.empty_like(x)
    channel_last = T == 1 or x.stride(2) != 1  # the stride-1 axis (if any) is the tile's last
    unit_dim = 1 if channel_last else 2
    # initial / final states in the same orientation as the tile (stride 1 along the tile's last
    # axis), so that their tile accesses are structured; copies are [B, D, W-1], tiny.
    init = initial_states
    if init is not None and init.stride(unit_dim) != 1 and W > 2:
        init = init.transpose(unit_dim, 3 - unit_dim).contiguous().transpose(unit_dim, 3 - unit_dim)
    final = None
    if return_final_states:
        final = final_states_out if final_states_out is not None else (
            x.new_empty(B, W - 1, D).transpose(1, 2) if channel_last else x.new_empty(B, D, W - 1))
    fin = final
    if fin is not None and fin.stride(unit_dim) != 1 and W > 2:
        fin = (x.new_empty(B, W - 1, D).transpose(1, 2) if channel_last else x.new_empty(B, D, W - 1))
    b = bias if bias is None or bias.stride(0) == 1 else bias.contiguous()
    num_t_tiles = triton.cdiv(T, BLOCK_T)
    num_d_tiles = triton.cdiv(D, BLOCK_D)
    num_tasks = B * num_t_tiles * num_d_tiles
    if num_tasks > 0:
        dummy = x
        sib = init.stride() if init is not None else (0, 0, 0)
        ssq = seq_idx.stride() if seq_idx is not None else (0, 0)
        sfn = fin.stride() if fin is not None else (0, 0, 0)
        init = init if init is not None else dummy
        seq = seq_idx if seq_idx is not None else dummy
        fin = fin if fin is not None else dummy
        grid = (persistent_grid(x.device, num_tasks, cube=False),)
        with device_guard(x):
            _conv1d_fwd_kernel[grid](
                x, w, b if b is not None else w, init, seq, out, fin,
                T, D, num_t_tiles, num_d_tiles, num_tasks,
                *x.stride(), *out.stride(), *sib, *ssq, *sfn,
                W=W, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D, CHANNEL_LAST=channel_last,
                HAS_BIAS=bias is not None, HAS_INIT=initial_states is not None, HAS_SEQ=seq_idx is not None,
                HAS_FINAL=final is not None, SILU=silu, EMULATE=interpreting(),
            )
        if final is not None and fin is not final:
            final.copy_(fin)
    elif final is not None:  # T == 0: the final states are the initial states (or zeros)
        final.copy_(initial_states if initial_states is not None else torch.zeros_like(final))
    if not return_final_states:
        return out
    return out, final


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """See `interns2_fast.ops.causal_conv1d_update`: conv_state [B, D, S] (S >= W-1, any strides)
    is updated in place to the last S inputs; returns out [B, D, T] (contiguous)."""
    B, D, T = x.shape
    S = conv_state.shape[2]
    W = weight.shape[1]
    if W > MAX_WIDTH:
        raise ValueError(f"causal_conv1d_update[triton]: kernel width W <= {MAX_WIDTH} supported, got {W}")
    silu = _silu(activation)
    out = torch.empty(B, D, T, dtype=x.dtype, device=x.device)
    num_d_tiles = triton.cdiv(D, UPDATE_BLOCK_D)
    num_tasks = B * num_d_tiles
    if num_tasks == 0 or T == 0:
        return out
    grid = (persistent_grid(x.device, num_tasks, cube=False),)
    with device_guard(x):
        _conv1d_update_kernel[grid](
            x, conv_state, weight, bias if bias is not None else weight, out,
            T, D, S, num_d_tiles, num_tasks,
            *x.stride(), *conv_state.stride(), *weight.stride(), *out.stride(),
            W=W, BLOCK_D=UPDATE_BLOCK_D, S_BLOCK=triton.next_power_of_2(max(S, 1)),
            HAS_BIAS=bias is not None, SILU=silu, EMULATE=interpreting(),
        )
    return out


def _fwd_config(name, channel_last, unit_extra=(), **flags):
    """A production prefill launch. Triton specialises integer arguments equal to 1 at launch, so
    the stride-1 axis of x and out (D for channel-last input, T otherwise) is a constant here, as in
    the binary a real launch compiles; the other strides and T, D are runtime arguments."""
    unit = (("sxd", "sod") if channel_last else ("sxt", "sot")) + tuple(unit_extra)
    ints = ["T", "D", "num_t_tiles", "num_d_tiles", "num_tasks", "sxb", "sxd", "sxt", "sob", "sod",
            "sot", "sib", "sid", "sik", "ssb", "sst", "sfb", "sfd", "sfk"]
    sig = {p: "*bf16" for p in ("x_ptr", "w_ptr", "bias_ptr", "init_ptr")}
    sig["seq_ptr"] = "*i32"
    sig.update({"out_ptr": "*bf16", "final_ptr": "*bf16"})
    sig.update({n: "i32" for n in ints if n not in unit})
    constants = dict(W=4, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D, CHANNEL_LAST=channel_last, HAS_BIAS=False,
                     HAS_INIT=False, HAS_SEQ=False, HAS_FINAL=False, SILU=True, EMULATE=False)
    constants.update(flags)
    constants.update({n: 1 for n in unit})
    return LoweringConfig(name, _conv1d_fwd_kernel, sig, constants)


_UPDATE_SIGNATURE = {
    "x_ptr": "*bf16", "state_ptr": "*bf16", "w_ptr": "*bf16", "bias_ptr": "*bf16", "out_ptr": "*bf16",
    **{name: "i32" for name in ("T", "D", "S", "num_d_tiles", "num_tasks", "sxb", "sxd", "sxt", "ssb", "ssd", "sss",
                                "swd", "swk", "sob", "sod", "sot")},
}

# Intern-S2: D = 2*2048 + 4096 = 8192 channels, W = 4, SiLU, no bias, bf16; T and B are runtime
# arguments. The model's prefill input is the transposed projection output (channel-last).
LOWERING_CONFIGS = [
    _fwd_config("conv1d/fwd_channel_last_w4_bf16", True),
    _fwd_config("conv1d/fwd_time_contiguous_w4_bf16", False),
    # initial / final states: the launcher hands them over channel-last too (sid = sfd = 1)
    _fwd_config("conv1d/fwd_channel_last_w4_bias_init_final_bf16", True, HAS_BIAS=True, HAS_INIT=True,
                HAS_FINAL=True, unit_extra=("sid", "sfd")),
    _fwd_config("conv1d/fwd_channel_last_w4_seq_idx_final_bf16", True, HAS_SEQ=True, HAS_FINAL=True),
    # decode: the transformers cache keeps S = W = 4 steps (S_BLOCK 4); T = 1 (a runtime loop).
    LoweringConfig("conv1d/update_w4_s4_bf16", _conv1d_update_kernel, _UPDATE_SIGNATURE,
                   dict(W=4, BLOCK_D=UPDATE_BLOCK_D, S_BLOCK=4, HAS_BIAS=False, SILU=True, EMULATE=False)),
]
