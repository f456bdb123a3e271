"""Mixture-of-experts ops: top-k routing and the packed SwiGLU expert FFNs."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import reference
from ._dispatch import register, resolve
from . import _empty
from ._validate import check_index, check_positive_dims, check_same_device, check_tensor


def moe_route(
    hidden: torch.Tensor, weight: torch.Tensor, top_k: int, *, renormalize: bool = True, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router: logits = hidden @ weight^T; fp32 softmax; top-k; renormalise the k weights to sum 1.

    hidden [T, H]; weight [E, H]. Returns (logits [T, E] in hidden's dtype, topk_weights [T, k]
    fp32, topk_ids [T, k] int64), ids ordered by descending probability.

    Ties (equal fp32 probabilities, common with bf16 logits): the torch and triton backends pick
    the LOWER expert id first, deterministically. The reference backend is torch.topk, whose order
    among equal values is unspecified (on the CPU it is not lowest-id first), so on tied inputs the
    reference may select other, equally probable experts.

    NaN / Inf: a token whose logits hold a NaN or an Inf has a NaN softmax row. Its k weights are
    NaN on every backend (so the expert output of that token is NaN, as in transformers), and its
    ids are valid expert ids on every backend: the torch and triton backends give the lowest ids
    0, 1, ..., k-1 (a NaN row is treated as all-tied); the reference's torch.topk picks some k
    distinct ids in [0, E). Other tokens are unaffected. T = 0 gives empty results; top_k is any
    integral number (not a bool) in [1, E].
    """
    op = "moe_route"
    check_tensor(op, "hidden", hidden, ndim=2)
    check_tensor(op, "weight", weight, ndim=2, dtypes=(hidden.dtype,), shape=(None, hidden.shape[1]))
    check_positive_dims(op, H=hidden.shape[1], E=weight.shape[0])
    top_k = check_index(op, "top_k", top_k, minimum=1, maximum=weight.shape[0])
    check_same_device(op, hidden=hidden, weight=weight)
    if hidden.shape[0] == 0:
        return _empty.moe_route(hidden, weight.shape[0], top_k)
    _, impl = resolve(op, backend, hidden.device)
    return impl(hidden, weight, top_k, renormalize=renormalize)


