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
    """The routing plan of `topk_ids` [T, k] (see `interns2_fast.ops.moe.RoutingPlan`)."""
    from ..ops.moe import RoutingPlan, moe_align_max_rows

    dev = topk_ids.device
    n = topk_ids.numel()
    rows = moe_align_max_rows(n, num_experts, block_size)
    ids = topk_ids.reshape(-1).to(torch.int64)

    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, ids, torch.ones_like(ids))
    padded = torch.div(counts + (block_size - 1), block_size, rounding_mode="floor") * block_size
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev)
    torch.cumsum(padded, 0, out=offsets[1:])
    starts = torch.cumsum(counts, 0) - counts  # unpadded start of each expert in sorted order

    # Stable sort by expert: within an expert, slots stay in ascending slot order.
    sorted_ids, order = torch.sort(ids, stable=True)
    pos = torch.arange(n, dtype=torch.int64, device=dev)
    row_of_sorted = offsets[sorted_ids] + (pos - starts[sorted_ids])

    sorted_slots = torch.full((rows,), n, dtype=torch.int32, device=dev)
    sorted_slots.scatter_(0, row_of_sorted, order.to(torch.int32))
    slot_rows = torch.empty(n, dtype=torch.int32, device=dev)
    slot_rows.scatter_(0, order, row_of_sorted.to(torch.int32))

    num_rows = offsets[num_experts:]
    block_start = torch.arange(0, rows, block_size, dtype=torch.int64, device=dev)
    block_expert = torch.searchsorted(offsets[1:], block_start, right=True)
    block_expert = torch.where(block_start < num_rows, block_expert, torch.full_like(block_expert, -1))
    return RoutingPlan(
        sorted_slots=sorted_slots,
        block_expert=block_expert.to(torch.int32),
        num_rows=num_rows.to(torch.int32),
        expert_counts=counts.to(torch.int32),
        expert_offsets=offsets.to(torch.int32),
        slot_rows=slot_rows,
    )
