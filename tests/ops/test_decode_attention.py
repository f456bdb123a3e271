"""GQA decode attention over a static KV cache (`decode_attention`): every backend vs the installed
transformers `eager_attention_forward` with the padded-cache mask and the layer's sigmoid gate
(the reference backend) and vs a float64 loop over sequences, heads and positions written here.

Shapes: the model's 16 q / 2 kv heads of 256 and 6 q / 2 kv heads of 100 (G = 3 and D = 100 are
no powers of two: masked tails); Lmax 40 / 37 (not a multiple of the 32-position block), lengths
1, a middle one and Lmax; with and without the gate and the KV write.

Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref|), outputs of magnitude ~0.1-1:

| inputs | vs transformers eager      | vs float64 loop     |
|--------|----------------------------|---------------------|
| fp32   | rms 1e-5, max 1e-5         | rms 1e-5, max 1e-5  |
| bf16   | rms 5e-3, max 1.6e-2       | rms 2e-2, max 6e-2  |

The cache write is compared bit-exactly. Triton runs under TRITON_INTERPRET=1.
"""
import importlib.util

import pytest
import torch

from interns2_fast import ops
import tolerance  # noqa: E402  (tests/tolerance.py)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

TOL_REF = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (5e-3, 1.6e-2)}
TOL_LOOP = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 6e-2)}
_HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not _HAS_TRITON, reason="triton missing"))]


