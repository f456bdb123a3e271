"""The patched Gated DeltaNet (linear-attention) layer and gated RMSNorm forwards.

One forward serves every supported transformers version and layout; the per-version glue is the
cache protocol, chosen from what the cache object offers:

* legacy (transformers 5.2 - 5.14, and the Intern-S2-Preview remote code pinned to 5.2): the cache
  keeps lists `conv_states[i]` / `recurrent_states[i]` and a `has_previous_state` flag; a step is a
  decode step when `has_previous_state and seq_len == 1 and cache_position is not None`; a prefill
  stores the last W inputs (`F.pad(x, (W - T, 0))`) and always starts the delta rule from a zero
  state (`initial_state=None`) — exactly what 5.2 does, including on a multi-token continuation of a
  cached conversation (a second `generate()` reusing `past_key_values`), where 5.2 drops the
  linear-attention state. Reproduced by default, so that patched == reference; with
  `patch(model, fix_legacy_continuation=True)` such a call continues from the cached conv inputs and
  recurrent state instead (what 5.15+ does; equal to running the whole conversation without cache);
* layered (5.15+): `cache.get_conv_state(i)` / `update_conv_state` / `get_recurrent_state` /
  `update_recurrent_state` / `is_recording_past`; a prefill continues from the cached state. The
  releases before the getters (5.15.1, 5.18.0) keep the states in `cache.layers[i]`
  (`patching.caches` detects and reads both forms).

q/k are passed with their Hk key heads (the ops map value head h to key head h // (Hv // Hk)), so
nothing is repeated. The decode step has no host synchronisation: the conv state is updated in
place, the recurrent state is updated in place (`inplace_final_state`) when it is a contiguous
fp32 tensor, and no shape depends on data. The padding mask is applied by the layer's own module
function `apply_mask_to_padding_states` (its semantics changed between versions).

Each op family picks its backend from the module state: "gdn" (gating, chunked and recurrent
delta rule), "conv" (prefill conv and decode update); the output norm is the layer's `norm`
child, patched separately under the "norm" family.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .. import ops
from ..device import device_guard
from . import projections
from .caches import cache_protocol, linear_states
from .state import ModuleState, call_op, fire_offload_hooks, phase

def _mask_padding(state: ModuleState, hidden_states, attention_mask):
    fn = state.extra.get("mask_fn")
    if fn is not None:
        return fn(hidden_states, attention_mask)
    if attention_mask is not None:
        return (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
    return hidden_states


def _project(self, state, hidden_states, layout):
    """The input projections: one GEMM on the fused weight buffer when patch() could build it
    (`projections.fused_linear`; its outputs are column views of one result), else one each."""
    B, T, _ = hidden_states.shape
    outs = projections.fused_linear(self, state.extra.get("projections"), hidden_states)
    if layout == "qwen3_5":
        if outs is None:
            outs = (self.in_proj_qkv(hidden_states), self.in_proj_z(hidden_states), self.in_proj_b(hidden_states),
                    self.in_proj_a(hidden_states))
        mixed_qkv, z, b, a = outs
        z = z.reshape(B, T, -1, self.head_v_dim)
    else:  # qwen3_next: interleaved per key-head groups, un-interleaved by the layer's own method
        if outs is None:
            outs = (self.in_proj_qkvz(hidden_states), self.in_proj_ba(hidden_states))
        q, k, v, z, b, a = self.fix_query_key_value_ordering(*outs)
        mixed_qkv = torch.cat([x.reshape(B, T, -1) for x in (q, k, v)], dim=-1)
    return mixed_qkv.transpose(1, 2), z, b, a


def gdn_forward(self, state: ModuleState, hidden_states, cache_params=None, cache_position=None, attention_mask=None,
                cache=None, **kwargs):
    """Drop-in forward of a Gated DeltaNet layer (Qwen3.5 / Qwen3-Next / Intern-S2 layouts)."""
    cache = cache if cache is not None else cache_params
    protocol = cache_protocol(cache) if cache is not None else "none"
    if protocol is None:  # a cache this code does not know: leave the call to transformers
        state.extra.setdefault("unknown_cache", type(cache).__name__)
        params = state.extra.get("params", ())
        kw = dict(kwargs, attention_mask=attention_mask)
        if "cache_position" in params:
            kw["cache_position"] = cache_position
        kw["cache" if "cache" in params else "cache_params"] = cache
        return state.original(hidden_states, **kw)
    fire_offload_hooks(self, ("conv1d",), pre=True)
    try:
        with device_guard(hidden_states), phase(hidden_states.shape[1]):
            return _gdn_forward(self, state, protocol, hidden_states, cache, cache_position, attention_mask, kwargs)
    finally:
        fire_offload_hooks(self, ("conv1d",), pre=False)


def _gdn_forward(self, state, protocol, hidden_states, cache, cache_position, attention_mask, kwargs):
    hidden_states = _mask_padding(state, hidden_states, attention_mask)
    B, T, _ = hidden_states.shape
    i = self.layer_idx
    W = self.conv1d.weight.shape[-1]
    weight = self.conv1d.weight.squeeze(1)
    bias = self.conv1d.bias
    activation = self.activation if getattr(self, "activation", None) in ("silu", "swish") else "silu"

    mixed_qkv, z, b, a = _project(self, state, hidden_states, state.extra["layout"])

    conv_state = recurrent_state = None
    if protocol == "legacy":
        decode = cache.has_previous_state and T == 1 and cache_position is not None
        conv_state, recurrent_state = cache.conv_states[i], cache.recurrent_states[i]
        if decode:
            mixed_qkv = call_op(state, "conv", ops.causal_conv1d_update, mixed_qkv, conv_state, weight, bias,
                                activation)
        elif state.extra.get("continue_state") and conv_state is not None and recurrent_state is not None:
            # opt-in fix of 5.2's multi-token continuation: start from the cached conv inputs and state
            full = torch.cat([conv_state.to(mixed_qkv.dtype), mixed_qkv], dim=-1)
            cache.conv_states[i] = full[:, :, -W:].contiguous()
            mixed_qkv = call_op(state, "conv", ops.causal_conv1d_fn, full, weight, bias, activation=activation)
            mixed_qkv = mixed_qkv[:, :, -T:]
            decode = False
        else:
            cache.conv_states[i] = F.pad(mixed_qkv, (W - mixed_qkv.shape[-1], 0))
            mixed_qkv = call_op(state, "conv", ops.causal_conv1d_fn, mixed_qkv, weight, bias, activation=activation)
            recurrent_state = None  # 5.2 starts every multi-token call from a zero state
        initial_state = recurrent_state
    elif protocol == "layered":
        conv_state, recurrent_state, recording = linear_states(cache, i)
        if conv_state is not None and T == 1 and not recording:
            mixed_qkv = call_op(state, "conv", ops.causal_conv1d_update, mixed_qkv, conv_state, weight, bias,
                                activation)
            count = getattr(cache, "increase_count", None)
            if callable(count):  # 5.25: the in-place update is counted here (what get_seq_length reads)
                count(i, 0)
        else:
            mixed_qkv = cache.update_conv_state(mixed_qkv, i, conv_kernel_size=W)
            mixed_qkv = call_op(state, "conv", ops.causal_conv1d_fn, mixed_qkv, weight, bias, activation=activation)
            mixed_qkv = mixed_qkv[:, :, -T:]
        decode = recurrent_state is not None and T == 1
        initial_state = recurrent_state
    else:  # no cache
        decode = False
        mixed_qkv = call_op(state, "conv", ops.causal_conv1d_fn, mixed_qkv, weight, bias, activation=activation)
        initial_state = None

    mixed_qkv = mixed_qkv.transpose(1, 2)
    query, key, value = mixed_qkv.split_with_sizes([self.head_k_dim * self.num_k_heads] * 2
                                                   + [self.head_v_dim * self.num_v_heads], dim=-1)
    query = query.reshape(B, T, -1, self.head_k_dim)
    key = key.reshape(B, T, -1, self.head_k_dim)
    value = value.reshape(B, T, -1, self.head_v_dim)

    cu_seqlens = kwargs.pop("cu_seq_lens_q", None) if protocol == "layered" else None
    want_state = cache is not None
    if decode:
        # One op (one Triton launch) for gating + L2 norm + the recurrent step.
        inplace = (initial_state is not None and initial_state.dtype == torch.float32
                   and initial_state.is_contiguous() and cu_seqlens is None and want_state)
        core, final_state = call_op(
            state, "gdn", ops.fused_recurrent_gated_delta_rule_with_gating, query, key, value, a, b, self.A_log,
            self.dt_bias, initial_state=initial_state, output_final_state=want_state, use_qk_l2norm_in_kernel=True,
            cu_seqlens=cu_seqlens, inplace_final_state=inplace,
        )
    else:
        g, beta = call_op(state, "gdn", ops.gdn_gating, self.A_log, a, self.dt_bias, b)
        if initial_state is not None and initial_state.dtype != torch.float32:
            initial_state = initial_state.float()
        core, final_state = call_op(
            state, "gdn", ops.chunk_gated_delta_rule, query, key, value, g, beta,
            initial_state=initial_state, output_final_state=want_state, use_qk_l2norm_in_kernel=True,
            cu_seqlens=cu_seqlens,
        )

    if protocol == "legacy":
        cache.recurrent_states[i] = final_state
    elif protocol == "layered" and final_state is not recurrent_state:
        cache.update_recurrent_state(final_state, i)

    core = self.norm(core.reshape(-1, self.head_v_dim), z.reshape(-1, self.head_v_dim))
    return self.out_proj(core.reshape(B, T, -1))


def norm_forward(self, state: ModuleState, hidden_states, gate=None):
    """Drop-in forward of a gated RMSNorm (norm before gate, SiLU gate)."""
    with device_guard(hidden_states):
        return call_op(state, "norm", ops.rms_norm_gated, hidden_states, gate, self.weight, self.variance_epsilon)


def gdn_extra(module, layout: str) -> dict:
    """What the patched forward needs to know about the module's transformers version (found at patch time)."""
    from .discovery import forward_params

    home = sys.modules.get(type(module).__module__)
    mask_fn = getattr(home, "apply_mask_to_padding_states", None)
    params = forward_params(type(module).forward)  # through transformers 5.13-5.15's force_accelerate_hooks
    return {"layout": layout, "mask_fn": mask_fn if callable(mask_fn) else None, "params": params}
