"""Mixture-of-experts ops: top-k routing, the routing plan and the packed SwiGLU expert FFNs.

Backends: reference (the installed transformers router / eager expert loop), torch
(`torch_impl/moe_*.py`), triton (`kernels/moe_*.py`), npu_native (torch_npu's fused operators,
experts only; unverified, never chosen by `auto`).
"""
from __future__ import annotations

import torch

from .. import reference
from ..routing_plan import RoutingPlan, moe_align_max_rows
from . import _empty
from ._registry import define
from ._validate import check_index, check_positive_dims, check_same_device, check_tensor, values_in_host_memory


def _check_ids_on_host(op, topk_ids, num_experts):
    """Expert ids in [0, E), checked where that costs no device sync (CPU tensors, outside tracing)."""
    if topk_ids.numel() and values_in_host_memory(topk_ids):
        if type(topk_ids) is torch.Tensor:  # a plain host tensor: read in place, no ATen op
            a = topk_ids.detach().numpy()
            lo, hi = int(a.min()), int(a.max())
        else:
            lo, hi = torch.stack(torch.aminmax(topk_ids)).tolist()  # host memory: a read, not a device sync
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"{op}: topk_ids must lie in [0, {num_experts}), got values in [{lo}, {hi}]")


# --- router -----------------------------------------------------------------------------------------

def _route_fake(hidden, weight, top_k, renormalize):
    T, E = hidden.shape[0], weight.shape[0]
    return (hidden.new_empty(T, E), hidden.new_empty(T, top_k, dtype=torch.float32),
            hidden.new_empty(T, top_k, dtype=torch.int64))


@define("(Tensor hidden, Tensor weight, int top_k, bool renormalize) -> (Tensor, Tensor, Tensor)", fake=_route_fake,
        empty=lambda hidden, weight, top_k, **_:
        _empty.moe_route(hidden, weight.shape[0], top_k) if hidden.shape[0] == 0 else None)
def moe_route(hidden, weight, top_k, *, renormalize=True):
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
    check_index(op, "top_k", top_k, minimum=1, maximum=weight.shape[0])
    check_same_device(op, hidden=hidden, weight=weight)


moe_route.register("reference")(reference.moe_route)


@moe_route.register("torch")
def _route_torch(**kw):
    from ..torch_impl import moe_routing

    return moe_routing.moe_route(**kw)


@moe_route.register("triton")
def _route_triton(**kw):
    from ..kernels import moe_routing

    return moe_routing.moe_route(**kw)


# --- routing plan -----------------------------------------------------------------------------------

