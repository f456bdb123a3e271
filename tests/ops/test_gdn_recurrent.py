"""Recurrent (decode) gated delta rule: every backend vs the transformers fallback and vs a float64
per-token recurrence written here; in-place state, cu_seqlens, fused gating, prefill + decode.

Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref|), for outputs o and final states:

| inputs   | vs transformers fallback | vs float64 recurrence |
|----------|--------------------------|-----------------------|
| fp32     | rms 2e-6, max 2e-5       | rms 2e-6, max 2e-5    |
| bf16     | rms 1e-2, max 5e-2       | rms 1e-2, max 5e-2    |
| fp16     | rms 1e-3, max 1e-2       | rms 1e-3, max 1e-2    |
(max is relative to max(1, max |ref|).)

bf16/fp16 errors are dominated by rounding o to the input dtype (bf16: 2^-9 relative) and, in
transformers 5.2, by its l2norm computed in the input dtype; states are fp32 everywhere. Measured
worst cases (rms, o vs float64): torch bf16 1.8e-3, fp16 2.4e-4, fp32 1.7e-7. The bf16 row is
loose for Triton: triton-ascend's interpreter converts fp32 -> bf16 by truncation, not
round-to-nearest (o vs float64 3.9e-3 under the interpreter; devices round to nearest).
Triton runs under TRITON_INTERPRET=1 on small shapes.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from interns2_fast import ops
import tolerance  # noqa: E402  (tests/tolerance.py)

# triton-ascend's interpreter converts 1-element arrays to scalars the way numpy 1.25+ deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

TOL = {
    torch.float32: (2e-6, 2e-5),
    torch.bfloat16: (1e-2, 5e-2),
    torch.float16: (1e-3, 1e-2),
}
BACKENDS = ["torch", "triton"]


def assert_close(out, ref, dtype, what=""):
    tolerance.assert_close(out, ref, *TOL[dtype], what, max_scale="ref_or_1")

def need(backend):
    if backend == "triton":
        pytest.importorskip("triton")


def make_inputs(B, T, Hk, Hv, K, V, dtype, *, h0=True, l2=True, N=None):
    """Realistic decode inputs: gates from the gating formula, k unit-norm when the kernel does not normalise."""
    q = torch.randn(B, T, Hk, K)
    k = torch.randn(B, T, Hk, K)
    if not l2:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    v = torch.randn(B, T, Hv, V)
    a = torch.randn(B, T, Hv) * 2
    b = torch.randn(B, T, Hv) * 2
    A_log = torch.rand(Hv) * 2 - 1
    dt_bias = torch.randn(Hv) * 0.5
    g = -A_log.exp() * F.softplus(a + dt_bias)
    beta = b.sigmoid()
    state = torch.randn(N or B, Hv, K, V) * 0.5 if h0 else None
    cast = lambda x: x.to(dtype)  # noqa: E731
    return dict(q=cast(q), k=cast(k), v=cast(v), g=g, beta=cast(beta), a=cast(a), b=cast(b), A_log=A_log,
                dt_bias=dt_bias, initial_state=state)


def naive(q, k, v, g, beta, initial_state=None, scale=None, l2=False):
    """float64 per-token, per-value-head recurrence: S <- e^g S; S += k (beta (v - S^T k))^T; o = S^T q scale."""
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2:]
    G = Hv // Hk
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    if l2:
        q = q / (q.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
        k = k / (k.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    S = torch.zeros(B, Hv, K, V, dtype=torch.float64) if initial_state is None else initial_state.double().clone()
    o = torch.zeros(B, T, Hv, V, dtype=torch.float64)
    for bi in range(B):
        for h in range(Hv):
            hk = h // G
            for t in range(T):
                s = S[bi, h] * g[bi, t, h].exp()
                kt, qt = k[bi, t, hk], q[bi, t, hk] * scale
                s = s + torch.outer(kt, beta[bi, t, h] * (v[bi, t, h] - s.T @ kt))
                o[bi, t, h] = s.T @ qt
                S[bi, h] = s
    return o, S


def run(backend, x, **kw):
    return ops.fused_recurrent_gated_delta_rule(
        x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["initial_state"], backend=backend, **kw
    )


# (B, T, Hk, Hv, K=V, initial state, l2 norm in kernel)
CASES = [
    (1, 1, 2, 4, 32, True, True),
    (3, 1, 2, 2, 32, True, False),
    (3, 2, 2, 4, 64, False, True),
    (1, 5, 2, 4, 48, True, True),
    (3, 5, 1, 2, 32, True, False),
    (1, 2, 2, 2, 64, True, True),
    (3, 1, 2, 2, 48, False, False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B, T, Hk, Hv, D, h0, l2", CASES)
def test_matches_reference_and_naive(backend, dtype, B, T, Hk, Hv, D, h0, l2):
    need(backend)
    x = make_inputs(B, T, Hk, Hv, D, D, dtype, h0=h0, l2=l2)
    o, s = run(backend, x, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o_ref, s_ref = run("reference", x, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o_nv, s_nv = naive(x["q"], x["k"], x["v"], x["g"], x["beta"], x["initial_state"], l2=l2)
    assert o.dtype == dtype and o.shape == (B, T, Hv, D) and s.dtype == torch.float32 and s.shape == (B, Hv, D, D)
    assert_close(o, o_ref, dtype, "o vs reference")
    assert_close(s, s_ref, dtype, "state vs reference")
    assert_close(o, o_nv, dtype, "o vs naive")
    assert_close(s, s_nv, dtype, "state vs naive")


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_scale_and_no_final_state(backend):
    need(backend)
    x = make_inputs(2, 2, 2, 4, 32, 32, torch.float32)
    o, s = run(backend, x, scale=0.3, use_qk_l2norm_in_kernel=True)
    assert s is None
    o_nv, _ = naive(x["q"], x["k"], x["v"], x["g"], x["beta"], x["initial_state"], scale=0.3, l2=True)
    assert_close(o, o_nv, torch.float32, "o")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [1, 3])
def test_inplace_final_state(backend, T):
    need(backend)
    x = make_inputs(3, T, 2, 4, 32, 32, torch.bfloat16)
    before = {n: t.clone() for n, t in x.items() if t is not None}
    _, s_ref = run("reference", x, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_ref, _ = run(backend, x, output_final_state=False, use_qk_l2norm_in_kernel=True)
    state = x["initial_state"]
    for n, t in x.items():  # out-of-place call changed nothing
        assert t is None or torch.equal(t, before[n]), n
    o, s = run(backend, x, inplace_final_state=True, use_qk_l2norm_in_kernel=True)
    assert s is state and s.data_ptr() == state.data_ptr()
    assert_close(state, s_ref, torch.bfloat16, "updated state")
    assert torch.equal(o, o_ref)
    for n, t in x.items():  # everything but the state is untouched
        if n != "initial_state" and t is not None:
            assert torch.equal(t, before[n]), n


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("lens", [[3, 1, 4], [2, 0, 5, 1]])
def test_cu_seqlens_equals_each_sequence_alone(backend, lens):
    need(backend)
    N, T = len(lens), sum(lens)
    x = make_inputs(1, T, 2, 4, 32, 32, torch.float32, N=N)
    cu = torch.tensor([0] + lens).cumsum(0)
    o, s = run(backend, x, output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    assert o.shape == (1, T, 4, 32) and s.shape == (N, 4, 32, 32)
    for n in range(N):
        sl = slice(int(cu[n]), int(cu[n + 1]))
        one = {nm: (t[:, sl] if t.dim() >= 3 and nm not in ("initial_state", "A_log", "dt_bias") else t)
               for nm, t in x.items() if t is not None}
        one["initial_state"] = x["initial_state"][n : n + 1]
        o1, s1 = run(backend, one, output_final_state=True, use_qk_l2norm_in_kernel=True)
        assert_close(o[:, sl], o1, torch.float32, f"o of sequence {n}")
        assert_close(s[n : n + 1], s1, torch.float32, f"state of sequence {n}")


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("inplace", [False, True])
def test_fused_gating_equals_gating_then_recurrence(backend, dtype, inplace):
    need(backend)
    x = make_inputs(3, 2, 2, 4, 32, 32, dtype)
    x["a"][0, 0, 0], x["a"][1, 1, 1] = 30.0, -30.0  # softplus tails
    g, beta = ops.gdn_gating(x["A_log"], x["a"], x["dt_bias"], x["b"], backend="reference")
    o_ref, s_ref = ops.fused_recurrent_gated_delta_rule(
        x["q"], x["k"], x["v"], g, beta, initial_state=x["initial_state"], output_final_state=True,
        use_qk_l2norm_in_kernel=True, backend="reference",
    )
    state = x["initial_state"].clone()
    o, s = ops.fused_recurrent_gated_delta_rule_with_gating(
        x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], initial_state=state,
        output_final_state=True, use_qk_l2norm_in_kernel=True, inplace_final_state=inplace, backend=backend,
    )
    assert (s is state) == inplace
    assert_close(o, o_ref, dtype, "o")
    assert_close(s, s_ref, dtype, "state")
    o_nv, s_nv = naive(x["q"], x["k"], x["v"], g, beta, x["initial_state"], l2=True)
    assert_close(s, s_nv, dtype, "state vs naive")


def _chunk_backends():
    return ["reference"] + (["torch"] if "torch" in ops.registered("chunk_gated_delta_rule") else [])


@pytest.mark.parametrize("chunk_backend", ["reference", "torch"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_prefill_then_decode_equals_one_long_recurrence(chunk_backend, backend):
    need(backend)
    if chunk_backend not in _chunk_backends():
        pytest.skip("chunk_gated_delta_rule has no torch backend yet")
    P, D, dtype = 70, 32, torch.float32  # prefill crosses a chunk boundary (64)
    steps = 3
    x = make_inputs(2, P + steps, 2, 4, D, D, dtype)
    o_all, s_all = naive(x["q"], x["k"], x["v"], x["g"], x["beta"], x["initial_state"], l2=True)
    sl = lambda t, s: t[:, s]  # noqa: E731
    pre = slice(0, P)
    o, state = ops.chunk_gated_delta_rule(
        sl(x["q"], pre), sl(x["k"], pre), sl(x["v"], pre), sl(x["g"], pre), sl(x["beta"], pre),
        initial_state=x["initial_state"], output_final_state=True, use_qk_l2norm_in_kernel=True,
        backend=chunk_backend,
    )
    assert_close(o, o_all[:, :P], dtype, "prefill o")
    state = state.contiguous()
    for t in range(P, P + steps):
        st = slice(t, t + 1)
        o_t, s_t = ops.fused_recurrent_gated_delta_rule_with_gating(
            sl(x["q"], st), sl(x["k"], st), sl(x["v"], st), sl(x["a"], st), sl(x["b"], st), x["A_log"],
            x["dt_bias"], initial_state=state, inplace_final_state=True, use_qk_l2norm_in_kernel=True,
            backend=backend,
        )
        assert s_t is state
        assert_close(o_t, o_all[:, st], dtype, f"decode step {t}")
    assert_close(state, s_all, dtype, "final state")


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend):
    """q/k/v as views into one packed projection, as the model's split produces them."""
    need(backend)
    B, T, Hk, Hv, D = 2, 2, 2, 4, 32
    mixed = torch.randn(B, T, 2 * Hk * D + Hv * D)
    q, k, v = torch.split(mixed, [Hk * D, Hk * D, Hv * D], dim=-1)
    q, k, v = q.reshape(B, T, Hk, D), k.reshape(B, T, Hk, D), v.reshape(B, T, Hv, D)
    g, beta = -torch.rand(B, T, Hv), torch.rand(B, T, Hv)
    h0 = torch.randn(B, Hv, D, D).transpose(-1, -2)  # a non-contiguous state is read, never written
    before = h0.clone()
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, s = ops.fused_recurrent_gated_delta_rule(q, k, v, g, beta, backend=backend, **kw)
    assert torch.equal(h0, before)
    o_ref, s_ref = ops.fused_recurrent_gated_delta_rule(q, k, v, g, beta, backend="reference", **kw)
    assert_close(o, o_ref, torch.float32, "o")
    assert_close(s, s_ref, torch.float32, "state")


