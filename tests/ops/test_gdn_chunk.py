"""Chunked (prefill) gated delta rule: every backend vs the transformers fallback (reference backend)
and vs a float64 per-token recurrence written here; GVA, padding, packed sequences, scale, errors.

Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref| / max(1, max |ref|)), for the
output o and the final state:

| inputs | vs transformers fallback | vs float64 recurrence |
|--------|--------------------------|-----------------------|
| fp32   | rms 2e-5, max 2e-4       | rms 2e-5, max 2e-4    |
| bf16   | rms 1e-2, max 5e-2       | rms 1e-2, max 5e-2    |
| fp16   | rms 2e-3, max 1e-2       | rms 2e-3, max 1e-2    |

fla's own chunk test uses rms 5e-3 for bf16. Our bf16/fp16 errors come from rounding o to the input
dtype (bf16: 2^-9 relative) and, vs the fallback, from its l2norm computed in the input dtype;
states and all arithmetic are fp32. The float64 recurrence starts from the same (rounded) inputs.
Triton runs under TRITON_INTERPRET=1 on small shapes (a covering subset of the torch cases).
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from interns2_fast import ops
import tolerance  # noqa: E402  (tests/tolerance.py)

# The Triton interpreter converts 1-element arrays to loop indices (numpy 1.25+ warns).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

OP = "chunk_gated_delta_rule"
TOL = {
    torch.float32: (2e-5, 2e-4),
    torch.bfloat16: (1e-2, 5e-2),
    torch.float16: (2e-3, 1e-2),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TS = [1, 2, 63, 64, 65, 200]
HEADS = [(2, 2), (2, 4)]  # (Hk, Hv): Hk == Hv and Hv == 2 * Hk
DIMS = [32, 64, 48]  # K = V; 48 is not a power of two


def assert_close(out, ref, dtype, what=""):
    tolerance.assert_close(out, ref, *TOL[dtype], what, max_scale="ref_or_1")

def make_inputs(B, T, Hk, Hv, K, V, dtype, *, h0=True, l2=True, N=None):
    """Gates from the model's gating formula; k (and q) unit-norm when the op does not normalise."""
    q = torch.randn(B, T, Hk, K)
    k = torch.randn(B, T, Hk, K)
    if not l2:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    v = torch.randn(B, T, Hv, V)
    a = torch.randn(B, T, Hv)
    A_log = torch.rand(Hv) * 2 - 2
    g = -A_log.exp() * F.softplus(a + 0.5)
    beta = torch.randn(B, T, Hv).sigmoid()
    n = B if N is None else N
    init = torch.randn(n, Hv, K, V) * 0.5 if h0 else None
    return q.to(dtype), k.to(dtype), v.to(dtype), g, beta.to(dtype), init


def naive(q, k, v, g, beta, *, scale=None, initial_state=None, l2=False):
    """Per-token recurrence in float64: S <- e^g S; S <- S + k (beta (v - S^T k))^T; o = S^T (scale q)."""
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    if l2:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    q = q * (K**-0.5 if scale is None else scale)
    heads = torch.arange(Hv) // (Hv // Hk)
    q, k = q[:, :, heads], k[:, :, heads]
    S = torch.zeros(B, Hv, K, V, dtype=torch.float64) if initial_state is None else initial_state.double().clone()
    o = torch.empty(B, T, Hv, V, dtype=torch.float64)
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        kt = k[:, t]
        delta = (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, kt)) * beta[:, t, :, None]
        S = S + kt[..., :, None] * delta[..., None, :]
        o[:, t] = torch.einsum("bhkv,bhk->bhv", S, q[:, t])
    return o, S


def run(backend, q, k, v, g, beta, init, **kw):
    return ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=init, output_final_state=True,
                                      backend=backend, **kw)


def check_case(backend, dtype, B, T, Hk, Hv, D, h0, l2):
    q, k, v, g, beta, init = make_inputs(B, T, Hk, Hv, D, D, dtype, h0=h0, l2=l2)
    o, s = run(backend, q, k, v, g, beta, init, use_qk_l2norm_in_kernel=l2)
    assert o.dtype == dtype and o.shape == (B, T, Hv, D)
    assert s.dtype == torch.float32 and s.shape == (B, Hv, D, D)
    o_ref, s_ref = run("reference", q, k, v, g, beta, init, use_qk_l2norm_in_kernel=l2)
    assert_close(o, o_ref, dtype, "o vs fallback")
    assert_close(s, s_ref, dtype, "state vs fallback")
    o_nv, s_nv = naive(q, k, v, g, beta, initial_state=init, l2=l2)
    assert_close(o, o_nv, dtype, "o vs float64 recurrence")
    assert_close(s, s_nv, dtype, "state vs float64 recurrence")


