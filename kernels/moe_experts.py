"""Grouped SwiGLU expert FFNs over a routing plan, a decode path, and a deterministic combine.

Weights are read as stored: `gate_up_proj [E, 2I, H]` (gate rows 0..I-1, up rows I..2I-1) and
`down_proj [E, H, I]`; the GEMM kernels load each weight tile as stored ([BLOCK_N, BLOCK_K], stride 1
along the reduction axis) and transpose it on chip for tl.dot, so no transposed copy of the weights
exists. Plain pointer arithmetic only (no block pointers: NVIDIA triton 3.9 removed them; the kernels
run on triton-ascend 3.2 and NVIDIA triton 3.6-3.9 alike).

Prefill (T*k > DECODE_SLOTS), over a `RoutingPlan` (interns2_fast.ops.moe) built with
block_size = BLOCK_M:
  1. `_gate_up_kernel`: per (row block, I tile): rows are slots of one expert (sentinel rows
     masked); acc_g, acc_u = x @ W_gate^T, x @ W_up^T (fp32); inter = silu(acc_g) * acc_u
     stored in the hidden dtype (as transformers' eager path rounds it).
  2. `_down_kernel`: per (row block, H tile): y = (inter @ W_down^T) * routing_weight (fp32),
     stored at the row's SLOT (s = t*k + j) of y [T*k, H] fp32.
  Both are cube kernels on a persistent grid; blocks at or past plan.num_rows are skipped on the
  device (the plan's shapes are static, its row count lives on the device).
Decode (T*k <= DECODE_SLOTS): no plan. `_decode_gate_up_kernel` / `_decode_down_kernel` run one
task per (slot, N tile) as vector GEMVs that read the selected experts' weight rows once.
Combine (`_combine_kernel`, vector): out[t] = sum_{j=0..k-1} y[t*k + j] in that order (no
atomics: bit-reproducible), + sigmoid(shared_gate_logit[t]) * shared_out[t] when given.

Bad expert ids (outside [0, E); the ops reject them for host tensors, a device tensor is not read
back): every kernel clamps the expert it reads weights of into [0, E), the plan leaves such slots
out, and the combine skips them, so they contribute nothing and nothing is read out of bounds.

Any H and I: every kernel masks the tails of both (loads zero-filled past the data, stores masked),
and the GEMM tiles are powers of two at least MIN_DOT wide in each tl.dot dimension, so a narrow H or
I (or a plan block with few rows) still gives tl.dot operands of 16 or more. Tiles are sized for the
Ascend 192 KB Unified Buffer (see LOWERING_CONFIGS; the production H=2048, I=512 fill whole tiles). Under the Triton
interpreter the dot operands are cast to fp32 (bf16 tl.dot is wrong there); on a device bf16/fp16
tiles go to tl.dot as they are, with fp32 accumulation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast import device as _device

from . import LoweringConfig

#: Up to this many (token, expert) slots the decode kernels run instead of the plan GEMMs.
DECODE_SLOTS = 64
#: The smallest tl.dot operand dimension (Triton's M, N, K >= 16): GEMM tiles are at least this wide,
#: zero-filled past a narrow H or I.
MIN_DOT = 16

# Tile sizes (Ascend UB budget checked by the lowering gate).
GU_BLOCK_N = 64      # I columns per gate_up task (gate and up tiles of this width each)
GU_BLOCK_K = 128     # H reduction step
DN_BLOCK_N = 128     # H columns per down task
DN_BLOCK_K = 128     # I reduction step
DEC_BLOCK_N = 32     # output rows per decode GEMV task
DEC_BLOCK_K = 256    # reduction step of the decode GEMVs
CB_BLOCK_T = 4       # tokens per combine task
CB_BLOCK_H = 512     # hidden columns per combine task


@triton.jit
def _clamp_expert(e, E):
    """An expert id clamped into [0, E): the weight address stays in bounds whatever the id (the
    combine drops the slots of out-of-range ids, so what a clamped id computes is never used)."""
    return tl.minimum(tl.maximum(e, 0), E - 1)


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, inter_ptr, sorted_slots_ptr, block_expert_ptr, num_rows_ptr,
    num_slots, num_tasks, E,
    H: tl.constexpr, I: tl.constexpr, K_TOP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_tiles: tl.constexpr = (I + BLOCK_N - 1) // BLOCK_N
    num_rows = tl.load(num_rows_ptr)
    for task in range(pid, num_tasks, nprog):
        mb = task // n_tiles
        nt = task % n_tiles
        row0 = mb * BLOCK_M
        if row0 < num_rows:
            e64 = tl.cast(_clamp_expert(tl.load(block_expert_ptr + mb), E), tl.int64)
            rows = row0 + tl.arange(0, BLOCK_M)
            slots = tl.load(sorted_slots_ptr + rows)
            valid = (slots >= 0) & (slots < num_slots)
            tok64 = tl.cast(tl.where(valid, slots // K_TOP, 0), tl.int64)
            ar_n = tl.arange(0, BLOCK_N)
            ar_k = tl.arange(0, BLOCK_K)
            cmask = nt * BLOCK_N + ar_n < I  # the masked tail of the last I tile
            cols64 = tl.cast(nt * BLOCK_N + ar_n, tl.int64)
            # the tile's rows of W_gate (W_up I rows further): an int64 scalar base, int32 offsets
            w_tile = w_ptr + e64 * (2 * I * H) + tl.cast(nt * BLOCK_N, tl.int64) * H
            acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                kk = k0 + ar_k
                kmask = kk < H
                a = tl.load(x_ptr + tok64[:, None] * H + kk[None, :], mask=valid[:, None] & kmask[None, :],
                            other=0.0)
                # [BLOCK_N, BLOCK_K] tiles of the stored rows (stride 1 along K), transposed on chip
                # for the dot: plain pointer arithmetic (NVIDIA triton 3.9 has no block pointers).
                # Tails past I or H load as zeros, so they add nothing to the dot.
                w_off = ar_n[:, None] * H + kk[None, :]
                w_mask = cmask[:, None] & kmask[None, :]
                wg = tl.load(w_tile + w_off, mask=w_mask, other=0.0)
                wu = tl.load(w_tile + I * H + w_off, mask=w_mask, other=0.0)
                if DOT_FP32:
                    a = a.to(tl.float32)
                    wg = wg.to(tl.float32)
                    wu = wu.to(tl.float32)
                a2 = a + 0.0  # tl.dot may overwrite its left operand in UB
                acc_g += tl.dot(a, tl.trans(wg))
                acc_u += tl.dot(a2, tl.trans(wu))
            h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
            rows64 = tl.cast(rows, tl.int64)
            tl.store(inter_ptr + rows64[:, None] * I + cols64[None, :], h.to(inter_ptr.dtype.element_ty),
                     mask=cmask[None, :])


@triton.jit
def _down_kernel(
    inter_ptr, w_ptr, topk_w_ptr, y_ptr, sorted_slots_ptr, block_expert_ptr, num_rows_ptr,
    num_slots, num_tasks, E,
    H: tl.constexpr, I: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_tiles: tl.constexpr = (H + BLOCK_N - 1) // BLOCK_N
    num_rows = tl.load(num_rows_ptr)
    for task in range(pid, num_tasks, nprog):
        mb = task // n_tiles
        nt = task % n_tiles
        row0 = mb * BLOCK_M
        if row0 < num_rows:
            e64 = tl.cast(_clamp_expert(tl.load(block_expert_ptr + mb), E), tl.int64)
            rows = row0 + tl.arange(0, BLOCK_M)
            rows64 = tl.cast(rows, tl.int64)
            slots = tl.load(sorted_slots_ptr + rows)
            valid = (slots >= 0) & (slots < num_slots)
            ar_n = tl.arange(0, BLOCK_N)
            ar_k = tl.arange(0, BLOCK_K)
            cmask = nt * BLOCK_N + ar_n < H  # the masked tail of the last H tile
            cols64 = tl.cast(nt * BLOCK_N + ar_n, tl.int64)
            w_tile = w_ptr + e64 * (H * I) + tl.cast(nt * BLOCK_N, tl.int64) * I
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, I, BLOCK_K):
                kk = k0 + ar_k
                kmask = kk < I
                a = tl.load(inter_ptr + rows64[:, None] * I + kk[None, :], mask=kmask[None, :], other=0.0)
                # [BLOCK_N, BLOCK_K], stride 1 along K; tails past H or I load as zeros
                w = tl.load(w_tile + ar_n[:, None] * I + kk[None, :], mask=cmask[:, None] & kmask[None, :],
                            other=0.0)
                if DOT_FP32:
                    a = a.to(tl.float32)
                    w = w.to(tl.float32)
                acc += tl.dot(a, tl.trans(w))
            scale = tl.load(topk_w_ptr + tl.where(valid, slots, 0), mask=valid, other=0.0)
            y = acc * scale[:, None]
            slot64 = tl.cast(tl.where(valid, slots, 0), tl.int64)
            tl.store(y_ptr + slot64[:, None] * H + cols64[None, :], y, mask=valid[:, None] & cmask[None, :])


@triton.jit
def _swiglu_rows(x_row, wg_rows, wu_rows, cols64, cmask, K: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """silu(Wg[cols] @ x) * (Wu[cols] @ x) in fp32 for one input row x (length K, stride 1) and the
    output rows `cols64` of two [*, K] weight matrices (stride K); masked along both axes."""
    acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < K
        x = tl.load(x_row + kk, mask=kmask, other=0.0).to(tl.float32)
        m2 = cmask[:, None] & kmask[None, :]
        wg = tl.load(wg_rows + cols64[:, None] * K + kk[None, :], mask=m2, other=0.0).to(tl.float32)
        wu = tl.load(wu_rows + cols64[:, None] * K + kk[None, :], mask=m2, other=0.0).to(tl.float32)
        acc_g += tl.sum(wg * x[None, :], axis=1)
        acc_u += tl.sum(wu * x[None, :], axis=1)
    return acc_g / (1.0 + tl.exp(-acc_g)) * acc_u


@triton.jit
def _gemv_rows(v_row, w_rows, cols64, cmask, K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """W[cols] @ v in fp32 for one row v (length K) and the rows `cols64` of a [*, K] matrix."""
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < K
        v = tl.load(v_row + kk, mask=kmask, other=0.0).to(tl.float32)
        w = tl.load(w_rows + cols64[:, None] * K + kk[None, :], mask=cmask[:, None] & kmask[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(w * v[None, :], axis=1)
    return acc


@triton.jit
def _decode_gate_up_kernel(
    x_ptr, w_ptr, ids_ptr, inter_ptr, num_tasks, E,
    H: tl.constexpr, I: tl.constexpr, K_TOP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_tiles: tl.constexpr = (I + BLOCK_N - 1) // BLOCK_N
    ar_n = tl.arange(0, BLOCK_N)
    for task in range(pid, num_tasks, nprog):
        s = task // n_tiles
        nt = task % n_tiles
        e64 = tl.cast(_clamp_expert(tl.load(ids_ptr + s), E), tl.int64)
        t64 = tl.cast(s // K_TOP, tl.int64)
        cols = nt * BLOCK_N + ar_n
        cmask = cols < I
        cols64 = tl.cast(cols, tl.int64)
        w_base = w_ptr + e64 * (2 * I * H)
        h = _swiglu_rows(x_ptr + t64 * H, w_base, w_base + I * H, cols64, cmask, H, BLOCK_K, BLOCK_N)
        tl.store(inter_ptr + tl.cast(s, tl.int64) * I + cols64, h.to(inter_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _decode_down_kernel(
    inter_ptr, w_ptr, ids_ptr, topk_w_ptr, y_ptr, num_tasks, E,
    H: tl.constexpr, I: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_tiles: tl.constexpr = (H + BLOCK_N - 1) // BLOCK_N
    ar_n = tl.arange(0, BLOCK_N)
    for task in range(pid, num_tasks, nprog):
        s = task // n_tiles
        nt = task % n_tiles
        s64 = tl.cast(s, tl.int64)
        e64 = tl.cast(_clamp_expert(tl.load(ids_ptr + s), E), tl.int64)
        cols = nt * BLOCK_N + ar_n
        cmask = cols < H
        cols64 = tl.cast(cols, tl.int64)
        acc = _gemv_rows(inter_ptr + s64 * I, w_ptr + e64 * (H * I), cols64, cmask, I, BLOCK_K, BLOCK_N)
        scale = tl.load(topk_w_ptr + s)
        tl.store(y_ptr + s64 * H + cols64, acc * scale, mask=cmask)


@triton.jit
def _combine_kernel(
    y_ptr, ids_ptr, out_ptr, shared_ptr, shared_gate_ptr, num_tokens, num_tasks, E,
    H: tl.constexpr, K_TOP: tl.constexpr, HAS_SHARED: tl.constexpr, HAS_SHARED_GATE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    h_tiles: tl.constexpr = (H + BLOCK_H - 1) // BLOCK_H
    for task in range(pid, num_tasks, nprog):
        tb = task // h_tiles
        ht = task % h_tiles
        toks = tb * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = toks < num_tokens
        toks64 = tl.cast(tl.where(tmask, toks, 0), tl.int64)
        cols = ht * BLOCK_H + tl.arange(0, BLOCK_H)
        cmask = cols < H
        cols64 = tl.cast(cols, tl.int64)
        acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
        for j in tl.static_range(K_TOP):  # fixed order j = 0..k-1: bit-reproducible
            # a slot whose expert id is outside [0, E) contributes nothing (its y row may be unset)
            e = tl.load(ids_ptr + toks64 * K_TOP + j, mask=tmask, other=-1)
            ok = tmask & (e >= 0) & (e < E)
            acc += tl.load(y_ptr + (toks64[:, None] * K_TOP + j) * H + cols64[None, :],
                           mask=ok[:, None] & cmask[None, :], other=0.0)
        if HAS_SHARED:
            sh = tl.load(shared_ptr + toks64[:, None] * H + cols64[None, :], mask=tmask[:, None] & cmask[None, :],
                         other=0.0).to(tl.float32)
            if HAS_SHARED_GATE:
                g = tl.load(shared_gate_ptr + toks64, mask=tmask, other=0.0).to(tl.float32)
                sh = sh / (1.0 + tl.exp(-g))[:, None]
            acc += sh
        tl.store(out_ptr + toks64[:, None] * H + cols64[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=tmask[:, None] & cmask[None, :])


@triton.jit
def _shared_decode_gate_up_kernel(
    x_ptr, w_ptr, ids_ptr, sg_ptr, su_ptr, sgate_ptr, inter_ptr, sinter_ptr, glogit_ptr,
    num_tokens, num_tasks, E,
    H: tl.constexpr, I: tl.constexpr, IS: tl.constexpr, K_TOP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One launch for the k routed slots AND the shared expert of every token (the k + 1-th slot).
    Tasks: [0, T*k*nI) routed (slot, I tile); then T*nS shared (token, IS tile); then T gate logits
    (x[t] . w_gate, rounded to hidden's dtype as the Linear H -> 1 returns it)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_i: tl.constexpr = (I + BLOCK_N - 1) // BLOCK_N
    n_s: tl.constexpr = (IS + BLOCK_N - 1) // BLOCK_N
    routed = num_tokens * K_TOP * n_i
    shared = routed + num_tokens * n_s
    ar_n = tl.arange(0, BLOCK_N)
    for task in range(pid, num_tasks, nprog):
        if task < routed:
            s = task // n_i
            nt = task % n_i
            e64 = tl.cast(_clamp_expert(tl.load(ids_ptr + s), E), tl.int64)
            t64 = tl.cast(s // K_TOP, tl.int64)
            cols = nt * BLOCK_N + ar_n
            cmask = cols < I
            cols64 = tl.cast(cols, tl.int64)
            w_base = w_ptr + e64 * (2 * I * H)
            h = _swiglu_rows(x_ptr + t64 * H, w_base, w_base + I * H, cols64, cmask, H, BLOCK_K, BLOCK_N)
            tl.store(inter_ptr + tl.cast(s, tl.int64) * I + cols64, h.to(inter_ptr.dtype.element_ty), mask=cmask)
        elif task < shared:
            r = task - routed
            t64 = tl.cast(r // n_s, tl.int64)
            nt = r % n_s
            cols = nt * BLOCK_N + ar_n
            cmask = cols < IS
            cols64 = tl.cast(cols, tl.int64)
            h = _swiglu_rows(x_ptr + t64 * H, sg_ptr, su_ptr, cols64, cmask, H, BLOCK_K, BLOCK_N)
            tl.store(sinter_ptr + t64 * IS + cols64, h.to(sinter_ptr.dtype.element_ty), mask=cmask)
        else:
            t64 = tl.cast(task - shared, tl.int64)
            acc = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                kmask = kk < H
                x = tl.load(x_ptr + t64 * H + kk, mask=kmask, other=0.0).to(tl.float32)
                wv = tl.load(sgate_ptr + kk, mask=kmask, other=0.0).to(tl.float32)
                acc += x * wv
            g = tl.sum(acc, axis=0)
            tl.store(glogit_ptr + t64, g.to(glogit_ptr.dtype.element_ty))


@triton.jit
def _shared_decode_down_combine_kernel(
    inter_ptr, w_ptr, ids_ptr, topk_w_ptr, sinter_ptr, sd_ptr, glogit_ptr, out_ptr,
    num_tasks, E,
    H: tl.constexpr, I: tl.constexpr, IS: tl.constexpr, K_TOP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per (token, H tile): the k routed down GEMVs weighted by the routing weights and summed in
    the fixed order j = 0..k-1, then + sigmoid(gate logit) * the shared expert's down GEMV (slot k),
    all in fp32, stored once in hidden's dtype. A slot whose id is outside [0, E) adds nothing."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    n_h: tl.constexpr = (H + BLOCK_N - 1) // BLOCK_N
    ar_n = tl.arange(0, BLOCK_N)
    for task in range(pid, num_tasks, nprog):
        t64 = tl.cast(task // n_h, tl.int64)
        nt = task % n_h
        cols = nt * BLOCK_N + ar_n
        cmask = cols < H
        cols64 = tl.cast(cols, tl.int64)
        out = tl.zeros([BLOCK_N], dtype=tl.float32)
        for j in range(K_TOP):  # fixed order: bit-reproducible
            s64 = t64 * K_TOP + j
            e = tl.load(ids_ptr + s64)
            ok = (e >= 0) & (e < E)
            e64 = tl.cast(_clamp_expert(e, E), tl.int64)
            y = _gemv_rows(inter_ptr + s64 * I, w_ptr + e64 * (H * I), cols64, cmask, I, BLOCK_K, BLOCK_N)
            wt = tl.load(topk_w_ptr + s64).to(tl.float32)
            out += tl.where(ok, y * wt, 0.0)
        ys = _gemv_rows(sinter_ptr + t64 * IS, sd_ptr, cols64, cmask, IS, BLOCK_K, BLOCK_N)
        g = tl.load(glogit_ptr + t64).to(tl.float32)
        out += ys / (1.0 + tl.exp(-g))
        tl.store(out_ptr + t64 * H + cols64, out.to(out_ptr.dtype.element_ty), mask=cmask)


def block_size_for(num_slots: int, num_experts: int) -> int:
    """Rows per GEMM block (= the plan's block_size): about the mean rows per hit expert, 16..64."""
    per_expert = num_slots / max(1, min(num_experts, num_slots))
    if per_expert <= 24:
        return 16
    if per_expert <= 48:
        return 32
    return 64


def _pow2_blk(dim: int, block: int) -> int:
    """A power-of-two tile no larger than `block` and no larger than dim rounded up to a power of two
    (the masked kernels take any dim)."""
    return min(block, triton.next_power_of_2(max(1, dim)))


def _dot_blk(dim: int, block: int) -> int:
    """A GEMM tile along a tl.dot dimension: `_pow2_blk`, but at least MIN_DOT (the masked loads
    zero-fill what lies past `dim`)."""
    return max(MIN_DOT, _pow2_blk(dim, block))


def combine(y: torch.Tensor, ids: torch.Tensor, E: int, T: int, k: int, out_dtype: torch.dtype,
            shared_expert_output=None, shared_expert_gate=None) -> torch.Tensor:
    """out[t] = sum_j y[t*k + j] over the slots whose id (ids [T*k] int32) is in [0, E)
    (+ sigmoid(gate[t]) * shared[t]); y [T*k, H] fp32."""
    H = y.shape[1]
    out = torch.empty(T, H, dtype=out_dtype, device=y.device)
    bh = _pow2_blk(H, CB_BLOCK_H)
    num_tasks = triton.cdiv(T, CB_BLOCK_T) * triton.cdiv(H, bh)
    has_shared = shared_expert_output is not None
    has_gate = has_shared and shared_expert_gate is not None
    sh = shared_expert_output.contiguous() if has_shared else y
    gl = shared_expert_gate.reshape(-1).contiguous() if has_gate else y
    grid = (_device.persistent_grid(y.device, num_tasks, cube=False),)
    with _device.device_guard(y):
        _combine_kernel[grid](y, ids, out, sh, gl, T, num_tasks, E, H=H, K_TOP=k, HAS_SHARED=has_shared,
                              HAS_SHARED_GATE=has_gate, BLOCK_T=CB_BLOCK_T, BLOCK_H=bh)
    return out


def moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, *, shared_expert_output=None,
                shared_expert_gate=None, plan_fn=None, force_plan: bool = False):
    """Triton expert FFNs. `plan_fn(topk_ids, E, block_size) -> RoutingPlan` builds the routing plan
    for the prefill path (interns2_fast.ops.moe.moe_align). `force_plan` skips the decode path."""
    T, H = hidden.shape
    k = topk_ids.shape[1]
    E, two_i, _ = gate_up_proj.shape
    I = two_i // 2
    S = T * k
    dev = hidden.device
    x = hidden.contiguous()
    gu = gate_up_proj.contiguous()
    dn = down_proj.contiguous()
    w = topk_weights.reshape(-1).to(torch.float32).contiguous()
    ids = topk_ids.reshape(-1)
    if ids.dtype != torch.int32:  # int64 ids: clamp before narrowing, so a bad id stays out of range
        ids = ids.clamp(-1, E).to(torch.int32)
    ids = ids.contiguous()
    y = torch.empty(S, H, dtype=torch.float32, device=dev)
    dot_fp32 = _device.interpreting() or hidden.dtype == torch.float32
    with _device.device_guard(hidden):
        if S <= DECODE_SLOTS and not force_plan:
            inter = torch.empty(S, I, dtype=hidden.dtype, device=dev)
            bn, bk = _pow2_blk(I, DEC_BLOCK_N), _pow2_blk(H, DEC_BLOCK_K)
            nt = S * triton.cdiv(I, bn)
            _decode_gate_up_kernel[(_device.persistent_grid(dev, nt, cube=False),)](
                x, gu, ids, inter, nt, E, H=H, I=I, K_TOP=k, BLOCK_N=bn, BLOCK_K=bk)
            bn, bk = _pow2_blk(H, DEC_BLOCK_N), _pow2_blk(I, DEC_BLOCK_K)
            nt = S * triton.cdiv(H, bn)
            _decode_down_kernel[(_device.persistent_grid(dev, nt, cube=False),)](
                inter, dn, ids, w, y, nt, E, H=H, I=I, BLOCK_N=bn, BLOCK_K=bk)
        else:
            bm = block_size_for(S, E)
            plan = plan_fn(topk_ids, E, bm)
            max_rows = plan.sorted_slots.shape[0]
            n_blocks = max_rows // bm
            inter = torch.empty(max_rows, I, dtype=hidden.dtype, device=dev)
            bn, bk = _dot_blk(I, GU_BLOCK_N), _dot_blk(H, GU_BLOCK_K)
            nt = n_blocks * triton.cdiv(I, bn)
            _gate_up_kernel[(_device.persistent_grid(dev, nt, cube=True),)](
                x, gu, inter, plan.sorted_slots, plan.block_expert, plan.num_rows, S, nt, E,
                H=H, I=I, K_TOP=k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_FP32=dot_fp32)
            bn, bk = _dot_blk(H, DN_BLOCK_N), _dot_blk(I, DN_BLOCK_K)
            nt = n_blocks * triton.cdiv(H, bn)
            _down_kernel[(_device.persistent_grid(dev, nt, cube=True),)](
                inter, dn, w, y, plan.sorted_slots, plan.block_expert, plan.num_rows, S, nt, E,
                H=H, I=I, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_FP32=dot_fp32)
    return combine(y, ids, E, T, k, hidden.dtype, shared_expert_output, shared_expert_gate)


