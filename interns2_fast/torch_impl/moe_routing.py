"""PyTorch backends of the MoE router (`moe_route`) and of the routing plan (`moe_align`).

Both run without any host synchronisation: every shape is a function of the input shapes, no
`.item()`, `.tolist()`, `nonzero`, `bincount`, `unique` or boolean indexing. The plan layout is
documented in `interns2_fast.ops.moe.RoutingPlan`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_lowest_id(probs: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk over the last axis with ties broken to the LOWER index, deterministically.

    torch.topk leaves the order of equal values unspecified (on the CPU it is not lowest-index
    first). probs >= 0 in fp32 has int32 bit patterns that order like the floats, so one int64 key
    bits * E + (E - 1 - index) is unique per element and topk over it picks the largest probability,
    then the lowest index among equals. Returns (values fp32, indices int64).
    """
    e = probs.shape[-1]
    bits = probs.contiguous().view(torch.int32).to(torch.int64)
    rev = torch.arange(e - 1, -1, -1, device=probs.device, dtype=torch.int64)
    key = bits * e + rev
    top_key, _ = torch.topk(key, top_k, dim=-1)
    ids = (e - 1) - torch.remainder(top_key, e)
    vals = torch.div(top_key, e, rounding_mode="floor").to(torch.int32).view(torch.float32)
    return vals, ids


def moe_route(hidden: torch.Tensor, weight: torch.Tensor, top_k: int, *, renormalize: bool = True):
    """logits = hidden @ weight^T (hidden's dtype); fp32 softmax; top-k (ties -> lower expert id);
    optional renormalisation of the k weights. Returns (logits [T, E], weights [T, k] fp32,
    ids [T, k] int64)."""
    logits = F.linear(hidden, weight)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    top_w, top_i = topk_lowest_id(probs, top_k)
    if renormalize:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    return logits, top_w, top_i


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """The routing plan of `topk_ids` [T, k] (see `interns2_fast.ops.moe.RoutingPlan`).

    counts by scatter_add, padded offsets by cumsum, a stable sort of the expert ids for the slot
    order, row = padded start + rank inside the expert, scatters for sorted_slots and its inverse,
    searchsorted for block_expert. About 20 small ops, none reading data back to the host.
    """
    from ..ops.moe import RoutingPlan, moe_align_max_rows

    dev = topk_ids.device
    i32 = torch.int32
    n = topk_ids.numel()
    E = num_experts
    rows = moe_align_max_rows(n, E, block_size)
    ids = topk_ids.reshape(n).long()

    counts = torch.zeros(E, dtype=i32, device=dev).scatter_add_(0, ids, torch.ones(1, dtype=i32, device=dev).expand(n))
    padded = torch.div(counts + (block_size - 1), block_size, rounding_mode="floor") * block_size
    offsets = torch.zeros(E + 1, dtype=i32, device=dev)
    torch.cumsum(padded, 0, out=offsets[1:])
    # row of the r-th slot of expert e = offsets[e] + r = (offsets[e] - unpadded start of e) + sorted position
    shift = offsets[:E] - (torch.cumsum(counts, 0, dtype=i32) - counts)

    # Stable sort by expert: within an expert, slots stay in ascending slot order. (Sorted as a
    # [1, n] row: a 1-D integer sort takes torch's parallel radix path on the CPU, which stalls for
    # hundreds of ms when the cores are oversubscribed.)
    sorted_ids, order = torch.sort(ids.view(1, n), dim=1, stable=True)
    order = order.view(n)
    row = torch.index_select(shift, 0, sorted_ids.view(n)) + torch.arange(n, dtype=i32, device=dev)

    sorted_slots = torch.full((rows,), n, dtype=i32, device=dev).scatter_(0, row.long(), order.to(i32))
    slot_rows = torch.empty(n, dtype=i32, device=dev).scatter_(0, order, row)

    num_rows = offsets[E:]
    block_start = torch.arange(0, rows, block_size, dtype=i32, device=dev)
    block_expert = torch.searchsorted(offsets[1:], block_start, right=True, out_int32=True)
    block_expert.masked_fill_(block_start >= num_rows, -1)
    return RoutingPlan(sorted_slots=sorted_slots, block_expert=block_expert, num_rows=num_rows,
                       expert_counts=counts, expert_offsets=offsets, slot_rows=slot_rows)