# --- torch backend: the full cross-product (init state and l2norm paired to keep it fast) -----------

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: one intra-op thread is faster and steadier on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("Hk,Hv", HEADS)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("B,variant", [(1, "plain"), (3, "h0+l2")])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch(dtype, B, variant, T, Hk, Hv, D):
    h0 = l2 = variant == "h0+l2"
    check_case("torch", dtype, B, T, Hk, Hv, D, h0, l2)


@pytest.mark.parametrize("B,variant", [(3, "plain"), (1, "h0+l2")])
@pytest.mark.parametrize("T", [2, 65])
def test_torch_other_batch_pairing(B, variant, T):
    h0 = l2 = variant == "h0+l2"
    check_case("torch", torch.float32, B, T, 2, 4, 48, h0, l2)


@pytest.mark.parametrize("h0,l2", [(True, False), (False, True)])
def test_torch_init_and_l2_separately(h0, l2):
    check_case("torch", torch.float32, 3, 65, 2, 4, 32, h0, l2)


# --- triton backend: a covering subset (interpreter) ---------------------------------------------

TRITON_CASES = [
    # dtype, B, T, Hk, Hv, D, h0, l2
    (torch.float32, 1, 1, 2, 2, 32, False, False),
    (torch.float32, 3, 2, 2, 4, 32, True, True),
    (torch.float32, 1, 63, 2, 4, 48, True, False),
    (torch.float32, 3, 64, 2, 2, 32, False, True),
    (torch.float32, 1, 65, 2, 4, 32, True, True),
    (torch.float32, 1, 200, 1, 2, 32, True, False),
    (torch.bfloat16, 1, 65, 2, 4, 32, True, True),
    (torch.bfloat16, 3, 63, 2, 2, 48, False, False),
    (torch.float16, 1, 200, 1, 2, 32, True, True),
    (torch.float16, 3, 1, 2, 4, 64, True, False),
]


@pytest.mark.parametrize("dtype,B,T,Hk,Hv,D,h0,l2", TRITON_CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_triton(dtype, B, T, Hk, Hv, D, h0, l2):
    pytest.importorskip("triton")
    check_case("triton", dtype, B, T, Hk, Hv, D, h0, l2)


# --- features shared by both backends ------------------------------------------------------------

BACKENDS = ["torch", "triton"]


def need(backend):
    if backend == "triton":
        pytest.importorskip("triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K,V,h0,l2", [(160, 160, True, True), (160, 96, False, False), (32, 80, True, True)])
def test_wide_and_unequal_head_dims(backend, K, V, h0, l2):
    """K > 128 takes two K tiles in the Triton state pass; K != V; non-powers of two."""
    need(backend)
    q, k, v, g, beta, init = make_inputs(1, 65, 1, 2, K, V, torch.float32, h0=h0, l2=l2)
    o, s = run(backend, q, k, v, g, beta, init, use_qk_l2norm_in_kernel=l2)
    o_nv, s_nv = naive(q, k, v, g, beta, initial_state=init, l2=l2)
    assert_close(o, o_nv, torch.float32, "o")
    assert_close(s, s_nv, torch.float32, "state")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("l2", [False, True])
def test_custom_scale(backend, l2):
    need(backend)
    q, k, v, g, beta, init = make_inputs(1, 70, 2, 4, 32, 32, torch.float32, l2=l2)
    o, s = run(backend, q, k, v, g, beta, init, scale=0.37, use_qk_l2norm_in_kernel=l2)
    o_nv, s_nv = naive(q, k, v, g, beta, scale=0.37, initial_state=init, l2=l2)
    assert_close(o, o_nv, torch.float32, "o")
    assert_close(s, s_nv, torch.float32, "state")
    o_ref, _ = run("reference", q, k, v, g, beta, init, scale=0.37, use_qk_l2norm_in_kernel=l2)
    assert_close(o, o_ref, torch.float32, "o vs fallback")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cu_seqlens_equals_each_sequence_alone(backend, dtype):
    need(backend)
    lengths = [5, 64, 130, 1, 66]
    T = sum(lengths)
    cu = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int32)
    q, k, v, g, beta, init = make_inputs(1, T, 2, 4, 32, 32, dtype, N=len(lengths))
    o, s = ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=init, output_final_state=True,
                                      use_qk_l2norm_in_kernel=True, cu_seqlens=cu, backend=backend)
    assert o.shape == (1, T, 4, 32) and s.shape == (len(lengths), 4, 32, 32) and s.dtype == torch.float32
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        sl = slice(a, b)
        o_n, s_n = ops.chunk_gated_delta_rule(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl],
                                              initial_state=init[n : n + 1], output_final_state=True,
                                              use_qk_l2norm_in_kernel=True, backend=backend)
        assert_close(o[:, sl], o_n, dtype, f"o of sequence {n}")
        assert_close(s[n : n + 1], s_n, dtype, f"state of sequence {n}")
        o_nv, s_nv = naive(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], initial_state=init[n : n + 1], l2=True)
        assert_close(o[:, sl], o_nv, dtype, f"o of sequence {n} vs float64")
        assert_close(s[n : n + 1], s_nv, dtype, f"state of sequence {n} vs float64")
    o_ref, s_ref = ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=init, output_final_state=True,
                                              use_qk_l2norm_in_kernel=True, cu_seqlens=cu, backend="reference")
    assert_close(o, o_ref, dtype, "o vs fallback")
    assert_close(s, s_ref, dtype, "state vs fallback")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_final_state_and_noncontiguous_inputs(backend):
    need(backend)
    q, k, v, g, beta, _ = make_inputs(2, 67, 2, 4, 32, 32, torch.float32)
    # q, k, v as transposed views of [B, H, T, D] buffers (what the model's reshapes can give)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    o, s = ops.chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True, backend=backend)
    assert s is None
    o_nv, _ = naive(q, k, v, g, beta, l2=True)
    assert_close(o, o_nv, torch.float32, "o")


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefill_then_decode_equals_one_recurrence(backend):
    need(backend)
    T, steps = 70, 3
    q, k, v, g, beta, init = make_inputs(1, T + steps, 2, 4, 32, 32, torch.float32)
    o, s = ops.chunk_gated_delta_rule(q[:, :T], k[:, :T], v[:, :T], g[:, :T], beta[:, :T], initial_state=init,
                                      output_final_state=True, use_qk_l2norm_in_kernel=True, backend=backend)
    outs = [o]
    for t in range(T, T + steps):
        sl = slice(t, t + 1)
        o_t, s = ops.fused_recurrent_gated_delta_rule(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl],
                                                      initial_state=s, output_final_state=True,
                                                      use_qk_l2norm_in_kernel=True, backend="reference")
        outs.append(o_t)
    o_nv, s_nv = naive(q, k, v, g, beta, initial_state=init, l2=True)
    assert_close(torch.cat(outs, dim=1), o_nv, torch.float32, "o")
    assert_close(s, s_nv, torch.float32, "state")