def moe_experts_shared(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                       shared_down_proj, shared_gate, *, plan_fn=None, force_plan: bool = False):
    """Routed experts + the sigmoid-gated shared expert. Decode (T*k <= DECODE_SLOTS): two launches —
    `_shared_decode_gate_up_kernel` (k routed slots + the shared slot + the gate logit) and
    `_shared_decode_down_combine_kernel` (down GEMVs, routing weights, sigmoid gate, sum), reading the
    module's own weight tensors (no concatenated copy). Prefill: the shared expert as ATen linears and
    the plan GEMMs with the gated shared add fused into the combine (`moe_experts`)."""
    import torch.nn.functional as F

    T, H = hidden.shape
    k = topk_ids.shape[1]
    E, two_i, _ = gate_up_proj.shape
    I = two_i // 2
    IS = shared_gate_proj.shape[0]
    S = T * k
    if S > DECODE_SLOTS or force_plan:
        x = hidden
        shared = F.linear(F.silu(F.linear(x, shared_gate_proj)) * F.linear(x, shared_up_proj), shared_down_proj)
        return moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, shared_expert_output=shared,
                           shared_expert_gate=F.linear(x, shared_gate), plan_fn=plan_fn, force_plan=force_plan)
    dev = hidden.device
    x = hidden.contiguous()
    gu, dn = gate_up_proj.contiguous(), down_proj.contiguous()
    sg, su, sd = shared_gate_proj.contiguous(), shared_up_proj.contiguous(), shared_down_proj.contiguous()
    wg = shared_gate.contiguous()
    ids = topk_ids.contiguous()  # int64 or int32: the kernels load either and clamp for the weight read
    w = topk_weights if topk_weights.dtype == torch.float32 else topk_weights.float()
    w = w.contiguous()
    inter = torch.empty(S, I, dtype=hidden.dtype, device=dev)
    sinter = torch.empty(T, IS, dtype=hidden.dtype, device=dev)
    glogit = torch.empty(T, dtype=hidden.dtype, device=dev)
    out = torch.empty(T, H, dtype=hidden.dtype, device=dev)
    bn = _pow2_blk(max(I, IS), DEC_BLOCK_N)
    bk = _pow2_blk(H, DEC_BLOCK_K)
    nt = S * triton.cdiv(I, bn) + T * triton.cdiv(IS, bn) + T
    with _device.device_guard(hidden):
        _shared_decode_gate_up_kernel[(_device.persistent_grid(dev, nt, cube=False),)](
            x, gu, ids, sg, su, wg, inter, sinter, glogit, T, nt, E,
            H=H, I=I, IS=IS, K_TOP=k, BLOCK_N=bn, BLOCK_K=bk)
        bn = _pow2_blk(H, DEC_BLOCK_N)
        bk = _pow2_blk(max(I, IS), DEC_BLOCK_K)
        nt = T * triton.cdiv(H, bn)
        _shared_decode_down_combine_kernel[(_device.persistent_grid(dev, nt, cube=False),)](
            inter, dn, ids, w, sinter, sd, glogit, out, nt, E,
            H=H, I=I, IS=IS, K_TOP=k, BLOCK_N=bn, BLOCK_K=bk)
    return out


