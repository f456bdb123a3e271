"""The reference backend of every op equals the installed transformers fallback (and an
independent float64 implementation), whichever transformers version is installed.

The GDN, conv-update, norm, router and experts references call the installed fallback
functions/modules themselves; the tests here pin the conventions around them (GVA head mapping,
scale, cu_seqlens splitting, inline arithmetic) against the full transformers layer or a float64
loop written here.
"""
import pytest
import torch
import torch.nn.functional as F

from interns2_fast import models, ops, reference


def rms_ratio(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def naive_gdn(q, k, v, g, beta, scale, h0=None, l2=False):
    """Per-token float64 recurrence; value head h reads key head h // (Hv // Hk)."""
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    if l2:
        q = q / (q.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
        k = k / (k.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    S = torch.zeros(B, Hv, K, V, dtype=torch.float64) if h0 is None else h0.double().clone()
    o = torch.zeros(B, T, Hv, V, dtype=torch.float64)
    for t in range(T):
        for h in range(Hv):
            kh = h // (Hv // Hk)
            S[:, h] *= g[:, t, h].exp()[:, None, None]
            kt, qt = k[:, t, kh], q[:, t, kh] * scale
            delta = beta[:, t, h, None] * (v[:, t, h] - torch.einsum("bkv,bk->bv", S[:, h], kt))
            S[:, h] += kt[:, :, None] * delta[:, None, :]
            o[:, t, h] = torch.einsum("bkv,bk->bv", S[:, h], qt)
    return o, S


def gdn_inputs(B=2, T=37, Hk=2, Hv=4, K=16, V=24, dtype=torch.float32):
    q, k = torch.randn(B, T, Hk, K, dtype=dtype), torch.randn(B, T, Hk, K, dtype=dtype)
    v = torch.randn(B, T, Hv, V, dtype=dtype)
    g = -torch.rand(B, T, Hv) * 0.5
    beta = torch.rand(B, T, Hv)
    return q, k, v, g, beta


@pytest.mark.parametrize("op", ["chunk", "recurrent"])
@pytest.mark.parametrize("gva", [1, 2])
@pytest.mark.parametrize("l2", [False, True])
def test_gdn_reference_matches_float64_recurrence(op, gva, l2):
    q, k, v, g, beta = gdn_inputs(Hk=4 // gva)
    h0 = torch.randn(2, 4, 16, 24) * 0.1
    fn = ops.chunk_gated_delta_rule if op == "chunk" else ops.fused_recurrent_gated_delta_rule
    o, s = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2,
              backend="reference")
    o_ref, s_ref = naive_gdn(q, k, v, g, beta, 16**-0.5, h0, l2)
    assert o.dtype == q.dtype and s.dtype == torch.float32
    assert rms_ratio(o, o_ref) < 1e-5 and rms_ratio(s, s_ref) < 1e-5


def test_gdn_reference_custom_scale_and_cu_seqlens():
    q, k, v, g, beta = gdn_inputs(B=1, T=50)
    cu = torch.tensor([0, 7, 50])
    o, s = ops.chunk_gated_delta_rule(q, k, v, g, beta, scale=0.3, output_final_state=True, cu_seqlens=cu,
                                      use_qk_l2norm_in_kernel=True, backend="reference")
    for n, (a, b) in enumerate([(0, 7), (7, 50)]):
        o_ref, s_ref = naive_gdn(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], beta[:, a:b], 0.3, l2=True)
        assert rms_ratio(o[:, a:b], o_ref) < 1e-5
        assert rms_ratio(s[n : n + 1], s_ref) < 1e-5


def test_gdn_reference_inplace_state():
    q, k, v, g, beta = gdn_inputs(T=1)
    state = torch.randn(2, 4, 16, 24)
    before = state.clone()
    o, s = ops.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state, inplace_final_state=True,
                                                backend="reference")
    _, s_ref = naive_gdn(q, k, v, g, beta, 16**-0.5, before)
    assert s is state and rms_ratio(state, s_ref) < 1e-5


def test_gdn_gating_reference_matches_layer_arithmetic():
    A_log, dt_bias = torch.randn(4), torch.randn(4)
    a, b = torch.randn(2, 5, 4, dtype=torch.bfloat16) * 5, torch.randn(2, 5, 4, dtype=torch.bfloat16)
    g, beta = ops.gdn_gating(A_log, a, dt_bias, b, backend="reference")
    g64 = -A_log.double().exp() * F.softplus(a.double() + dt_bias.double())
    assert g.dtype == torch.float32 and beta.dtype == torch.bfloat16
    assert torch.allclose(g.double(), g64, rtol=1e-5, atol=1e-6)
    assert torch.equal(beta, b.sigmoid())


def conv_loop(x, w, bias=None, init=None, silu=True):
    B, D, T = x.shape
    W = w.shape[1]
    xx = torch.cat([torch.zeros(B, D, W - 1, dtype=torch.float64) if init is None else init.double(), x.double()], -1)
    out = torch.stack([(xx[:, :, t : t + W] * w.double()).sum(-1) for t in range(T)], -1)
    if bias is not None:
        out = out + bias.double()[:, None]
    return F.silu(out) if silu else out


def test_conv_reference_matches_layer_conv_and_loop():
    D, W, T = 24, 4, 9
    conv = torch.nn.Conv1d(D, D, W, groups=D, padding=W - 1, bias=False)
    x = torch.randn(2, T, D).transpose(1, 2)  # the layer's transposed projection output
    out = ops.causal_conv1d_fn(x, conv.weight.squeeze(1), None, activation="silu", backend="reference")
    with torch.no_grad():
        layer_out = F.silu(conv(x)[:, :, :T])  # transformers 5.2's inline fallback
    assert torch.equal(out, layer_out)
    assert torch.allclose(out.double(), conv_loop(x, conv.weight.squeeze(1).detach()), atol=1e-5)


def test_conv_reference_initial_and_final_states():
    x, w, bias = torch.randn(2, 8, 6), torch.randn(8, 4), torch.randn(8)
    init = torch.randn(2, 8, 3)
    out, final = ops.causal_conv1d_fn(x, w, bias, initial_states=init, return_final_states=True, activation=None,
                                      backend="reference")
    assert torch.allclose(out.double(), conv_loop(x, w, bias, init, silu=False), atol=1e-5)
    assert torch.equal(final, x[:, :, -3:])


def test_conv_update_reference_is_fallback_and_updates_state_in_place():
    x, w = torch.randn(2, 8, 1), torch.randn(8, 4)
    state = torch.randn(2, 8, 5)
    before = state.clone()
    out = ops.causal_conv1d_update(x, state, w, None, "silu", backend="reference")
    assert torch.equal(state, torch.cat([before, x], -1)[:, :, -5:])
    expected = conv_loop(x, w, init=before[:, :, -3:])
    assert torch.allclose(out.double(), expected, atol=1e-5)


def test_rms_norm_gated_reference_is_the_transformers_module():
    cls = reference.fallback_module().Qwen3_5MoeRMSNormGated
    norm = cls(32, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x, z = torch.randn(10, 32, dtype=torch.bfloat16), torch.randn(10, 32, dtype=torch.bfloat16)
    norm = norm.to(torch.bfloat16)
    out = ops.rms_norm_gated(x, z, norm.weight, 1e-6, backend="reference")
    with torch.no_grad():
        assert torch.equal(out, norm(x, z))


def _moe_block(E=8, k=2, H=32, I=16):
    cfg = models.tiny_config("qwen3_5_moe")
    cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size, cfg.moe_intermediate_size = E, k, H, I
    block = reference.fallback_module().Qwen3_5MoeSparseMoeBlock(cfg)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    return block.eval()


def test_moe_route_reference_matches_router_module():
    block = _moe_block()
    h = torch.randn(7, 32)
    logits, w, ids = ops.moe_route(h, block.gate.weight.detach(), 2, backend="reference")
    with torch.no_grad():
        _, scores, idx = block.gate(h)
    assert torch.equal(ids, idx) and torch.allclose(w, scores.float())
    assert torch.allclose(logits, F.linear(h, block.gate.weight))
    probs = torch.softmax(logits.double(), -1)
    top = probs.topk(2, -1)
    assert torch.allclose(w.double(), top.values / top.values.sum(-1, keepdim=True), atol=1e-6)


def test_moe_experts_reference_matches_experts_module_and_loop():
    block = _moe_block()
    h = torch.randn(7, 32)
    _, w, ids = ops.moe_route(h, block.gate.weight.detach(), 2, backend="reference")
    out = ops.moe_experts(h, ids, w, block.experts.gate_up_proj.detach(), block.experts.down_proj.detach(),
                          backend="reference")
    with torch.no_grad():
        module_out = block.experts(h, ids, w)
    assert torch.equal(out, module_out)
    gu, dp = block.experts.gate_up_proj.double(), block.experts.down_proj.double()
    loop = torch.zeros(7, 32, dtype=torch.float64)
    for t in range(7):
        for j in range(2):
            e = ids[t, j]
            gate, up = (gu[e] @ h[t].double()).chunk(2)
            loop[t] += w[t, j].double() * (dp[e] @ (F.silu(gate) * up))
    assert torch.allclose(out.double(), loop.detach(), atol=1e-5)