@settings(max_examples=12, deadline=None)
@given(
    B=st.integers(1, 3), T=st.integers(1, 3), Hk=st.integers(1, 3), G=st.integers(1, 3),
    K=st.sampled_from([8, 16, 24, 40]), V=st.sampled_from([8, 16, 20, 32]), h0=st.booleans(), l2=st.booleans(),
)
def test_torch_backend_property(B, T, Hk, G, K, V, h0, l2):
    """Any shape (K != V, odd head counts): the torch backend equals the float64 recurrence."""
    x = make_inputs(B, T, Hk, Hk * G, K, V, torch.float32, h0=h0, l2=l2)
    o, s = run("torch", x, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o_nv, s_nv = naive(x["q"], x["k"], x["v"], x["g"], x["beta"], x["initial_state"], l2=l2)
    assert_close(o, o_nv, torch.float32, "o")
    assert_close(s, s_nv, torch.float32, "state")


def _gating_args(**over):
    args = dict(q=torch.randn(1, 2, 2, 8), k=torch.randn(1, 2, 2, 8), v=torch.randn(1, 2, 4, 8),
                a=torch.randn(1, 2, 4), b=torch.randn(1, 2, 4), A_log=torch.randn(4), dt_bias=torch.randn(4))
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, error, match",
    [
        (dict(a=torch.randn(1, 2, 3)), ValueError, "a must have shape"),
        (dict(b=torch.randn(1, 3, 4)), ValueError, "b must have shape"),
        (dict(A_log=torch.randn(3)), ValueError, "A_log must have shape \\[4\\]"),  # reported as A_log
        (dict(A_log=torch.randn(3), dt_bias=torch.randn(3)), ValueError, "A_log must have shape \\[4\\]"),
        (dict(dt_bias=torch.randn(4, 1)), ValueError, "dt_bias must be 1-D"),
        (dict(dt_bias=torch.randn(5)), ValueError, "dt_bias must have shape \\[4\\]"),
        (dict(v=torch.randn(1, 2, 3, 8), a=torch.randn(1, 2, 3), b=torch.randn(1, 2, 3), A_log=torch.randn(3),
              dt_bias=torch.randn(3)), ValueError, "multiple of key heads"),
        (dict(initial_state=torch.zeros(1, 4, 8, 8, dtype=torch.float16)), TypeError, "initial_state"),
        (dict(a=torch.randint(0, 3, (1, 2, 4))), TypeError, "a must have dtype"),
    ],
)
def test_with_gating_bad_inputs(over, error, match):
    with pytest.raises(error, match=match) as info:
        ops.fused_recurrent_gated_delta_rule_with_gating(**_gating_args(**over), backend="reference")
    assert "fused_recurrent_gated_delta_rule_with_gating" in str(info.value)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_inplace_without_state_is_refused(backend):
    with pytest.raises(ValueError, match="fused_recurrent_gated_delta_rule_with_gating: inplace_final_state"):
        ops.fused_recurrent_gated_delta_rule_with_gating(**_gating_args(), inplace_final_state=True, backend=backend)
    x = make_inputs(1, 1, 2, 4, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="fused_recurrent_gated_delta_rule: inplace_final_state"):
        run(backend, dict(x, initial_state=x["initial_state"].transpose(-1, -2)), inplace_final_state=True)


