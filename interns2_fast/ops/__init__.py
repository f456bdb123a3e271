"""The public op API: every op is a PyTorch custom operator (`torch.ops.interns2_fast.<name>`) with a
Python entry point taking `backend="auto" | "triton" | "torch" | "reference" | ...`.

`_registry` holds the mechanism (schema, mutation, fake kernel, capability predicates, autograd
policy); each op module defines its ops once with their backends. `OPS` maps op names to them.
"""
from ._registry import BACKENDS, OPS, Op, registered, resolve
from .conv1d import causal_conv1d_fn, causal_conv1d_update
from .gdn import (
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
    fused_recurrent_gated_delta_rule_with_gating,
    gdn_gating,
)
from .moe import RoutingPlan, moe_align, moe_align_max_rows, moe_experts, moe_route
from .moe import moe_experts_shared, moe_sparse_block
from .norm_gated import rms_norm_gated
from .rms_norm import add_rms_norm
from .decode_attention import decode_attention
from .attention_prologue import attention_prologue

__all__ = [
    "BACKENDS",
    "OPS",
    "Op",
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
    "attention_prologue",
    "moe_route",
    "moe_experts",
    "moe_experts_shared",
    "moe_sparse_block",
    "moe_align",
    "moe_align_max_rows",
    "RoutingPlan",
]