def _align_fake(topk_ids, num_experts, block_size):
    n = topk_ids.numel()
    rows = moe_align_max_rows(n, num_experts, block_size)
    i32 = dict(dtype=torch.int32)
    return (topk_ids.new_empty(rows, **i32), topk_ids.new_empty(rows // block_size, **i32),
            topk_ids.new_empty(1, **i32), topk_ids.new_empty(num_experts, **i32),
            topk_ids.new_empty(num_experts + 1, **i32), topk_ids.new_empty(n, **i32))


@define("(Tensor topk_ids, int num_experts, int block_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        fake=_align_fake, finish=lambda args, out: RoutingPlan(*out), reads_values=("topk_ids",))
def moe_align(topk_ids, num_experts, block_size):
    """The routing plan of `topk_ids` [T, k] (int64 or int32, values in [0, num_experts)) for
    grouped GEMMs with row blocks of `block_size` (a Python int; the Triton backend needs a power
    of two). No host sync, static shapes; see `RoutingPlan` for the layout and its invariants.
    Ids outside [0, num_experts) are a ValueError when topk_ids is in host memory; on a device they
    are not read back (no sync): the Triton kernels leave such slots out of the plan (their
    slot_rows entry is -1; never an out-of-bounds write), the torch backend's scatter faults."""
    op = "moe_align"
    check_tensor(op, "topk_ids", topk_ids, ndim=2, dtypes=(torch.int64, torch.int32))
    num_experts = check_index(op, "num_experts", num_experts, minimum=1)
    check_index(op, "block_size", block_size, minimum=1)
    _check_ids_on_host(op, topk_ids, num_experts)
    if topk_ids.numel() >= 2**31 - 1:
        raise ValueError(f"{op}: too many slots for int32 plan indices ({topk_ids.numel()})")


@moe_align.register("torch")
def _align_torch(**kw):
    from ..torch_impl import moe_routing

    return tuple(moe_routing.moe_align(**kw))


@moe_align.register("triton")
def _align_triton(**kw):
    from ..kernels import moe_routing

    return tuple(moe_routing.moe_align(**kw))


# --- expert FFNs ------------------------------------------------------------------------------------

@define("(Tensor hidden, Tensor topk_ids, Tensor topk_weights, Tensor gate_up_proj, Tensor down_proj, "
        "Tensor? shared_expert_output, Tensor? shared_expert_gate) -> Tensor",
        fake=lambda hidden, **_: torch.empty_like(hidden, memory_format=torch.contiguous_format),
        empty=lambda hidden, **_: _empty.like(hidden) if hidden.shape[0] == 0 else None, reads_values=("topk_ids",))
def moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, *, shared_expert_output=None,
                shared_expert_gate=None):
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


@moe_experts.register("reference")
def _experts_reference(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, shared_expert_output,
                       shared_expert_gate):
    out = reference.moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj)
    if shared_expert_output is None:
        return out
    # transformers adds the gated shared expert after the experts, in hidden's dtype
    shared = shared_expert_output
    if shared_expert_gate is not None:
        shared = torch.sigmoid(shared_expert_gate.reshape(hidden.shape[0], 1)) * shared
    return out + shared


@moe_experts.register("torch")
def _experts_torch(**kw):
    from ..torch_impl import moe_experts as impl

    return impl.moe_experts(**kw)


@moe_experts.register("triton")  # any H and I: the kernels mask their tails
def _experts_triton(**kw):
    from ..kernels import moe_experts as impl

    return impl.moe_experts(**kw, plan_fn=moe_align)


@moe_experts.register("npu_native")
def _experts_npu_native(**kw):
    from ..torch_impl import moe_npu_native

    return moe_npu_native.moe_experts(**kw)


# --- expert FFNs with the shared expert as one more slot ---------------------------------------------

def _check_shared_weights(op, hidden, shared_gate_proj, shared_up_proj, shared_down_proj, shared_gate):
    H = hidden.shape[1]
    check_tensor(op, "shared_gate_proj", shared_gate_proj, ndim=2, dtypes=(hidden.dtype,), shape=(None, H))
    IS = shared_gate_proj.shape[0]
    check_tensor(op, "shared_up_proj", shared_up_proj, ndim=2, dtypes=(hidden.dtype,), shape=(IS, H))
    check_tensor(op, "shared_down_proj", shared_down_proj, ndim=2, dtypes=(hidden.dtype,), shape=(H, IS))
    check_tensor(op, "shared_gate", shared_gate, ndim=2, dtypes=(hidden.dtype,), shape=(1, H))
    check_positive_dims(op, IS=IS)


