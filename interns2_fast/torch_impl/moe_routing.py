"""PyTorch backends of the MoE router (`moe_route`) and of the routing plan (`moe_align`).

Both run without any host synchronisation: every shape is a function of the input shapes, no
`.item()`, `.tolist()`, `nonzero`, `bincount`, `unique` or boolean indexing. The plan layout is
documented in `interns2_fast.ops.moe.RoutingPlan`.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def _tie_key_consts(num_experts: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    e = torch.arange(num_experts, dtype=torch.float64, device=device)
    return -e * 2.0**-1070, 1.0 - e * 2.0**-40


def topk_lowest_id(probs: torch.Tensor, top_k: int, values_from: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk over the last axis of fp32 probabilities >= 0, ties broken to the LOWER index.

    torch.topk leaves the order of equal values unspecified (on the CPU it is not lowest-index
    first), so topk runs over a float64 key that is unique per element and orders like
    (probability, -index):  key = p * (1 - e * 2**-40) - e * 2**-1070.  Distinct fp32 values differ
    by a factor >= 1 + 2**-24, far more than the 2**-32 the first term moves them, so their order is
    kept; equal values p > 0 are split by the factor, and p = 0 (a softmax underflow) by the
    subnormal second term (lost only where denormals are flushed, torch.set_flush_denormal(True)).
    On devices other than the CPU and CUDA (float64 may be missing there) an int64 key
    bits(p) * E + (E - 1 - e) does the same. Returns (values fp32, indices int64); the values are
    gathered from `values_from` (same shape as probs) when given.
    """
    src = probs if values_from is None else values_from
    if probs.device.type in ("cpu", "cuda"):
        tiny, factor = _tie_key_consts(probs.shape[-1], probs.device)
        ids = torch.topk(torch.addcmul(tiny, probs.double(), factor), top_k, dim=-1).indices
        return src.gather(-1, ids), ids
    _, ids = _topk_lowest_id_int_key(probs, top_k)
    return src.gather(-1, ids), ids


def _topk_lowest_id_int_key(probs: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The int64-key form of topk_lowest_id: fp32 p >= 0 has int32 bit patterns that order like
    the floats, so bits * E + (E - 1 - index) is unique and orders like (p, -index)."""
    e = probs.shape[-1]
    bits = probs.contiguous().view(torch.int32).to(torch.int64)
    rev = torch.arange(e - 1, -1, -1, device=probs.device, dtype=torch.int64)
    top_key = torch.topk(bits * e + rev, top_k, dim=-1).values
    ids = (e - 1) - torch.remainder(top_key, e)
    return probs.gather(-1, ids), ids


def moe_route(hidden: torch.Tensor, weight: torch.Tensor, top_k: int, *, renormalize: bool = True):
    """logits = hidden @ weight^T (hidden's dtype); fp32 softmax; top-k (ties -> lower expert id);
    optional renormalisation of the k weights. Returns (logits [T, E], weights [T, k] fp32,
    ids [T, k] int64)."""
    logits = F.linear(hidden, weight)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    # A NaN/Inf logit makes the whole softmax row NaN: select on zeros there (all tied -> ids
    # 0..k-1, as the Triton router does) and gather the NaN weights from the real row.
    top_w, top_i = topk_lowest_id(torch.nan_to_num(probs, nan=0.0), top_k, values_from=probs)
    if renormalize:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    return logits, top_w, top_i


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """The routing plan of `topk_ids` [T, k] (see `interns2_fast.ops.moe.RoutingPlan`).

    counts by scatter_add, padded offsets by cumsum, a stable sort of the expert ids for the slot
    order, row = padded start + rank inside the expert, scatters for sorted_slots and its inverse,
    searchsorted for block_expert. About 20 small ops, none reading data back to the host.
    """
    from ..routing_plan import RoutingPlan, moe_align_max_rows

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
