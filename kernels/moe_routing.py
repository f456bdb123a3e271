"""MoE routing kernels: the router (logits -> fp32 softmax -> top-k -> renormalise) and the routing
plan (`RoutingPlan`: expert-grouped, block-padded slot order and its inverse), without host sync.

Router (`_router_kernel`, cube grid): one task per BLOCK_T tokens keeps the whole [BLOCK_T, E]
logit tile on chip: logits = hidden @ weight^T accumulated in fp32 by tl.dot over H in BLOCK_H
steps (bf16/fp16 operands on a device, whose products are exact in fp32; fp32 operands under the
interpreter, whose bf16 dot is wrong, and for fp32 inputs), rounded to hidden's dtype (as F.linear
returns them, so the softmax sees the same logits as the reference), fp32 softmax, then top-k by
k passes of max + lowest-index-of-the-max (a min over the ids where p == max, compared in fp32).
Masked expert columns (E < BLOCK_E) get probability -1 and are never chosen. A NaN softmax row
(a NaN or Inf among the token's logits) selects on zeros, so its ids are 0..k-1, and its weights
are NaN; every id is clamped into [0, E): no input gives an id the expert kernels could not use.

Plan kernels and bad ids: an id outside [0, E) is never counted, and the scatter leaves its slot
out of the plan (slot_rows = -1) instead of reading offsets or writing rows out of bounds.

Counts and rows are integers below 2**24 and are summed / prefix-summed in fp32 (exact), then
stored as int32.

Tie rule: among equal probabilities the LOWER expert id wins, and ids come out in descending
probability order. (torch.topk does not promise this: on the CPU it orders equal values in an
implementation-specific way, e.g. [4, 7, 6, 5, 2, 1, 0, 3] for 8 equal scores, k = 8. The torch
backend of this project applies the same lower-id rule, see torch_impl/moe_routing.py.)

Plan (three vector kernels, all grids persistent):
  1. `_align_count_kernel`: per chunk of CHUNK slots, the per-expert histogram (one-hot sum) into
     chunk_counts [num_chunks, E]; the same launch fills sorted_slots with the sentinel n.
  2. `_align_scan_kernel` (one program): per expert, the exclusive prefix of chunk counts over
     chunks (in place), the expert counts, padded sizes, expert_offsets, num_rows, block_expert.
  3. `_align_scatter_kernel`: per chunk, each slot's stable rank among earlier equal ids in its
     chunk; row = expert_offsets[e] + chunk_prefix[c, e] + rank; writes sorted_slots[row] = s and
     slot_rows[s] = row.
Every shape depends on (T, k, E, block_size) only; nothing is read back to the host.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast import device as _device
from interns2_fast.kernels import LoweringConfig

ROUTER_BLOCK_T = 32  # 32 x 256 fp32 logits on chip; 64 overflows the UB
ROUTER_BLOCK_H = 128  # 16-bit inputs (bf16 dot on device)
ROUTER_BLOCK_H_FP32 = 64  # fp32 inputs: a [256, 128] fp32 weight tile would not fit beside the rest
ALIGN_CHUNK = 256  # slots per histogram / scatter task
ALIGN_SUB = 32  # slots per on-chip [SUB, E] / [SUB, CHUNK] compare tile
ALIGN_FILL = 1024  # sentinel rows per fill task
ALIGN_SCAN_CB = 4  # chunks per scan step
ALIGN_SCAN_BB = 16  # blocks per block_expert step


@triton.jit
def _router_kernel(
    h_ptr, w_ptr, logits_ptr, topw_ptr, topi_ptr,
    T, E, H, stride_h, stride_w,
    TOP_K: tl.constexpr, RENORM: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    num_tasks = tl.cdiv(T, BLOCK_T)
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    ef = offs_e.to(tl.float32)
    offs_h = tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, BLOCK_K)
    kf = offs_k.to(tl.float32)
    w_rows = offs_e.to(tl.int64) * stride_w
    for task in range(pid, num_tasks, nprog):
        offs_t = tl.cast(task, tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        mask_t = offs_t < T
        acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hh = h0 + offs_h
            mask_h = hh < H
            x = tl.load(h_ptr + offs_t[:, None] * stride_h + hh[None, :],
                        mask=mask_t[:, None] & mask_h[None, :], other=0.0)
            w = tl.load(w_ptr + w_rows[:, None] + hh[None, :],
                        mask=mask_e[:, None] & mask_h[None, :], other=0.0)
            if DOT_FP32:  # the interpreter's bf16 dot is wrong; fp32 inputs take this path anyway
                x = x.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(x, tl.trans(w))  # bf16 x bf16 products are exact in the fp32 accumulator
        logits = acc.to(logits_ptr.dtype.element_ty)
        tl.store(logits_ptr + offs_t[:, None] * E + offs_e[None, :], logits,
                 mask=mask_t[:, None] & mask_e[None, :])
        z = tl.where(mask_e[None, :], logits.to(tl.float32), float("-inf"))
        m = tl.max(z, 1)
        p = tl.exp(z - m[:, None])
        p = p / tl.sum(p, 1)[:, None]
        # A NaN/Inf logit makes the whole softmax row NaN: such a row selects on zeros (all tied:
        # ids 0..k-1) and gets NaN weights. Ids are always in [0, E), whatever the input.
        row_nan = tl.max(tl.where(p == p, 0.0, 1.0), 1) > 0.0
        p = tl.where(p == p, p, 0.0)
        p = tl.where(mask_e[None, :], p, -1.0)
        top_w = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
        top_i = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            best = tl.max(p, 1)
            idx = tl.min(tl.where(p == best[:, None], ef[None, :], BLOCK_E * 1.0), 1)  # lowest id of the max
            idx = tl.minimum(idx, E - 1.0)
            p = tl.where(ef[None, :] == idx[:, None], -2.0, p)
            top_w = tl.where(kf[None, :] == j, best[:, None], top_w)
            top_i = tl.where(kf[None, :] == j, idx[:, None], top_i)
        top_w = tl.where(row_nan[:, None], float("nan"), top_w)
        if RENORM:
            top_w = top_w / tl.sum(top_w, 1)[:, None]
        out = offs_t[:, None] * TOP_K + offs_k[None, :]
        mask_out = mask_t[:, None] & (offs_k < TOP_K)[None, :]
        tl.store(topw_ptr + out, top_w, mask=mask_out)
        tl.store(topi_ptr + out, top_i.to(tl.int64), mask=mask_out)


@triton.jit
def _align_count_kernel(
    ids_ptr, chunk_counts_ptr, sorted_ptr,
    n, E, max_rows, num_chunks, num_fill,
    CHUNK: tl.constexpr, SUB: tl.constexpr, BLOCK_E: tl.constexpr, FILL: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_s = tl.arange(0, SUB)
    offs_e = tl.arange(0, BLOCK_E)
    ef = offs_e.to(tl.float32)
    offs_f = tl.arange(0, FILL)
    for task in range(pid, num_chunks + num_fill, nprog):
        if task < num_chunks:
            counts = tl.zeros([BLOCK_E], dtype=tl.float32)
            for s0 in range(0, CHUNK, SUB):
                offs = tl.cast(task, tl.int64) * CHUNK + s0 + offs_s
                idf = tl.load(ids_ptr + offs, mask=offs < n, other=-1).to(tl.float32)
                counts += tl.sum(tl.where(idf[:, None] == ef[None, :], 1.0, 0.0), 0)
            tl.store(chunk_counts_ptr + tl.cast(task, tl.int64) * E + offs_e, counts.to(tl.int32),
                     mask=offs_e < E)
        else:
            rows = tl.cast(task - num_chunks, tl.int64) * FILL + offs_f
            sentinel = tl.zeros([FILL], dtype=tl.int32) + n
            tl.store(sorted_ptr + rows, sentinel, mask=rows < max_rows)


@triton.jit
def _align_scan_kernel(
    chunk_ptr, counts_ptr, offsets_ptr, num_rows_ptr, block_expert_ptr,
    E, num_chunks, num_blocks,
    BLOCK_SIZE: tl.constexpr, BLOCK_E: tl.constexpr, CB: tl.constexpr, BB: tl.constexpr,
):
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    offs_cb = tl.arange(0, CB)
    # Counts and rows are integers below 2**24: sums and prefix sums run in fp32, exactly (the
    # vector-friendly type on Ascend; it also sidesteps int32 reductions that the interpreter
    # widens to int64 behind the declared dtype).
    carry = tl.zeros([BLOCK_E], dtype=tl.float32)
    for c0 in range(0, num_chunks, CB):
        rows = tl.cast(c0, tl.int64) + offs_cb
        m = (rows < num_chunks)[:, None] & mask_e[None, :]
        ptrs = chunk_ptr + rows[:, None] * E + offs_e[None, :]
        x = tl.load(ptrs, mask=m, other=0).to(tl.float32)
        incl = tl.cumsum(x, 0)
        tl.store(ptrs, (incl - x + carry[None, :]).to(tl.int32), mask=m)
        carry = carry + tl.sum(x, 0)
    counts = carry.to(tl.int32)
    padded = ((counts + (BLOCK_SIZE - 1)) // BLOCK_SIZE * BLOCK_SIZE).to(tl.float32)
    ends_f = tl.cumsum(padded, 0)
    total_f = tl.sum(padded, 0)
    tl.store(counts_ptr + offs_e, counts, mask=mask_e)
    tl.store(offsets_ptr + offs_e + 1, ends_f.to(tl.int32), mask=mask_e)
    tl.store(offsets_ptr + offs_e, tl.zeros([BLOCK_E], dtype=tl.int32), mask=offs_e == 0)
    tl.store(num_rows_ptr + offs_e, (tl.zeros([BLOCK_E], dtype=tl.float32) + total_f).to(tl.int32),
             mask=offs_e == 0)
    ends_f = tl.where(mask_e, ends_f, 3.0e38)
    offs_bb = tl.arange(0, BB)
    for b0 in range(0, num_blocks, BB):
        b = b0 + offs_bb
        start = (b * BLOCK_SIZE).to(tl.float32)
        e = tl.sum(tl.where(ends_f[None, :] <= start[:, None], 1.0, 0.0), 1)
        e = tl.where(start < total_f, e, -1.0)
        tl.store(block_expert_ptr + b, e.to(tl.int32), mask=b < num_blocks)


@triton.jit
def _align_scatter_kernel(
    ids_ptr, chunk_ptr, offsets_ptr, sorted_ptr, slot_rows_ptr,
    n, E, num_chunks,
    CHUNK: tl.constexpr, SUB: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_c = tl.arange(0, CHUNK)
    offs_cf = offs_c.to(tl.float32)
    offs_s = tl.arange(0, SUB)
    for task in range(pid, num_chunks, nprog):
        start = tl.cast(task, tl.int64) * CHUNK
        id_all = tl.load(ids_ptr + start + offs_c, mask=start + offs_c < n, other=-1).to(tl.float32)
        for s0 in range(0, CHUNK, SUB):
            pos = s0 + offs_s  # position inside the chunk
            offs = start + pos
            mask = offs < n
            raw = tl.load(ids_ptr + offs, mask=mask, other=0)
            # ids outside [0, E) (checked before any narrowing) are left out of the plan
            # (slot_rows = -1): never an access out of bounds
            ok = (raw >= 0) & (raw < E)
            put = mask & ok
            ids = tl.where(ok, raw, 0).to(tl.int32)
            idf = tl.where(mask, ids.to(tl.float32), -2.0)
            # stable rank: equal ids at earlier positions of this chunk
            same = (idf[:, None] == id_all[None, :]) & (offs_cf[None, :] < pos.to(tl.float32)[:, None])
            rank = tl.sum(tl.where(same, 1.0, 0.0), 1).to(tl.int32)
            base = tl.load(offsets_ptr + ids, mask=put, other=0) + \
                tl.load(chunk_ptr + tl.cast(task, tl.int64) * E + ids, mask=put, other=0)
            row = base + rank
            tl.store(sorted_ptr + row, offs.to(tl.int32), mask=put)
            tl.store(slot_rows_ptr + offs, tl.where(ok, row, -1), mask=mask)


def _pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def moe_route(hidden: torch.Tensor, weight: torch.Tensor, top_k: int, *, renormalize: bool = True):
    """Launcher of the router kernel; see interns2_fast.ops.moe_route."""
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    T, H = hidden.shape
    E = weight.shape[0]
    logits = torch.empty((T, E), dtype=hidden.dtype, device=hidden.device)
    top_w = torch.empty((T, top_k), dtype=torch.float32, device=hidden.device)
    top_i = torch.empty((T, top_k), dtype=torch.int64, device=hidden.device)
    if T == 0:
        return logits, top_w, top_i
    num_tasks = triton.cdiv(T, ROUTER_BLOCK_T)
    grid = (_device.persistent_grid(hidden.device, num_tasks, cube=True),)
    with _device.device_guard(hidden):
        _router_kernel[grid](
            hidden, weight, logits, top_w, top_i, T, E, H, hidden.stride(0), weight.stride(0),
            TOP_K=top_k, RENORM=bool(renormalize), BLOCK_T=ROUTER_BLOCK_T, BLOCK_E=max(16, _pow2(E)),
            BLOCK_H=ROUTER_BLOCK_H_FP32 if hidden.dtype == torch.float32 else ROUTER_BLOCK_H, BLOCK_K=_pow2(top_k),
            DOT_FP32=_device.interpreting() or hidden.dtype == torch.float32,
        )
    return logits, top_w, top_i


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """Launcher of the routing-plan kernels; see interns2_fast.ops.moe.RoutingPlan."""
    from ..routing_plan import RoutingPlan, moe_align_max_rows

    dev = topk_ids.device
    ids = topk_ids.reshape(-1)
    if not ids.is_contiguous():
        ids = ids.contiguous()
    n = ids.numel()
    E = num_experts
    rows = moe_align_max_rows(n, E, block_size)
    num_blocks = rows // block_size
    sorted_slots = torch.empty(rows, dtype=torch.int32, device=dev)
    block_expert = torch.empty(num_blocks, dtype=torch.int32, device=dev)
    num_rows = torch.empty(1, dtype=torch.int32, device=dev)
    counts = torch.empty(E, dtype=torch.int32, device=dev)
    offsets = torch.empty(E + 1, dtype=torch.int32, device=dev)
    slot_rows = torch.empty(n, dtype=torch.int32, device=dev)
    plan = RoutingPlan(sorted_slots, block_expert, num_rows, counts, offsets, slot_rows)
    if n == 0:
        for t in (num_rows, counts, offsets):
            t.zero_()
        return plan
    num_chunks = triton.cdiv(n, ALIGN_CHUNK)
    num_fill = triton.cdiv(rows, ALIGN_FILL)
    chunk = torch.empty((num_chunks, E), dtype=torch.int32, device=dev)
    block_e = _pow2(E)
    with _device.device_guard(topk_ids):
        grid = (_device.persistent_grid(dev, num_chunks + num_fill, cube=False),)
        _align_count_kernel[grid](ids, chunk, sorted_slots, n, E, rows, num_chunks, num_fill,
                                  CHUNK=ALIGN_CHUNK, SUB=ALIGN_SUB, BLOCK_E=block_e, FILL=ALIGN_FILL)
        _align_scan_kernel[(1,)](chunk, counts, offsets, num_rows, block_expert, E, num_chunks, num_blocks,
                                 BLOCK_SIZE=block_size, BLOCK_E=block_e, CB=ALIGN_SCAN_CB, BB=ALIGN_SCAN_BB)
        grid = (_device.persistent_grid(dev, num_chunks, cube=False),)
        _align_scatter_kernel[grid](ids, chunk, offsets, sorted_slots, slot_rows, n, E, num_chunks,
                                    CHUNK=ALIGN_CHUNK, SUB=ALIGN_SUB)
    return plan


# Production: E = 256, k = 8, H = 2048, bf16 hidden; T (and so n = 8 T) is a runtime value.
_E, _K, _H = 256, 8, 2048
_ALIGN_BLOCK_SIZES = (16, 32, 64)  # kernels/moe_experts.block_size_for picks one of these

LOWERING_CONFIGS = [
    LoweringConfig(
        "moe_routing/router_bf16_E256_k8_H2048",
        _router_kernel,
        {"h_ptr": "*bf16", "w_ptr": "*bf16", "logits_ptr": "*bf16", "topw_ptr": "*fp32", "topi_ptr": "*i64",
         "T": "i32", "E": "i32", "H": "i32", "stride_h": "i32", "stride_w": "i32"},
        {"TOP_K": _K, "RENORM": True, "BLOCK_T": ROUTER_BLOCK_T, "BLOCK_E": _E, "BLOCK_H": ROUTER_BLOCK_H,
         "BLOCK_K": _K, "DOT_FP32": False},
    ),
    LoweringConfig(
        "moe_routing/align_count_E256",
        _align_count_kernel,
        {"ids_ptr": "*i64", "chunk_counts_ptr": "*i32", "sorted_ptr": "*i32", "n": "i32", "E": "i32",
         "max_rows": "i32", "num_chunks": "i32", "num_fill": "i32"},
        {"CHUNK": ALIGN_CHUNK, "SUB": ALIGN_SUB, "BLOCK_E": _E, "FILL": ALIGN_FILL},
    ),
    *[
        LoweringConfig(
            f"moe_routing/align_scan_E256_bs{bs}",
            _align_scan_kernel,
            {"chunk_ptr": "*i32", "counts_ptr": "*i32", "offsets_ptr": "*i32", "num_rows_ptr": "*i32",
             "block_expert_ptr": "*i32", "E": "i32", "num_chunks": "i32", "num_blocks": "i32"},
            {"BLOCK_SIZE": bs, "BLOCK_E": _E, "CB": ALIGN_SCAN_CB, "BB": ALIGN_SCAN_BB},
        )
        for bs in _ALIGN_BLOCK_SIZES
    ],
    LoweringConfig(
        "moe_routing/align_scatter_E256",
        _align_scatter_kernel,
        {"ids_ptr": "*i64", "chunk_ptr": "*i32", "offsets_ptr": "*i32", "sorted_ptr": "*i32",
         "slot_rows_ptr": "*i32", "n": "i32", "E": "i32", "num_chunks": "i32"},
        {"CHUNK": ALIGN_CHUNK, "SUB": ALIGN_SUB},
    ),
]