# --- cu_seqlens: checked on host copies, clamped in the kernel -----------------------------------

BAD_CU = [
    ([1, 4, 8], "start at 0"),
    ([0, 6, 2, 8], "be non-decreasing"),
    ([0, -2, 8], "be non-decreasing"),
    ([0, 4, 9], "end at the number of tokens T = 8"),
    ([0, 4, 7], "end at the number of tokens T = 8"),
]


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("gating", [False, True])
@pytest.mark.parametrize("cu, match", BAD_CU)
def test_bad_cu_seqlens_are_rejected(backend, gating, cu, match):
    need(backend)
    x = make_inputs(1, 8, 2, 4, 8, 8, torch.float32, N=len(cu) - 1)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    op = "fused_recurrent_gated_delta_rule_with_gating" if gating else "fused_recurrent_gated_delta_rule"
    with pytest.raises(ValueError, match=f"{op}: cu_seqlens must {match}"):
        if gating:
            ops.fused_recurrent_gated_delta_rule_with_gating(
                x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], initial_state=x["initial_state"],
                cu_seqlens=cu_t, backend=backend)
        else:
            ops.fused_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                                 initial_state=x["initial_state"], cu_seqlens=cu_t, backend=backend)


def _guarded(t, guard=5):
    """t viewed inside a NaN-filled buffer with `guard` extra tokens on both sides: a read outside
    t's tokens brings NaN into the result."""
    buf = torch.full((t.shape[0], t.shape[1] + 2 * guard, *t.shape[2:]), float("nan"), dtype=t.dtype)
    buf[:, guard:guard + t.shape[1]] = t
    return buf[:, guard:guard + t.shape[1]]