# Production configurations: Intern-S2 E=256, k=8, H=2048, I=512, bf16. T (hence the number of
# slots, plan rows and tasks) is a runtime value; the block size takes the values block_size_for
# picks (16 at T<=512, 64 at T=4096).
_H, _I, _K = 2048, 512, 8


def _gemm_configs():
    out = []
    for bm in (16, 32, 64):
        out.append(LoweringConfig(
            f"moe_experts/gate_up_bm{bm}", _gate_up_kernel,
            {"x_ptr": "*bf16", "w_ptr": "*bf16", "inter_ptr": "*bf16", "sorted_slots_ptr": "*i32",
             "block_expert_ptr": "*i32", "num_rows_ptr": "*i32", "num_slots": "i32", "num_tasks": "i32",
             "E": "i32"},
            {"H": _H, "I": _I, "K_TOP": _K, "BLOCK_M": bm, "BLOCK_N": GU_BLOCK_N, "BLOCK_K": GU_BLOCK_K,
             "DOT_FP32": False}))
        out.append(LoweringConfig(
            f"moe_experts/down_bm{bm}", _down_kernel,
            {"inter_ptr": "*bf16", "w_ptr": "*bf16", "topk_w_ptr": "*fp32", "y_ptr": "*fp32",
             "sorted_slots_ptr": "*i32", "block_expert_ptr": "*i32", "num_rows_ptr": "*i32",
             "num_slots": "i32", "num_tasks": "i32", "E": "i32"},
            {"H": _H, "I": _I, "BLOCK_M": bm, "BLOCK_N": DN_BLOCK_N, "BLOCK_K": DN_BLOCK_K, "DOT_FP32": False}))
    return out


