"""Mixture-of-experts ops: top-k routing and the packed SwiGLU expert FFNs."""
from __future__ import annotations

import torch

from .. import reference
from ._dispatch import register, resolve
from ._validate import check_same_device, check_tensor


def moe_route(
    hidden: torch.Tensor, weight: torch.Tensor, top_k: int, *, renormalize: bool = True, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router: logits = hidden @ weight^T; fp32 softmax; top-k; renormalise the k weights to sum 1.

    hidden [T, H]; weight [E, H]. Returns (logits [T, E] in hidden's dtype, topk_weights [T, k]
    fp32, topk_ids [T, k] int64), ids ordered by descending probability as torch.topk orders them.
    """
    op = "moe_route"
    check_tensor(op, "hidden", hidden, ndim=2)
    check_tensor(op, "weight", weight, ndim=2, dtypes=(hidden.dtype,), shape=(None, hidden.shape[1]))
    if not isinstance(top_k, int) or not 1 <= top_k <= weight.shape[0]:
        raise ValueError(f"{op}: top_k must be an int in [1, {weight.shape[0]}], got {top_k!r}")
    check_same_device(op, hidden=hidden, weight=weight)
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
) -> torch.Tensor:
    """out[t] = sum_j w[t, j] * down[e] @ (silu(gate) * up), gate|up = gate_up_proj[e] @ hidden[t],
    e = topk_ids[t, j]. hidden [T, H]; gate_up_proj [E, 2I, H]; down_proj [E, H, I] (as stored).
    Returns [T, H] in hidden's dtype."""
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
    check_same_device(op, hidden=hidden, topk_ids=topk_ids, topk_weights=topk_weights,
                      gate_up_proj=gate_up_proj, down_proj=down_proj)
    _, impl = resolve(op, backend, hidden.device)
    return impl(hidden, topk_ids, topk_weights, gate_up_proj, down_proj)


register("moe_route", "reference")(reference.moe_route)
register("moe_experts", "reference")(reference.moe_experts)