# --- bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_name_the_op(backend):
    need(backend)
    q, k, v, g, beta, init = make_inputs(1, 8, 2, 4, 32, 32, torch.float32)
    with pytest.raises(ValueError, match=OP):
        ops.chunk_gated_delta_rule(q[0], k, v, g, beta, backend=backend)
    with pytest.raises(TypeError, match=OP):
        ops.chunk_gated_delta_rule(q, k.half(), v, g, beta, backend=backend)
    with pytest.raises(TypeError, match=OP):
        ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=init.bfloat16(), backend=backend)
    with pytest.raises(ValueError, match=OP):
        ops.chunk_gated_delta_rule(q, k, v[:, :, :3], g[..., :3], beta[..., :3], backend=backend)
    with pytest.raises(ValueError, match=OP):
        cu = torch.tensor([0, 4, 8])
        ops.chunk_gated_delta_rule(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1),
                                   g.expand(2, -1, -1), beta.expand(2, -1, -1), cu_seqlens=cu, backend=backend)


def test_triton_rejects_head_dims_over_256():
    pytest.importorskip("triton")
    q, k, v, g, beta, _ = make_inputs(1, 2, 1, 1, 320, 32, torch.float32)
    with pytest.raises(ValueError, match=OP):
        ops.chunk_gated_delta_rule(q, k, v, g, beta, backend="triton")


# --- cu_seqlens: checked on host copies (and after the launchers' own host read) -----------------

BAD_CU = [([1, 4, 8], "start at 0"), ([0, 6, 2, 8], "be non-decreasing"), ([0, -2, 8], "be non-decreasing"),
          ([0, 4, 9], "end at the number of tokens T = 8"), ([0, 4, 7], "end at the number of tokens T = 8")]


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("cu, match", BAD_CU)
def test_bad_cu_seqlens_are_rejected(backend, cu, match):
    if backend == "triton":
        pytest.importorskip("triton")
    q, k, v, g, beta, init = make_inputs(1, 8, 2, 4, 16, 16, torch.float32, N=len(cu) - 1)
    with pytest.raises(ValueError, match=f"{OP}: cu_seqlens must {match}"):
        ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=init, cu_seqlens=torch.tensor(cu),
                                   backend=backend)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("cu, match", BAD_CU)
def test_backends_check_the_offsets_they_read_back(impl, cu, match):
    """A device cu_seqlens is not validated by the op (that would be a sync); both chunked backends
    read the offsets back anyway (to plan the chunks) and check them there, before any kernel runs.
    The backends are called directly, as the op does for a device tensor."""
    if impl == "triton":
        pytest.importorskip("triton")
        from interns2_fast.kernels import gdn_chunk as mod
    else:
        from interns2_fast.torch_impl import gdn_chunk as mod
    q, k, v, g, beta, init = make_inputs(1, 8, 2, 4, 16, 16, torch.float32, N=len(cu) - 1)
    with pytest.raises(ValueError, match=f"cu_seqlens must {match}"):
        mod.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=init, cu_seqlens=torch.tensor(cu))