def loop_attention(q, k_cache, v_cache, lens, gate, scale):
    B, Hq, D = q.shape
    G = Hq // k_cache.shape[1]
    out = torch.zeros(B, Hq, D, dtype=torch.float64)
    for b in range(B):
        n = int(lens[b])
        for i in range(Hq):
            k = k_cache[b, i // G, :n].double()
            v = v_cache[b, i // G, :n].double()
            s = (k @ q[b, i].double()) * scale
            p = torch.exp(s - s.max())
            o = (p / p.sum()) @ v
            if gate is not None:
                o = o * torch.sigmoid(gate[b, i].double())
            out[b, i] = o
    return out


def make(B, Hq, Hkv, L, D, dtype):
    q = torch.randn(B, Hq, D).to(dtype)
    gate = torch.randn(B, Hq, D).to(dtype)
    k_cache = torch.randn(B, Hkv, L, D).to(dtype)
    v_cache = torch.randn(B, Hkv, L, D).to(dtype)
    k_new = torch.randn(B, Hkv, D).to(dtype)
    v_new = torch.randn(B, Hkv, D).to(dtype)
    return q, gate, k_cache, v_cache, k_new, v_new


SHAPES = [(16, 2, 40, 256), (6, 2, 37, 100)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("write", [True, False], ids=["write", "no-write"])
@pytest.mark.parametrize("with_gate", [True, False], ids=["gate", "no-gate"])
@pytest.mark.parametrize("Hq,Hkv,L,D", SHAPES, ids=["16q-2kv-d256", "6q-2kv-d100"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_matches_eager_and_loop(backend, dtype, Hq, Hkv, L, D, with_gate, write):
    q, gate, k_cache, v_cache, k_new, v_new = make(3, Hq, Hkv, L, D, dtype)
    gate = gate if with_gate else None
    lens = torch.tensor([1, L // 2, L], dtype=torch.int32)
    new = dict(k_new=k_new, v_new=v_new) if write else {}
    kc, vc = k_cache.clone(), v_cache.clone()
    out = ops.decode_attention(q, kc, vc, lens, gate, backend=backend, **new)
    kr, vr = k_cache.clone(), v_cache.clone()
    ref = ops.decode_attention(q, kr, vr, lens, gate, backend="reference", **new)
    assert out.shape == (3, Hq, D) and out.dtype == dtype
    assert torch.equal(kc, kr) and torch.equal(vc, vr), "cache contents differ"
    if write:
        for b in range(3):
            assert torch.equal(kc[b, :, lens[b] - 1], k_new[b]) and torch.equal(vc[b, :, lens[b] - 1], v_new[b])
        assert torch.equal(kc[0, :, 1:], k_cache[0, :, 1:])  # nothing else written
    else:
        assert torch.equal(kc, k_cache) and torch.equal(vc, v_cache)
    tolerance.assert_close(out, ref, *TOL_REF[dtype], "vs eager")
    tolerance.assert_close(out, loop_attention(q, kr, vr, lens, gate, D**-0.5), *TOL_LOOP[dtype], "vs loop")


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_is_ignored_and_scale(backend):
    """Stale values (large, finite: a static cache past its length holds earlier writes) change
    nothing; an explicit scale is honoured."""
    q, gate, k_cache, v_cache, _, _ = make(2, 4, 1, 20, 64, torch.float32)
    lens = torch.tensor([5, 13], dtype=torch.int32)
    junk_k, junk_v = k_cache.clone(), v_cache.clone()
    for b, n in enumerate(lens.tolist()):
        junk_k[b, :, n:] = 1e4
        junk_v[b, :, n:] = -1e4
    out = ops.decode_attention(q, junk_k, junk_v, lens, gate, scale=0.3, backend=backend)
    ref = ops.decode_attention(q, k_cache, v_cache, lens, gate, scale=0.3, backend="reference")
    tolerance.assert_close(out, ref, *TOL_REF[torch.float32])
    tolerance.assert_close(out, loop_attention(q, k_cache, v_cache, lens, gate, 0.3), *TOL_LOOP[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_q_and_gate(backend):
    """q and gate as the layer produces them: halves of one projection, heads interleaved."""
    B, Hq, Hkv, L, D = 2, 4, 2, 9, 32
    proj = torch.randn(B, Hq, 2 * D)
    q, gate = proj[..., :D], proj[..., D:]
    _, _, k_cache, v_cache, _, _ = make(B, Hq, Hkv, L, D, torch.float32)
    lens = torch.tensor([9, 4], dtype=torch.int64)
    out = ops.decode_attention(q, k_cache, v_cache, lens, gate, backend=backend)
    ref = ops.decode_attention(q.contiguous(), k_cache, v_cache, lens, gate.contiguous(), backend="reference")
    tolerance.assert_close(out, ref, *TOL_REF[torch.float32])


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_bad_inputs(backend):
    q, gate, k_cache, v_cache, k_new, v_new = make(2, 4, 2, 8, 16, torch.float32)
    lens = torch.tensor([3, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="decode_attention.*multiple"):
        ops.decode_attention(q[:, :3], k_cache, v_cache, lens, backend=backend)
    with pytest.raises(ValueError, match="decode_attention.*k_cache"):
        ops.decode_attention(q, k_cache[..., :8], v_cache, lens, backend=backend)
    with pytest.raises(ValueError, match="decode_attention.*cache_lens"):
        ops.decode_attention(q, k_cache, v_cache, lens[:1], backend=backend)
    with pytest.raises(TypeError, match="decode_attention.*cache_lens"):
        ops.decode_attention(q, k_cache, v_cache, lens.float(), backend=backend)
    with pytest.raises(ValueError, match="decode_attention.*both k_new and v_new"):
        ops.decode_attention(q, k_cache, v_cache, lens, k_new=k_new, backend=backend)
    with pytest.raises(TypeError, match="decode_attention.*v_cache"):
        ops.decode_attention(q, k_cache, v_cache.double(), lens, backend=backend)
    with pytest.raises(ValueError, match="decode_attention.*gate"):
        ops.decode_attention(q, k_cache, v_cache, lens, gate[:, :2], backend=backend)


def loop_attention_masked(q, k_cache, v_cache, lens, gate, scale, keep):
    """float64 loop over the positions j < len with keep[b, j] (the padding mask's attended set)."""
    B, Hq, D = q.shape
    G = Hq // k_cache.shape[1]
    out = torch.zeros(B, Hq, D, dtype=torch.float64)
    for b in range(B):
        idx = [j for j in range(int(lens[b])) if keep[b, j]]
        for i in range(Hq):
            k = k_cache[b, i // G, idx].double()
            v = v_cache[b, i // G, idx].double()
            s = (k @ q[b, i].double()) * scale
            p = torch.exp(s - s.max())
            o = (p / p.sum()) @ v
            out[b, i] = o * torch.sigmoid(gate[b, i].double())
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_padding_mask(backend, dtype):
    """The static decode step's additive mask (left padding: the first positions of shorter prompts are
    the dtype's min; whole 32-position blocks of them, too) with lengths: equal to the installed eager
    attention under the same mask and to a loop over the attended positions."""
    B, Hq, Hkv, L, D = 3, 6, 2, 70, 48
    q, gate, k_cache, v_cache, _, _ = make(B, Hq, Hkv, L, D, dtype)
    lens = torch.tensor([45, 45, 45], dtype=torch.int32)
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, :3] = False
    keep[2, :40] = False  # more than one whole block of padding before the first attended position
    keep[0, 44] = True
    mask = torch.zeros(B, L, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
    out = ops.decode_attention(q, k_cache, v_cache, lens, gate, mask=mask, backend=backend)
    ref = ops.decode_attention(q, k_cache, v_cache, lens, gate, mask=mask, backend="reference")
    tolerance.assert_close(out, ref, *TOL_REF[dtype], "vs eager")
    tolerance.assert_close(out, loop_attention_masked(q, k_cache, v_cache, lens, gate, D**-0.5, keep),
                           *TOL_LOOP[dtype], "vs loop")
    unmasked = ops.decode_attention(q, k_cache, v_cache, lens, gate, backend="reference")
    assert not torch.allclose(unmasked[2], ref[2]), "the mask must change what padding-heavy rows attend to"
    with pytest.raises(ValueError, match="decode_attention.*mask"):
        ops.decode_attention(q, k_cache, v_cache, lens, gate, mask=mask[:, :5], backend=backend)