LOWERING_CONFIGS = _gemm_configs() + [
    LoweringConfig(
        "moe_experts/decode_gate_up", _decode_gate_up_kernel,
        {"x_ptr": "*bf16", "w_ptr": "*bf16", "ids_ptr": "*i32", "inter_ptr": "*bf16", "num_tasks": "i32", "E": "i32"},
        {"H": _H, "I": _I, "K_TOP": _K, "BLOCK_N": DEC_BLOCK_N, "BLOCK_K": DEC_BLOCK_K}),
    LoweringConfig(
        "moe_experts/decode_down", _decode_down_kernel,
        {"inter_ptr": "*bf16", "w_ptr": "*bf16", "ids_ptr": "*i32", "topk_w_ptr": "*fp32", "y_ptr": "*fp32",
         "num_tasks": "i32", "E": "i32"},
        {"H": _H, "I": _I, "BLOCK_N": DEC_BLOCK_N, "BLOCK_K": DEC_BLOCK_K}),
] + [
    LoweringConfig(
        f"moe_experts/combine{'_shared' if shared else ''}", _combine_kernel,
        {"y_ptr": "*fp32", "ids_ptr": "*i32", "out_ptr": "*bf16", "shared_ptr": "*bf16", "shared_gate_ptr": "*bf16",
         "num_tokens": "i32", "num_tasks": "i32", "E": "i32"},
        {"H": _H, "K_TOP": _K, "HAS_SHARED": shared, "HAS_SHARED_GATE": shared, "BLOCK_T": CB_BLOCK_T,
         "BLOCK_H": CB_BLOCK_H})
    for shared in (False, True)
] + [
    LoweringConfig(
        f"moe_experts_shared/decode_gate_up_{tag}", _shared_decode_gate_up_kernel,
        {"x_ptr": "*bf16", "w_ptr": "*bf16", "ids_ptr": ids, "sg_ptr": "*bf16", "su_ptr": "*bf16",
         "sgate_ptr": "*bf16", "inter_ptr": "*bf16", "sinter_ptr": "*bf16", "glogit_ptr": "*bf16",
         "num_tokens": "i32", "num_tasks": "i32", "E": "i32"},
        {"H": _H, "I": _I, "IS": _I, "K_TOP": _K, "BLOCK_N": DEC_BLOCK_N, "BLOCK_K": DEC_BLOCK_K})
    for tag, ids in (("i64", "*i64"), ("i32", "*i32"))
] + [
    LoweringConfig(
        f"moe_experts_shared/decode_down_combine_{tag}", _shared_decode_down_combine_kernel,
        {"inter_ptr": "*bf16", "w_ptr": "*bf16", "ids_ptr": ids, "topk_w_ptr": "*fp32", "sinter_ptr": "*bf16",
         "sd_ptr": "*bf16", "glogit_ptr": "*bf16", "out_ptr": "*bf16", "num_tasks": "i32", "E": "i32"},
        {"H": _H, "I": _I, "IS": _I, "K_TOP": _K, "BLOCK_N": DEC_BLOCK_N, "BLOCK_K": DEC_BLOCK_K})
    for tag, ids in (("i64", "*i64"), ("i32", "*i32"))
]