@pytest.mark.parametrize("cu", [[-3, 4, 8], [0, 3, 100], [0, 6, 2, 8], [0, 9, 20], [5, 2]])
def test_triton_kernel_clamps_device_cu_seqlens(cu):
    """On a device cu_seqlens is not validated (a sync); the kernel must still never read or write out
    of bounds: sequence n runs over tokens [bos, eos) with bos = clamp(cu[n], 0, T) and
    eos = clamp(cu[n+1], bos, T). The launcher is called directly (as the op does for a device
    tensor), with q/k/v/g/beta inside NaN-filled buffers so that any read outside them shows."""
    pytest.importorskip("triton")
    from interns2_fast.kernels import gdn_recurrent as kr

    T, N = 8, len(cu) - 1
    x = make_inputs(1, T, 2, 4, 8, 8, torch.float32, N=N)
    q, k, v, g, beta = (_guarded(x[n]) for n in ("q", "k", "v", "g", "beta"))
    spans = []
    for n in range(N):
        bos = min(max(cu[n], 0), T)
        spans.append((bos, min(max(cu[n + 1], bos), T)))
    once = torch.zeros(T, dtype=torch.int64)
    for a, b in spans:
        once[a:b] += 1
    for ctype in (torch.int32, torch.int64):
        o, s = kr.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=x["initial_state"],
                                                   output_final_state=True, cu_seqlens=torch.tensor(cu, dtype=ctype))
        assert torch.isfinite(s).all(), "a read outside the tokens (NaN guard) reached the state"
        for n, (a, b) in enumerate(spans):
            o_ref, s_ref = ops.fused_recurrent_gated_delta_rule(
                *(x[m][:, a:b] for m in ("q", "k", "v", "g", "beta")), initial_state=x["initial_state"][n:n + 1],
                output_final_state=True, backend="torch")
            assert_close(s[n:n + 1], s_ref, torch.float32, f"state {n}")
            mine = once[a:b] == 1  # positions no other sequence writes too
            assert_close(o[:, a:b][:, mine], o_ref[:, mine], torch.float32, f"o {n}")
