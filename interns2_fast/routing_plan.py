"""The MoE routing-plan type (a leaf module: kernels, torch backends and ops all import it)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class RoutingPlan(NamedTuple):
    """Where every (token, choice) slot goes in the expert-grouped, block-padded row order.

    Built by `moe_align(topk_ids [T, k], E, block_size)`. A slot is s = t * k + j (token t, choice
    j); n = T * k slots. All fields are device tensors with shapes fixed by (T, k, E, block_size)
    alone, so building and consuming the plan never syncs with the host.

    max_rows = roundup(n + min(E, n) * (block_size - 1), block_size)  (`moe_align_max_rows`).

    Fields (all int32):
      sorted_slots   [max_rows]              slot ids grouped by expert in ascending expert order,
                                             ascending s within an expert (stable), each group
                                             padded with the sentinel n up to a multiple of
                                             block_size; rows >= num_rows hold the sentinel too.
      block_expert   [max_rows // block_size] expert of each block of block_size rows; -1 for the
                                             blocks at or past num_rows.
      num_rows       [1]                     rows used = sum of the padded group sizes.
      expert_counts  [E]                     slots per expert; sums to n.
      expert_offsets [E + 1]                 padded start row of each expert's group (exclusive
                                             cumsum of padded sizes); [0] = 0, [E] = num_rows.
      slot_rows      [n]                     the row of sorted_slots holding slot s (inverse map):
                                             sorted_slots[slot_rows[s]] == s.

    Invariants: every slot appears in sorted_slots exactly once; expert e's group is rows
    [expert_offsets[e], expert_offsets[e] + expert_counts[e]) followed by sentinel rows up to
    expert_offsets[e + 1] (padding only at group ends; an expert with no slots has an empty group);
    every expert_offsets[e] is a multiple of block_size, so a block never spans two experts;
    block_expert[b] == e for every block b with expert_offsets[e] <= b * block_size <
    expert_offsets[e + 1]. A consumer reads the token of a row as sorted_slots[row] // k and masks
    rows whose slot is the sentinel n.
    """

    sorted_slots: torch.Tensor
    block_expert: torch.Tensor
    num_rows: torch.Tensor
    expert_counts: torch.Tensor
    expert_offsets: torch.Tensor
    slot_rows: torch.Tensor


def moe_align_max_rows(num_slots: int, num_experts: int, block_size: int) -> int:
    """Length of RoutingPlan.sorted_slots for n = T * k slots: roundup(n + min(E, n) * (block_size - 1), block_size)."""
    bound = num_slots + min(num_experts, num_slots) * (block_size - 1)
    return -(-bound // block_size) * block_size
