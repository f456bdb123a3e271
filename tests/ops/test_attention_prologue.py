"""The full-attention decode prologue (`attention_prologue`): every backend vs the installed
transformers attention layer (its q_proj / k_proj / v_proj outputs, q_norm / k_norm and
`apply_rotary_pos_emb`, captured where the layer hands them to the cache and the attention
function) and vs a float64 loop over sequences, heads and dims written here.

Shapes: the model's 16 q / 2 kv heads of 256 with rotary 64 (mrope text positions), and 6 q / 2
kv heads of 100 with rotary 20 (neither half nor tail a power of two: masked tails); the cache
write at per-sequence positions (compared bit-exactly with the reference backend's).

Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref|), outputs of magnitude ~1-4:

| inputs | vs transformers layer | vs float64 loop    |
|--------|-----------------------|--------------------|
| fp32   | rms 1e-6, max 1e-5    | rms 1e-6, max 2e-5 |
| bf16   | rms 2e-3, max 3.2e-2  | rms 8e-3, max 6.3e-2 |

(bf16 max: one ulp at magnitude 4.) Triton runs under TRITON_INTERPRET=1.
"""
import importlib.util

import pytest
import torch

from interns2_fast import ops
from interns2_fast import reference
import tolerance  # noqa: E402  (tests/tolerance.py)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

TOL_LAYER = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (2e-3, 3.2e-2)}
TOL_LOOP = {torch.float32: (1e-6, 2e-5), torch.bfloat16: (8e-3, 6.3e-2)}
_HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["reference", "torch",
            pytest.param("triton", marks=pytest.mark.skipif(not _HAS_TRITON, reason="triton missing"))]


def loop_prologue(q, k, qw, kw, cos, sin, eps):
    """float64: per row, RMSNorm with (1 + w), then rotate the first R dims (pairs i, i + R/2)."""
    D = qw.shape[0]
    R = cos.shape[-1]
    h = R // 2

    def row(x, w, c, s):
        x = x.double()
        n = x / torch.sqrt((x * x).mean() + eps) * (1.0 + w.double())
        out = n.clone()
        for i in range(h):
            out[i] = n[i] * c[i] - n[i + h] * s[i]
            out[i + h] = n[i + h] * c[i + h] + n[i] * s[i + h]
        return out

    B, Hq = q.shape[:2]
    qo = torch.zeros(B, Hq, D, dtype=torch.float64)
    ko = torch.zeros(B, k.shape[1], D, dtype=torch.float64)
    for b in range(B):
        c, s = cos[b].double(), sin[b].double()
        for i in range(Hq):
            qo[b, i] = row(q[b, i, :D], qw, c, s)
        for i in range(k.shape[1]):
            ko[b, i] = row(k[b, i], kw, c, s)
    return qo, ko


def layer_case(Hq, Hkv, D, rotary, dtype, B=3, positions=(5, 17, 40)):
    """A transformers attention layer of the installed version with random norm weights, one decode
    token per sequence: returns the layer, its (q_proj view, k, v, cos, sin) and what it computes."""
    mod = reference.fallback_module()
    cfg = mod.Qwen3_5MoeTextConfig(hidden_size=64, num_attention_heads=Hq, num_key_value_heads=Hkv, head_dim=D,
                                   partial_rotary_factor=rotary / D, num_hidden_layers=4, rms_norm_eps=1e-6,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [rotary // 4 - rotary // 8, rotary // 8,
                                                                      rotary // 8],
                                                    "mrope_interleaved": True, "partial_rotary_factor": rotary / D})
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    attn = mod.Qwen3_5MoeAttention(cfg, 3).to(dtype)
    with torch.no_grad():
        attn.q_norm.weight.normal_(0, 0.3)
        attn.k_norm.weight.normal_(0, 0.3)
    rot = mod.Qwen3_5MoeTextRotaryEmbedding(cfg)
    hidden = torch.randn(B, 1, 64).to(dtype)
    pos = torch.tensor(positions[:B]).view(B, 1)
    cos, sin = rot(hidden, pos)
    assert cos.shape[-1] == rotary
    seen = {}

    class Recorder:
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            seen["k"], seen["v"] = key_states, value_states
            return key_states, value_states

    def attention_fn(module, query, key, value, attention_mask, **kwargs):
        seen["q"] = query
        return torch.zeros(B, 1, Hq, D, dtype=dtype), None

    orig = mod.eager_attention_forward
    mod.eager_attention_forward = attention_fn
    try:
        with torch.no_grad():
            names = ("cache", "past_key_values")
            import inspect
            params = inspect.signature(type(attn).forward).parameters
            kw = {next(n for n in names if n in params): Recorder()}
            attn(hidden, (cos, sin), None, **kw)
    finally:
        mod.eager_attention_forward = orig
    with torch.no_grad():
        qg = attn.q_proj(hidden).view(B, Hq, 2 * D)
        k = attn.k_proj(hidden).view(B, Hkv, D)
        v = attn.v_proj(hidden).view(B, Hkv, D)
    want_q, want_k, want_v = seen["q"][:, :, 0], seen["k"][:, :, 0], seen["v"][:, :, 0]
    return attn, (qg, k, v, cos[:, 0], sin[:, 0]), (want_q, want_k, want_v)


