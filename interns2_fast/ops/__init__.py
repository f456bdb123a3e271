"""The public op API: one function per op, each with `backend="auto" | "triton" | "torch" | "reference"`.

Every op module registers its backends with `_dispatch`; `auto` picks the best one available for
the tensors' device (Triton on an NPU/GPU, else the PyTorch path).
"""
from ._dispatch import BACKENDS, registered, resolve
from .conv1d import causal_conv1d_fn, causal_conv1d_update
from .gdn import (
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
    fused_recurrent_gated_delta_rule_with_gating,
    gdn_gating,
)
from .moe import RoutingPlan, moe_align, moe_align_max_rows, moe_experts, moe_route
from .norm_gated import rms_norm_gated
from .rms_norm import add_rms_norm
from .decode_attention import decode_attention

__all__ = [
    "BACKENDS",
    "registered",
    "resolve",
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "fused_recurrent_gated_delta_rule_with_gating",
    "gdn_gating",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "rms_norm_gated",
    "add_rms_norm",
    "decode_attention",
    "moe_route",
    "moe_experts",
    "moe_align",
    "moe_align_max_rows",
    "RoutingPlan",
]
