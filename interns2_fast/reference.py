"""The reference semantics of every op: the transformers fallback of the installed version.

Where the installed transformers has the fallback as a function or module method, it is called
(found by name in `transformers.models.qwen3_5_moe.modeling_qwen3_5_moe`, by feature, never by
version number). Where the fallback is inline code inside a module's forward (the gating
arithmetic, the 5.2 prefill conv), it is written out here line for line; tests prove these equal
to the full transformers layer.

Conventions the other backends share (so that they are comparable):
  * GDN: q, k with Hk heads, v with Hv heads (Hv % Hk == 0); value head h reads key head
    h // (Hv // Hk) (what `repeat_interleave` on the head axis means).
  * moe_route returns the raw router logits [T, E] (in the hidden dtype) in its first slot,
    whatever the installed router returns there; top-k weights are fp32.
"""
from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def fallback_module() -> types.ModuleType:
    """transformers' qwen3_5_moe modeling module: the home of the fallbacks this project replaces."""
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe

    return modeling_qwen3_5_moe


def _fallback(*names: str):
    """The first of `names` that the installed modeling module defines as a callable."""
    mod = fallback_module()
    for name in names:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    return None


def _repeat_kv_heads(q: torch.Tensor, k: torch.Tensor, num_v_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    groups = num_v_heads // q.shape[2]
    if groups == 1:
        return q, k
    return q.repeat_interleave(groups, dim=2), k.repeat_interleave(groups, dim=2)


def _per_sequence(fn, q, k, v, g, beta, initial_state, cu_seqlens, **kw):
    """Run `fn` on each packed sequence of a cu_seqlens batch (the fallbacks do not take cu_seqlens)."""
    outs, states = [], []
    bounds = cu_seqlens.tolist()
    from .ops._validate import check_cu_seqlens_values

    check_cu_seqlens_values("gated_delta_rule[reference]", bounds, q.shape[1])
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[n : n + 1]
        o, s = fn(q[:, start:end], k[:, start:end], v[:, start:end], g[:, start:end], beta[:, start:end], h0, **kw)
        outs.append(o)
        states.append(s)
    o = torch.cat(outs, dim=1)
    s = torch.cat(states, dim=0) if states and states[0] is not None else None
    return o, s


def _gdn_call(fallback, q, k, v, g, beta, initial_state, *, scale, output_final_state, use_qk_l2norm_in_kernel):
    head_dim, out_dtype = q.shape[-1], q.dtype
    if scale is not None and scale != head_dim**-0.5:
        # The fallback always scales q by K^-1/2: normalise here (the fallback's l2norm formula) and
        # fold the requested scale into q, so that the fallback's own scaling lands on `scale`.
        if use_qk_l2norm_in_kernel:
            q, k = (x.float() * torch.rsqrt((x.float() ** 2).sum(-1, keepdim=True) + 1e-6) for x in (q, k))
            use_qk_l2norm_in_kernel = False
        q = q.float() * (scale * head_dim**0.5)
    q, k = _repeat_kv_heads(q, k, v.shape[2])
    o, s = fallback(
        q,
        k,
        v,
        g=g,
        beta=beta,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
    )
    return o.to(out_dtype), s


def chunk_gated_delta_rule(
    q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, cu_seqlens=None,
):
    fallback = _fallback("torch_chunk_gated_delta_rule")
    call = functools.partial(
        _gdn_call, fallback, scale=scale, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
    )
    if cu_seqlens is not None:
        return _per_sequence(call, q, k, v, g, beta, initial_state, cu_seqlens)
    return call(q, k, v, g, beta, initial_state)


def fused_recurrent_gated_delta_rule(
    q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, cu_seqlens=None, inplace_final_state=False,
):
    fallback = _fallback("torch_recurrent_gated_delta_rule")
    call = functools.partial(
        _gdn_call, fallback, scale=scale, output_final_state=output_final_state or inplace_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
    )
    if cu_seqlens is not None:
        o, s = _per_sequence(call, q, k, v, g, beta, initial_state, cu_seqlens)
    else:
        o, s = call(q, k, v, g, beta, initial_state)
    if inplace_final_state and initial_state is not None:
        initial_state.copy_(s)
        s = initial_state
    return o, (s if (output_final_state or inplace_final_state) else None)


def gdn_gating(A_log, a, dt_bias, b):
    """Inline in every version's GatedDeltaNet.forward: g in fp32, beta in b's dtype."""
    beta = b.sigmoid()
    g = -A_log.float().exp() * F.softplus(a.float() + dt_bias)
    return g, beta


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """Depthwise causal conv over [B, D, T]; the fallback's rounding (conv in weight's dtype)."""
    if seq_idx is not None:
        raise NotImplementedError("causal_conv1d_fn[reference]: seq_idx is not supported by the transformers fallback")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d_fn: activation must be None, 'silu' or 'swish', got {activation!r}")
    batch, dim, seqlen = x.shape
    width = weight.shape[-1]
    x_w = x.to(weight.dtype)
    if initial_states is not None:
        x_w = torch.cat([initial_states.to(weight.dtype), x_w], dim=-1)
        out = F.conv1d(x_w, weight.unsqueeze(1), bias, padding=0, groups=dim)[..., -seqlen:]
    else:
        # transformers 5.2 inlines `F.silu(self.conv1d(x)[..., :seq_len])` with padding = W - 1;
        # later versions have the same computation as a function.
        out = F.conv1d(x_w, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)[..., :seqlen]
    if activation is not None:
        out = F.silu(out)
    out = out.to(x.dtype)
    if not return_final_states:
        return out
    full = x if initial_states is None else torch.cat([initial_states.to(x.dtype), x], dim=-1)
    # The last W-1 inputs, zero-padded on the left when fewer were seen ([..., -0:] would be all).
    tail = F.pad(full, (max(width - 1 - full.shape[-1], 0), 0))
    tail = tail[..., tail.shape[-1] - (width - 1):]
    if final_states_out is not None:
        final_states_out.copy_(tail)
        tail = final_states_out
    return out, tail.to(x.dtype)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """The installed fallback when it honours `activation` (5.2's always applies SiLU)."""
    fallback = _fallback("causal_conv1d_update", "torch_causal_conv1d_update")
    if fallback is not None and (activation in ("silu", "swish") or getattr(fallback, "__name__", "") == "causal_conv1d_update"):
        return fallback(x, conv_state, weight, bias, activation)
    # Same arithmetic as the fallback, without the activation.
    seqlen = x.shape[-1]
    state_len = conv_state.shape[-1]
    full = torch.cat([conv_state, x], dim=-1).to(weight.dtype)
    conv_state.copy_(full[:, :, -state_len:])
    out = F.conv1d(full, weight.unsqueeze(1), bias, padding=0, groups=x.shape[1])[:, :, -seqlen:]
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


def _stand_in(cls: type, **attrs) -> torch.nn.Module:
    """An instance of a transformers module class holding our tensors, without running its __init__."""
    obj = cls.__new__(cls)
    torch.nn.Module.__init__(obj)
    for name, value in attrs.items():
        object.__setattr__(obj, name, value) if isinstance(value, torch.Tensor) else setattr(obj, name, value)
    return obj


def rms_norm_gated(x, gate, weight, eps=1e-6):
    cls = fallback_module().Qwen3_5MoeRMSNormGated
    norm = _stand_in(cls, weight=weight, variance_epsilon=eps, activation="silu")
    return cls.forward(norm, x, gate)


def moe_route(hidden, weight, top_k, *, renormalize=True):
    """Logits, fp32 top-k weights and ids, from the installed router's forward."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    logits = F.linear(hidden, weight)
    if not renormalize:
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top_w, top_i = torch.topk(probs, top_k, dim=-1)
        return logits, top_w, top_i
    cls = fallback_module().Qwen3_5MoeTopKRouter
    router = _stand_in(cls, weight=weight, top_k=top_k, num_experts=weight.shape[0], hidden_dim=weight.shape[1])
    _, scores, ids = cls.forward(router, hidden)
    return logits, scores.float(), ids


def moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj):
    """The eager expert loop of the installed `Qwen3_5MoeExperts` (the undecorated forward). `topk_ids`
    may be int64 or int32, as on every backend: the loop's one_hot takes int64 only, so int32 ids are
    widened here."""
    from transformers.activations import ACT2FN

    cls = fallback_module().Qwen3_5MoeExperts
    forward = getattr(cls.forward, "__wrapped__", cls.forward)
    experts = _stand_in(
        cls,
        gate_up_proj=gate_up_proj,
        down_proj=down_proj,
        num_experts=gate_up_proj.shape[0],
        hidden_dim=gate_up_proj.shape[2],
        intermediate_dim=down_proj.shape[2],
        act_fn=ACT2FN["silu"],
        has_bias=False,
        is_transposed=False,
    )
    if topk_ids.dtype != torch.int64:
        topk_ids = topk_ids.long()
    return forward(experts, hidden, topk_ids, topk_weights)


def add_rms_norm(x, residual, weight, eps=1e-6):
    """The decoder layer's `residual + x` then its `Qwen3_5MoeRMSNorm` ((1 + w) scaling), from the
    installed module: returns (normed, the new residual). residual None: just the norm, and x is
    the new residual."""
    s = x if residual is None else residual + x
    cls = fallback_module().Qwen3_5MoeRMSNorm
    norm = _stand_in(cls, weight=weight, eps=eps)
    return cls.forward(norm, s), s


def _length_mask(cache_lens, max_len, dtype, device):
    """The additive mask transformers builds for a padded cache: 0 where j < len, the dtype's min after."""
    keep = torch.arange(max_len, device=device)[None, :] < cache_lens.to(device=device, dtype=torch.long)[:, None]
    mask = torch.zeros(keep.shape, dtype=dtype, device=device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)[:, None, None, :]


def _write_at_len(k_cache, v_cache, cache_lens, k, v) -> None:
    """k, v [B, Hkv, D] into the static caches [B, Hkv, Lmax, D] at position cache_lens - 1."""
    B, Hkv, _, D = k_cache.shape
    pos = (cache_lens.long() - 1).view(B, 1, 1, 1).expand(B, Hkv, 1, D)
    k_cache.scatter_(2, pos, k.to(k_cache.dtype)[:, :, None, :])
    v_cache.scatter_(2, pos, v.to(v_cache.dtype)[:, :, None, :])


def decode_attention(q, k_cache, v_cache, cache_lens, gate=None, *, scale=None, k_new=None, v_new=None, mask=None):
    """One decode token of full attention over a static cache, as the installed attention layer
    computes it: the new k/v written at position len - 1 (when given), the installed
    `eager_attention_forward` over the first `len` positions (padding masked; `mask` [B, Lmax], an
    additive mask such as the static decode step's prompt-padding mask, added as the layer adds its
    attention mask), then `attn_output * sigmoid(gate)`. q, gate [B, Hq, D]; caches [B, Hkv, Lmax, D];
    out [B, Hq, D]."""
    B, Hq, D = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    if k_new is not None:
        _write_at_len(k_cache, v_cache, cache_lens, k_new, v_new)
    module = types.SimpleNamespace(num_key_value_groups=Hq // Hkv, training=False)
    additive = _length_mask(cache_lens, L, q.dtype, q.device)
    if mask is not None:  # the caller's mask where j < len, the dtype's min after (no min + min = -inf)
        additive = mask.to(q.dtype)[:, None, None, :].masked_fill(additive != 0, torch.finfo(q.dtype).min)
    attn, _ = fallback_module().eager_attention_forward(
        module, q[:, :, None, :], k_cache, v_cache, additive,
        scaling=D**-0.5 if scale is None else scale, dropout=0.0,
    )
    out = attn.reshape(B, 1, Hq * D)  # [B, T=1, Hq * D], as the layer reshapes it
    if gate is not None:
        out = out * torch.sigmoid(gate.reshape(B, 1, Hq * D))
    return out.reshape(B, Hq, D)


def attention_prologue(q, k, v, q_weight, k_weight, cos, sin, eps=1e-6, *, k_cache=None, v_cache=None,
                       cache_lens=None):
    """The full-attention layer's work between its projections and the attention, for one decode
    token, from the installed module: `q_norm` / `k_norm` (`Qwen3_5MoeRMSNorm`, (1 + w) scaling) on
    the first D of each q head (q [B, Hq, W], W >= D: the gated q_proj layout puts the gate in the
    second D) and on k [B, Hkv, D], then the installed `apply_rotary_pos_emb` with cos / sin [B, R]
    (partial rotary on the first R dims). With caches: k (rotated) and v written at cache_lens - 1.
    Returns (q [B, Hq, D], k [B, Hkv, D])."""
    mod = fallback_module()
    D = q_weight.shape[0]
    cls = mod.Qwen3_5MoeRMSNorm
    qn = cls.forward(_stand_in(cls, weight=q_weight, eps=eps), q[..., :D])
    kn = cls.forward(_stand_in(cls, weight=k_weight, eps=eps), k)
    # the layer's layout: [B, H, T=1, D] against cos / sin [B, T=1, R]
    qr, kr = mod.apply_rotary_pos_emb(qn[:, :, None, :], kn[:, :, None, :], cos[:, None, :], sin[:, None, :])
    qr, kr = qr[:, :, 0], kr[:, :, 0]
    if k_cache is not None:
        _write_at_len(k_cache, v_cache, cache_lens, kr, v)
    return qr.contiguous(), kr.contiguous()