def _check_block_weights(op, hidden, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj, shared_down_proj,
                         shared_gate) -> int:
    """hidden [T, H], the packed expert weights and the shared expert's weights; returns E."""
    check_tensor(op, "hidden", hidden, ndim=2)
    H = hidden.shape[1]
    check_tensor(op, "gate_up_proj", gate_up_proj, ndim=3, dtypes=(hidden.dtype,), shape=(None, None, H))
    E, two_i, _ = gate_up_proj.shape
    if two_i % 2:
        raise ValueError(f"{op}: gate_up_proj's middle axis holds gate and up halves, so it must be even, got {two_i}")
    check_tensor(op, "down_proj", down_proj, ndim=3, dtypes=(hidden.dtype,), shape=(E, H, two_i // 2))
    check_positive_dims(op, H=H, I=two_i // 2, E=E)
    _check_shared_weights(op, hidden, shared_gate_proj, shared_up_proj, shared_down_proj, shared_gate)
    return E


@define("(Tensor hidden, Tensor topk_ids, Tensor topk_weights, Tensor gate_up_proj, Tensor down_proj, "
        "Tensor shared_gate_proj, Tensor shared_up_proj, Tensor shared_down_proj, Tensor shared_gate) -> Tensor",
        fake=lambda hidden, **_: torch.empty_like(hidden, memory_format=torch.contiguous_format),
        empty=lambda hidden, **_: _empty.like(hidden) if hidden.shape[0] == 0 else None, reads_values=("topk_ids",))
def moe_experts_shared(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                       shared_down_proj, shared_gate):
    """The sparse-MoE block after its router: the routed SwiGLU experts plus the sigmoid-gated shared
    expert, computed as k + 1 slots per token.

    out[t] = sum_j w[t, j] * down[e] @ (silu(gate) * up)  (as `moe_experts`, e = topk_ids[t, j])
             + sigmoid(shared_gate @ hidden[t]) * Wd @ (silu(Wg @ hidden[t]) * (Wu @ hidden[t]))

    hidden [T, H]; topk_ids [T, k] int64/int32; topk_weights [T, k] (fp32 or hidden's dtype);
    gate_up_proj [E, 2I, H], down_proj [E, H, I] (the experts' packed weights as stored);
    shared_gate_proj / shared_up_proj [IS, H], shared_down_proj [H, IS] (the shared expert MLP's
    `gate_proj` / `up_proj` / `down_proj` Linear weights, IS = its width, may differ from I);
    shared_gate [1, H] (the `shared_expert_gate` Linear H -> 1 weight). No bias anywhere. Returns
    [T, H] in hidden's dtype; T = 0 gives [0, H]; ids as in `moe_experts` (outside [0, E): an error
    in host memory, no contribution on a device).

    Why an op of its own rather than more arguments of `moe_experts`: `moe_experts` is transformers'
    experts interface (`ALL_EXPERTS_FUNCTIONS`; its shared arguments are an already computed shared
    output and gate logit); this op takes the shared expert's WEIGHTS and computes its GEMMs, so
    its reference (the installed block's shared-expert formula), its capability predicate (the
    shared width IS) and its kernels differ. The weights are the modules' own tensors: nothing is
    concatenated or copied.

    Backends: reference (the installed eager expert loop + the block's shared-expert formula, in
    hidden's dtype, as the transformers block computes it); torch (decode-sized T*k: gathered
    expert weights and batched matmuls, no per-expert loop; larger T: `moe_experts`' torch path);
    triton (T*k <= 64: two launches, gate_up of the k + 1 slots with the gate logit, then down with
    the routing weights, the sigmoid gate and the sum fused; larger T: the plan GEMMs, the shared
    expert as linears added in the combine).
    """
    op = "moe_experts_shared"
    E = _check_block_weights(op, hidden, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                             shared_down_proj, shared_gate)
    T = hidden.shape[0]
    check_tensor(op, "topk_ids", topk_ids, ndim=2, dtypes=(torch.int64, torch.int32), shape=(T, None))
    check_tensor(op, "topk_weights", topk_weights, ndim=2, dtypes=(torch.float32, hidden.dtype),
                 shape=tuple(topk_ids.shape))
    check_positive_dims(op, k=topk_ids.shape[1])
    _check_ids_on_host(op, topk_ids, E)
    check_same_device(op, hidden=hidden, topk_ids=topk_ids, topk_weights=topk_weights, gate_up_proj=gate_up_proj,
                      down_proj=down_proj, shared_gate_proj=shared_gate_proj, shared_up_proj=shared_up_proj,
                      shared_down_proj=shared_down_proj, shared_gate=shared_gate)


@moe_experts_shared.register("reference")
def _experts_shared_reference(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, shared_gate_proj,
                              shared_up_proj, shared_down_proj, shared_gate):
    import torch.nn.functional as F

    # transformers' block: experts(...) then shared_expert(x) (gate/up/down Linears, SiLU), scaled by
    # sigmoid(shared_expert_gate(x)), added, all in hidden's dtype
    out = reference.moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj)
    shared = F.linear(F.silu(F.linear(hidden, shared_gate_proj)) * F.linear(hidden, shared_up_proj), shared_down_proj)
    return out + F.sigmoid(F.linear(hidden, shared_gate)) * shared


@moe_experts_shared.register("torch")
def _experts_shared_torch(**kw):
    from ..torch_impl import moe_experts as impl

    return impl.moe_experts_shared(**kw)


@moe_experts_shared.register("triton")  # any H, I and IS: the kernels mask their tails
def _experts_shared_triton(**kw):
    from ..kernels import moe_experts as impl

    return impl.moe_experts_shared(**kw, plan_fn=moe_align)


# --- the whole sparse-MoE block: router + experts + shared expert ----------------------------------

@define("(Tensor hidden, Tensor router_weight, int top_k, bool renormalize, Tensor gate_up_proj, Tensor down_proj, "
        "Tensor shared_gate_proj, Tensor shared_up_proj, Tensor shared_down_proj, Tensor shared_gate) -> Tensor",
        fake=lambda hidden, **_: torch.empty_like(hidden, memory_format=torch.contiguous_format),
        empty=lambda hidden, **_: _empty.like(hidden) if hidden.shape[0] == 0 else None)
def moe_sparse_block(hidden, router_weight, top_k, renormalize, gate_up_proj, down_proj, shared_gate_proj,
                     shared_up_proj, shared_down_proj, shared_gate):
    """The sparse-MoE block's forward on [T, H] tokens: `moe_route` (router logits, fp32 softmax,
    top-k, renormalise when `renormalize`) then `moe_experts_shared` (routed experts + the
    sigmoid-gated shared expert, combined) — one op, so a decode token pays the op layer once per
    block, and on Triton three launches in all (router, gate_up of the k + 1 slots, down with the
    combine). The router logits are not returned (the block does not return them; a router whose
    output is recorded is called as a module and `moe_experts_shared` runs after it).

    router_weight [E, H]; the other arguments as in `moe_route` / `moe_experts_shared`. Returns
    [T, H] in hidden's dtype; T = 0 gives [0, H]. A token whose router logits hold a NaN/Inf gets
    NaN weights (`moe_route`) and so a NaN row; other tokens are unaffected.
    """
    op = "moe_sparse_block"
    E = _check_block_weights(op, hidden, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                             shared_down_proj, shared_gate)
    check_tensor(op, "router_weight", router_weight, ndim=2, dtypes=(hidden.dtype,), shape=(E, hidden.shape[1]))
    check_index(op, "top_k", top_k, minimum=1, maximum=E)
    check_same_device(op, hidden=hidden, router_weight=router_weight, gate_up_proj=gate_up_proj, down_proj=down_proj,
                      shared_gate_proj=shared_gate_proj, shared_up_proj=shared_up_proj,
                      shared_down_proj=shared_down_proj, shared_gate=shared_gate)


def _block_args(kw):
    route = dict(hidden=kw["hidden"], weight=kw.pop("router_weight"), top_k=kw.pop("top_k"),
                 renormalize=bool(kw.pop("renormalize")))
    return route, kw


@moe_sparse_block.register("reference")
def _block_reference(**kw):
    route, rest = _block_args(kw)
    _, weights, ids = reference.moe_route(**route)
    return _experts_shared_reference(topk_ids=ids, topk_weights=weights, **rest)


@moe_sparse_block.register("torch")
def _block_torch(**kw):
    from ..torch_impl import moe_experts as impl, moe_routing

    route, rest = _block_args(kw)
    _, weights, ids = moe_routing.moe_route(**route)
    return impl.moe_experts_shared(topk_ids=ids, topk_weights=weights, **rest)


@moe_sparse_block.register("triton")
def _block_triton(**kw):
    from ..kernels import moe_experts as impl, moe_routing

    route, rest = _block_args(kw)
    _, weights, ids = moe_routing.moe_route(**route)
    return impl.moe_experts_shared(topk_ids=ids, topk_weights=weights, **rest, plan_fn=moe_align)