def moe_experts(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    *,
    backend: str = "auto",
    shared_expert_output: torch.Tensor | None = None,
    shared_expert_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[t] = sum_j w[t, j] * down[e] @ (silu(gate) * up), gate|up = gate_up_proj[e] @ hidden[t],
    e = topk_ids[t, j]. hidden [T, H]; gate_up_proj [E, 2I, H]; down_proj [E, H, I] (as stored).
    Returns [T, H] in hidden's dtype. T = 0 gives an empty [0, H]; H, I, E or k = 0 is an error.

    Ids must lie in [0, E): checked (ValueError) when topk_ids is in host memory; on a device they
    are not read back (no sync), and the Triton and torch backends give a slot with an id outside
    [0, E) no contribution (the kernels mask it: never an out-of-bounds read).

    Optional shared expert, added in the same pass as the combine (torch/triton backends):
    `shared_expert_output` [T, H] (hidden's dtype) is added, scaled by
    sigmoid(`shared_expert_gate`) when given ([T, 1] or [T]: the shared gate's logits)."""
    op = "moe_experts"
    check_tensor(op, "hidden", hidden, ndim=2)
    T, H = hidden.shape
    check_tensor(op, "gate_up_proj", gate_up_proj, ndim=3, dtypes=(hidden.dtype,), shape=(None, None, H))
    E, two_i, _ = gate_up_proj.shape
    if two_i % 2:
        raise ValueError(f"{op}: gate_up_proj's middle axis holds gate and up halves, so it must be even, got {two_i}")
    check_tensor(op, "down_proj", down_proj, ndim=3, dtypes=(hidden.dtype,), shape=(E, H, two_i // 2))
    check_tensor(op, "topk_ids", topk_ids, ndim=2, dtypes=(torch.int64, torch.int32), shape=(T, None))
    check_tensor(op, "topk_weights", topk_weights, ndim=2, shape=tuple(topk_ids.shape))
    check_positive_dims(op, H=H, I=two_i // 2, E=E, k=topk_ids.shape[1])
    _check_ids_on_host(op, topk_ids, E)
    if shared_expert_gate is not None and shared_expert_output is None:
        raise ValueError(f"{op}: shared_expert_gate needs shared_expert_output")
    if shared_expert_output is not None:
        check_tensor(op, "shared_expert_output", shared_expert_output, ndim=2, dtypes=(hidden.dtype,), shape=(T, H))
    if shared_expert_gate is not None:
        check_tensor(op, "shared_expert_gate", shared_expert_gate, shape=None)
        if shared_expert_gate.numel() != T or shared_expert_gate.dim() not in (1, 2):
            raise ValueError(f"{op}: shared_expert_gate must have shape [{T}, 1] or [{T}], got {list(shared_expert_gate.shape)}")
    check_same_device(op, hidden=hidden, topk_ids=topk_ids, topk_weights=topk_weights,
                      gate_up_proj=gate_up_proj, down_proj=down_proj, shared_expert_output=shared_expert_output,
                      shared_expert_gate=shared_expert_gate)
    if T == 0:
        return _empty.like(hidden)
    name, impl = resolve(op, backend, hidden.device)
    if shared_expert_output is None:
        return impl(hidden, topk_ids, topk_weights, gate_up_proj, down_proj)
    if name == "reference":  # transformers adds the gated shared expert after the experts, in hidden's dtype
        shared = shared_expert_output
        if shared_expert_gate is not None:
            shared = torch.sigmoid(shared_expert_gate.reshape(T, 1)) * shared
        return impl(hidden, topk_ids, topk_weights, gate_up_proj, down_proj) + shared
    return impl(hidden, topk_ids, topk_weights, gate_up_proj, down_proj,
                shared_expert_output=shared_expert_output, shared_expert_gate=shared_expert_gate)


def _check_ids_on_host(op, topk_ids, num_experts):
    """Expert ids in [0, E), checked where that costs no device sync (CPU tensors)."""
    if topk_ids.device.type == "cpu" and topk_ids.numel():
        lo, hi = torch.stack(torch.aminmax(topk_ids)).tolist()  # host memory: a read, not a device sync
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"{op}: topk_ids must lie in [0, {num_experts}), got values in [{lo}, {hi}]")


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


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_size: int, *, backend: str = "auto") -> RoutingPlan:
    """The routing plan of `topk_ids` [T, k] (int64 or int32, values in [0, num_experts)) for
    grouped GEMMs with row blocks of `block_size` (a Python int; the Triton backend needs a power
    of two). No host sync, static shapes; see `RoutingPlan` for the layout and its invariants.
    Ids outside [0, num_experts) are a ValueError when topk_ids is in host memory; on a device they
    are not read back (no sync): the Triton kernels leave such slots out of the plan (their
    slot_rows entry is -1; never an out-of-bounds write), the torch backend's scatter faults."""
    op = "moe_align"
    check_tensor(op, "topk_ids", topk_ids, ndim=2, dtypes=(torch.int64, torch.int32))
    num_experts = check_index(op, "num_experts", num_experts, minimum=1)
    block_size = check_index(op, "block_size", block_size, minimum=1)
    _check_ids_on_host(op, topk_ids, num_experts)
    if topk_ids.numel() >= 2**31 - 1:
        raise ValueError(f"{op}: too many slots for int32 plan indices ({topk_ids.numel()})")
    _, impl = resolve(op, backend, topk_ids.device)
    return impl(topk_ids, num_experts, block_size)


register("moe_route", "reference")(reference.moe_route)
register("moe_experts", "reference")(reference.moe_experts)


@register("moe_route", "torch")
def _moe_route_torch(hidden, weight, top_k, *, renormalize=True):
    from ..torch_impl import moe_routing

    return moe_routing.moe_route(hidden, weight, top_k, renormalize=renormalize)


@register("moe_route", "triton")
def _moe_route_triton(hidden, weight, top_k, *, renormalize=True):
    from ..kernels import moe_routing

    return moe_routing.moe_route(hidden, weight, top_k, renormalize=renormalize)


@register("moe_align", "torch")
def _moe_align_torch(topk_ids, num_experts, block_size):
    from ..torch_impl import moe_routing

    return moe_routing.moe_align(topk_ids, num_experts, block_size)


@register("moe_align", "triton")
def _moe_align_triton(topk_ids, num_experts, block_size):
    from ..kernels import moe_routing

    return moe_routing.moe_align(topk_ids, num_experts, block_size)


@register("moe_experts", "torch")
def _moe_experts_torch(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, **shared):
    from ..torch_impl import moe_experts

    return moe_experts.moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, **shared)


@register("moe_experts", "triton")
def _moe_experts_triton(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, **shared):
    from ..kernels import moe_experts

    return moe_experts.moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, plan_fn=moe_align,
                                   **shared)


@register("moe_experts", "npu_native")
def _moe_experts_npu_native(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, **shared):
    from ..torch_impl import moe_npu_native

    return moe_npu_native.moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, **shared)