SHAPES = [(16, 2, 256, 64), (6, 2, 100, 20)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("write", [True, False], ids=["write", "no-write"])
@pytest.mark.parametrize("Hq,Hkv,D,R", SHAPES, ids=["16q-2kv-d256-r64", "6q-2kv-d100-r20"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_matches_layer_and_loop(backend, dtype, Hq, Hkv, D, R, write):
    attn, (qg, k, v, cos, sin), (want_q, want_k, want_v) = layer_case(Hq, Hkv, D, R, dtype)
    B, L = qg.shape[0], 12
    eps = attn.q_norm.eps
    lens = torch.tensor([1, 7, L], dtype=torch.int32)
    kc0, vc0 = torch.randn(B, Hkv, L, D).to(dtype), torch.randn(B, Hkv, L, D).to(dtype)
    kc, vc = kc0.clone(), vc0.clone()
    cache = dict(k_cache=kc, v_cache=vc, cache_lens=lens) if write else {}
    q_out, k_out = ops.attention_prologue(qg, k, v, attn.q_norm.weight, attn.k_norm.weight, cos, sin, eps,
                                          backend=backend, **cache)
    assert q_out.shape == (B, Hq, D) and k_out.shape == (B, Hkv, D) and q_out.dtype == dtype
    tolerance.assert_close(q_out, want_q, *TOL_LAYER[dtype], "q vs layer")
    tolerance.assert_close(k_out, want_k, *TOL_LAYER[dtype], "k vs layer")
    lq, lk = loop_prologue(qg, k, attn.q_norm.weight, attn.k_norm.weight, cos, sin, eps)
    tolerance.assert_close(q_out, lq, *TOL_LOOP[dtype], "q vs loop")
    tolerance.assert_close(k_out, lk, *TOL_LOOP[dtype], "k vs loop")
    if write:
        kr, vr = kc0.clone(), vc0.clone()
        ops.attention_prologue(qg, k, v, attn.q_norm.weight, attn.k_norm.weight, cos, sin, eps, k_cache=kr,
                               v_cache=vr, cache_lens=lens, backend="reference")
        assert torch.equal(vc, vr), "value cache differs from the reference backend's"
        for b in range(B):
            n = int(lens[b]) - 1
            assert torch.equal(kc[b, :, n], k_out[b]) and torch.equal(vc[b, :, n], want_v[b])
            others = [j for j in range(L) if j != n]
            assert torch.equal(kc[b, :, others], kc0[b, :, others]) and torch.equal(vc[b, :, others], vc0[b, :, others])
        tolerance.assert_close(kc, kr, *TOL_LAYER[dtype], "k cache vs reference")


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_rotary_and_strided_inputs(backend):
    """R == D (no pass-through tail), q not gated (W == D), k / v strided views of one projection."""
    B, Hq, Hkv, D = 2, 4, 2, 32
    q = torch.randn(B, Hq, D)
    kv = torch.randn(B, Hkv, 2 * D)
    k, v = kv[..., :D], kv[..., D:]
    qw, kw = torch.randn(D) * 0.2, torch.randn(D) * 0.2
    ang = torch.randn(B, D // 2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    q_out, k_out = ops.attention_prologue(q, k, v, qw, kw, cos, sin, 1e-6, backend=backend)
    lq, lk = loop_prologue(q, k.contiguous(), qw, kw, cos, sin, 1e-6)
    tolerance.assert_close(q_out, lq, *TOL_LOOP[torch.float32])
    tolerance.assert_close(k_out, lk, *TOL_LOOP[torch.float32])


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_bad_inputs(backend):
    B, Hq, Hkv, D, R = 2, 4, 2, 16, 8
    q, k, v = torch.randn(B, Hq, 2 * D), torch.randn(B, Hkv, D), torch.randn(B, Hkv, D)
    w = torch.zeros(D)
    cos, sin = torch.ones(B, R), torch.zeros(B, R)
    kc, vc = torch.zeros(B, Hkv, 5, D), torch.zeros(B, Hkv, 5, D)
    lens = torch.tensor([1, 2], dtype=torch.int32)
    run = lambda **kw: ops.attention_prologue(**{**dict(q=q, k=k, v=v, q_weight=w, k_weight=w, cos=cos, sin=sin,
                                                        eps=1e-6), **kw}, backend=backend)
    with pytest.raises(ValueError, match="attention_prologue.*head_dim"):
        run(q=q[..., : D - 1])
    with pytest.raises(ValueError, match="attention_prologue.*k must have shape"):
        run(k=k[..., :8])
    with pytest.raises(ValueError, match="attention_prologue.*cos.*even"):
        run(cos=cos[:, :7], sin=sin[:, :7])
    with pytest.raises(ValueError, match="attention_prologue.*cos.*even"):
        run(cos=torch.ones(B, 2 * D), sin=torch.ones(B, 2 * D))
    with pytest.raises(ValueError, match="attention_prologue.*together"):
        run(k_cache=kc, v_cache=vc)
    with pytest.raises(ValueError, match="attention_prologue.*k_cache"):
        run(k_cache=kc[:, :1], v_cache=vc[:, :1], cache_lens=lens)
    with pytest.raises(TypeError, match="attention_prologue.*cache_lens"):
        run(k_cache=kc, v_cache=vc, cache_lens=lens.float())
    with pytest.raises(TypeError, match="attention_prologue.*cos"):
        run(cos=cos.double(), sin=sin.double())
