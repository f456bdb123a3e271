"""Short causal conv1d, prefill (`causal_conv1d_fn`) and in-place decode update
(`causal_conv1d_update`): every backend vs the transformers fallback (reference backend) and vs a
float64 per-tap loop written here; state continuity, layouts, in-place discipline, packed
sequences, errors.

Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref|), outputs of magnitude ~1-4:

| inputs | vs transformers fallback | vs float64 per-tap loop |
|--------|--------------------------|-------------------------|
| fp32   | rms 1e-6, max 1e-5       | rms 1e-6, max 1e-5      |
| bf16   | rms 4e-3, max 3.2e-2     | rms 8e-3, max 6.3e-2    |
| fp16   | rms 5e-4, max 4e-3       | rms 1e-3, max 8e-3      |

The fallback rounds the fp32 tap sum to the weight dtype, applies SiLU and rounds again: vs the
exact float64 loop that is up to two roundings (bf16 ulp 2^-7 relative); vs the fallback only the
fp32 summation order differs (the Triton kernel matches it bit for bit in bf16 in practice).
States (final states, conv_state after an update) must be exactly equal: they are copies.
Triton runs under TRITON_INTERPRET=1 on small shapes; D = 40 and 200 are not multiples of the
kernels' channel tile (128).
"""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from interns2_fast import ops
import tolerance  # noqa: E402  (tests/tolerance.py)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

TOL_REF = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (4e-3, 3.2e-2), torch.float16: (5e-4, 4e-3)}
TOL_LOOP = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (8e-3, 6.3e-2), torch.float16: (1e-3, 8e-3)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not _HAS_TRITON, reason="triton missing"))]


def assert_close(out, ref, tol, what=""):
    tolerance.assert_close(out, ref, *tol, what)  # (rms ratio, max-abs)

def loop_conv(x, weight, bias=None, initial_states=None, activation="silu", seq_idx=None):
    """float64, one tap at a time: out[b, d, t] = act(bias + sum_k w[d, k] * x[b, d, t - (W-1) + k])."""
    B, D, T = x.shape
    W = weight.shape[1]
    xd = x.to(weight.dtype).double()
    wd = weight.double()
    init = None if initial_states is None else initial_states.to(weight.dtype).double()
    out = torch.zeros(B, D, T, dtype=torch.float64)
    for t in range(T):
        acc = torch.zeros(B, D, dtype=torch.float64)
        if bias is not None:
            acc += bias.to(weight.dtype).double()
        for k in range(W):
            p = t - (W - 1) + k
            if p >= 0:
                v = xd[..., p]
                if seq_idx is not None:
                    v = v * (seq_idx[:, p] == seq_idx[:, t]).double()[:, None]
            elif init is not None:
                v = init[..., W - 1 + p]
            else:
                continue
            acc += wd[:, k] * v
        out[..., t] = acc
    if activation is not None:
        out = out * torch.sigmoid(out)
    return out


def loop_update(x, conv_state, weight, bias=None, activation="silu"):
    """float64 update: outputs of the T new steps and the new state (the last S inputs)."""
    S = conv_state.shape[2]
    T = x.shape[2]
    W = weight.shape[1]
    full = torch.cat([conv_state.to(weight.dtype).double(), x.to(weight.dtype).double()], dim=-1)
    wd = weight.double()
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(T):
        acc = torch.zeros(x.shape[:2], dtype=torch.float64)
        if bias is not None:
            acc += bias.to(weight.dtype).double()
        for k in range(W):
            acc += wd[:, k] * full[..., S - (W - 1) + t + k]
        out[..., t] = acc
    if activation is not None:
        out = out * torch.sigmoid(out)
    return out, full[..., -S:]


def make_x(B, D, T, dtype, layout):
    if layout == "transposed":  # what transformers passes: in_proj(h).transpose(1, 2), stride 1 along D
        return torch.randn(B, T, D).to(dtype).transpose(1, 2)
    if layout == "sliced":  # a strided view: every other channel, an offset in time
        return torch.randn(B, 2 * D, T + 3).to(dtype)[:, ::2, 3:]
    return torch.randn(B, D, T).to(dtype)


def make_params(D, W, dtype, bias):
    weight = (torch.randn(D, W) * 0.5).to(dtype)
    b = (torch.randn(D) * 0.5).to(dtype) if bias else None
    return weight, b


# case: (B, bias, initial_states, layout, final states: None | "return" | "out")
FN_CASES = [(1, False, False, "transposed", "return"), (3, True, True, "contiguous", "out")]


def covering(Ts, Ws, n_cases):
    """(backend, dtype, T, W, case): every combination for torch; for triton (interpreted, slow)
    each (dtype, T, W) once, with the cases alternating, so that every case meets every dtype, T, W."""
    params = []
    for i_dt, dtype in enumerate(DTYPES):
        for i_t, T in enumerate(Ts):
            for i_w, W in enumerate(Ws):
                for case in range(n_cases):
                    ids = f"{str(dtype).replace('torch.', '')}-T{T}-W{W}-case{case}"
                    params.append(pytest.param("torch", dtype, T, W, case, id=f"torch-{ids}"))
                    if (i_dt + i_t + i_w + case) % n_cases == 0:
                        params.append(pytest.param("triton", dtype, T, W, case, id=f"triton-{ids}",
                                                   marks=pytest.mark.skipif(not _HAS_TRITON, reason="triton missing")))
    return params


@pytest.mark.parametrize("backend,dtype,T,W,case", covering([1, 2, 3, 4, 5, 100], [2, 3, 4], len(FN_CASES)))
def test_fn_matches_fallback_and_loop(backend, dtype, T, W, case):
    B, bias, init, layout, final = FN_CASES[case]
    D = 40
    x = make_x(B, D, T, dtype, layout)
    weight, b = make_params(D, W, dtype, bias)
    h0 = torch.randn(B, D, W - 1).to(dtype) if init else None
    fs_out = torch.full((B, D, W - 1), float("nan")).to(dtype) if final == "out" else None
    out, fs = ops.causal_conv1d_fn(x, weight, b, initial_states=h0, return_final_states=True,
                                   final_states_out=fs_out, activation="silu", backend=backend)
    ref, ref_fs = ops.causal_conv1d_fn(x, weight, b, initial_states=h0, return_final_states=True,
                                       activation="silu", backend="reference")
    assert out.dtype == dtype and fs.dtype == dtype
    assert_close(out, ref, TOL_REF[dtype], "vs fallback")
    assert_close(out, loop_conv(x, weight, b, h0), TOL_LOOP[dtype], "vs loop")
    assert torch.equal(fs, ref_fs), "final states differ from the fallback's"
    if fs_out is not None:
        assert fs is fs_out, "final_states_out must be filled and returned"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "contiguous", "sliced"])
def test_fn_layouts_no_activation_multi_tile(backend, layout):
    """D = 200 spans two channel tiles; T = 70 three time tiles; no activation; fp32."""
    B, D, T, W = 2, 200, 70, 4
    x = make_x(B, D, T, torch.float32, layout)
    weight, b = make_params(D, W, torch.float32, True)
    weight = weight.t().contiguous().t()  # a non-contiguous weight view
    out = ops.causal_conv1d_fn(x, weight, b, activation=None, backend=backend)
    ref = ops.causal_conv1d_fn(x.contiguous(), weight.contiguous(), b, backend="reference")
    assert_close(out, ref, TOL_REF[torch.float32], layout)
    assert_close(out, loop_conv(x, weight, b, activation=None), TOL_LOOP[torch.float32], layout)


# case: (B, bias, S - (W - 1), x layout)
UPDATE_CASES = [(1, False, 0, "contiguous"), (3, True, 1, "transposed")]


@pytest.mark.parametrize("backend,dtype,T,W,case", covering([1, 2, 3, 5], [2, 3, 4], len(UPDATE_CASES)))
def test_update_matches_fallback_and_loop(backend, dtype, T, W, case):
    B, bias, extra, layout = UPDATE_CASES[case]
    D, S = 40, W - 1 + extra
    x = make_x(B, D, T, dtype, layout)
    weight, b = make_params(D, W, dtype, bias)
    state = torch.randn(B, D, S).to(dtype)
    ref_state = state.clone()
    loop_out, loop_state = loop_update(x, state, weight, b)
    out = ops.causal_conv1d_update(x, state, weight, b, "silu", backend=backend)
    ref = ops.causal_conv1d_update(x, ref_state, weight, b, "silu", backend="reference")
    assert out.shape == (B, D, T) and out.dtype == dtype
    assert_close(out, ref, TOL_REF[dtype], "vs fallback")
    assert_close(out, loop_out, TOL_LOOP[dtype], "vs loop")
    assert torch.equal(state, ref_state), "conv_state differs from the fallback's"
    assert torch.equal(state.double(), loop_state), "conv_state is not the last S inputs"


@pytest.mark.parametrize("T", [1, 2, 100])
def test_update_torch_long_steps(T):
    """The torch backend for T >= S (the state is then all x) and a long T."""
    B, D, W = 2, 24, 4
    x = make_x(B, D, T, torch.float32, "transposed")
    weight, b = make_params(D, W, torch.float32, True)
    for S in (3, 4, 6):
        state = torch.randn(B, D, S)
        ref_state = state.clone()
        out = ops.causal_conv1d_update(x, state, weight, b, None, backend="torch")
        ref = ops.causal_conv1d_update(x, ref_state, weight, b, None, backend="reference")
        assert_close(out, ref, TOL_REF[torch.float32], f"S={S}")
        assert torch.equal(state, ref_state)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extra", [0, 2])  # S = W - 1 (causal-conv1d) and S = W - 1 + 2
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_prefill_then_updates_equals_one_prefill(backend, dtype, extra):
    B, D, W, T0, N = 3, 40, 4, 6, 5
    S = W - 1 + extra
    x = make_x(B, D, T0 + N + 2, dtype, "transposed")
    weight, b = make_params(D, W, dtype, True)
    whole = ops.causal_conv1d_fn(x, weight, b, activation="silu", backend=backend)
    first, fs = ops.causal_conv1d_fn(x[..., :T0], weight, b, return_final_states=True, activation="silu",
                                     backend=backend)
    # The state the update continues from: the prefill's final states, preceded (S > W-1) by the
    # inputs before them, the way transformers pads the prefill input into its cache.
    state = torch.cat([x[..., T0 - S:T0 - (W - 1)], fs], dim=-1).contiguous()
    assert torch.equal(state, x[..., T0 - S:T0])
    outs = [first]
    for t in range(T0, T0 + N):  # N single-token decode steps
        outs.append(ops.causal_conv1d_update(x[..., t:t + 1], state, weight, b, "silu", backend=backend))
    outs.append(ops.causal_conv1d_update(x[..., T0 + N:], state, weight, b, "silu", backend=backend))  # 2 at once
    stitched = torch.cat(outs, dim=-1)
    assert_close(stitched, whole, TOL_REF[dtype], "prefill + updates vs one prefill")
    assert torch.equal(state, x[..., -S:]), "state after the updates is not the last S inputs"
    # and with initial_states: the second half as a prefill continuing from the first half's states
    second = ops.causal_conv1d_fn(x[..., T0:], weight, b, initial_states=fs, activation="silu", backend=backend)
    assert_close(torch.cat([first, second], -1), whole, TOL_REF[dtype], "prefill with initial_states")


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_changes_only_conv_state(backend):
    B, D, W, S = 2, 40, 4, 4
    base = torch.randn(B, 3, D)
    x = base.transpose(1, 2)[..., 1:2]  # a view into a bigger tensor
    weight, b = make_params(D, W, torch.float32, True)
    state = torch.randn(B, D, S)
    keep = {n: t.clone() for n, t in dict(base=base, weight=weight, bias=b).items()}
    before = state.clone()
    out = ops.causal_conv1d_update(x, state, weight, b, "silu", backend=backend)
    for name, t in dict(base=base, weight=weight, bias=b).items():
        assert torch.equal(t, keep[name]), f"{name} was modified"
    assert torch.equal(state[..., :-1], before[..., 1:]) and torch.equal(state[..., -1], x[..., 0])
    assert out.data_ptr() not in (state.data_ptr(), base.data_ptr())


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_noncontiguous_state(backend):
    """conv_state as a strided view into a bigger cache buffer: only that view changes."""
    B, D, W, S = 2, 40, 4, 4
    cache = torch.randn(B, D, S + 3)
    cache_before = cache.clone()
    state = cache[..., 2:2 + S]
    x = make_x(B, D, 1, torch.float32, "contiguous")
    weight, b = make_params(D, W, torch.float32, False)
    ref_state = state.clone()
    out = ops.causal_conv1d_update(x, state, weight, b, "silu", backend=backend)
    ref = ops.causal_conv1d_update(x, ref_state, weight, b, "silu", backend="reference")
    assert_close(out, ref, TOL_REF[torch.float32])
    assert torch.equal(state, ref_state)
    assert torch.equal(cache[..., :2], cache_before[..., :2]) and torch.equal(cache[..., 2 + S:], cache_before[..., 2 + S:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fn_seq_idx_packed(backend):
    """Two packed sequences per row: a tap never reads across the boundary; the final states are
    the last sequence's (zero where they would reach into the previous one)."""
    B, D, W = 2, 40, 4
    lens = [[5, 2], [1, 6]]
    T = 7
    x = make_x(B, D, T, torch.float32, "transposed")
    weight, b = make_params(D, W, torch.float32, True)
    seq_idx = torch.tensor([[0] * l0 + [1] * l1 for l0, l1 in lens], dtype=torch.int32)
    out, fs = ops.causal_conv1d_fn(x, weight, b, seq_idx=seq_idx, return_final_states=True, activation="silu",
                                   backend=backend)
    assert_close(out, loop_conv(x, weight, b, seq_idx=seq_idx), TOL_LOOP[torch.float32])
    for i, (l0, l1) in enumerate(lens):
        for start, end in ((0, l0), (l0, l0 + l1)):
            ref = ops.causal_conv1d_fn(x[i:i + 1, :, start:end], weight, b, activation="silu", backend="reference")
            assert_close(out[i:i + 1, :, start:end], ref, TOL_REF[torch.float32], f"row {i} [{start}:{end}]")
        tail = torch.cat([torch.zeros(D, W - 1), x[i, :, l0:]], -1)[:, -(W - 1):]
        assert torch.equal(fs[i], tail)


def loop_conv_padded(x, weight, bias, seq_idx, activation="silu"):
    """float64 loop with causal-conv1d's padding rule: seq_idx < 0 is padding, whose outputs are
    exactly 0; elsewhere a tap only reads inputs of the same sequence."""
    B, D, T = x.shape
    W = weight.shape[1]
    xd, wd = x.to(weight.dtype).double(), weight.double()
    out = torch.zeros(B, D, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            s = int(seq_idx[b, t])
            if s < 0:
                continue
            acc = torch.zeros(D, dtype=torch.float64) if bias is None else bias.to(weight.dtype).double().clone()
            for k in range(W):
                p = t - (W - 1) + k
                if p >= 0 and int(seq_idx[b, p]) == s:
                    acc += wd[:, k] * xd[b, :, p]
            out[b, :, t] = acc * torch.sigmoid(acc) if activation else acc
    return out


PADDED_ROWS = [
    [-1, -1, 0, 0, 0, 0, 1, 1, 1],       # padding first
    [0, 0, 0, -1, -1, 1, 1, 1, 1],       # padding between two sequences
    [0, 0, 0, 0, 0, 1, 1, -1, -1],       # padding last: the final states are zeros
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, layout", [(torch.float32, "transposed"), (torch.bfloat16, "contiguous")])
def test_fn_seq_idx_padding_gives_zeros(backend, dtype, layout):
    B, D, T, W = len(PADDED_ROWS), 40, len(PADDED_ROWS[0]), 4
    x = make_x(B, D, T, dtype, layout)
    weight, b = make_params(D, W, dtype, True)
    seq_idx = torch.tensor(PADDED_ROWS, dtype=torch.int64)
    out, fs = ops.causal_conv1d_fn(x, weight, b, seq_idx=seq_idx, return_final_states=True, activation="silu",
                                   backend=backend)
    pad = (seq_idx < 0).unsqueeze(1).expand(B, D, T)
    assert (out[pad] == 0).all(), "padding positions must be exactly zero"
    assert_close(out, loop_conv_padded(x, weight, b, seq_idx), TOL_LOOP[dtype])
    # final states: the last W-1 inputs of the row's last sequence; padding and other sequences -> 0
    for i, row in enumerate(PADDED_ROWS):
        want = torch.zeros(D, W - 1, dtype=dtype)
        for j, p in enumerate(range(T - (W - 1), T)):
            if row[p] >= 0 and row[p] == row[-1]:
                want[:, j] = x[i, :, p]
        assert torch.equal(fs[i], want), i


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_bad_inputs(backend):
    x = torch.randn(2, 8, 5)
    w = torch.randn(8, 4)
    with pytest.raises(ValueError, match="causal_conv1d_fn.*weight"):
        ops.causal_conv1d_fn(x, torch.randn(7, 4), backend=backend)
    with pytest.raises(ValueError, match="causal_conv1d_fn.*x"):
        ops.causal_conv1d_fn(x[0], w, backend=backend)
    with pytest.raises(TypeError, match="causal_conv1d_fn.*x"):
        ops.causal_conv1d_fn(x.to(torch.int32), w, backend=backend)
    with pytest.raises(ValueError, match="causal_conv1d_fn.*activation"):
        ops.causal_conv1d_fn(x, w, activation="relu", backend=backend)
    with pytest.raises(ValueError, match="causal_conv1d_fn.*initial_states"):
        ops.causal_conv1d_fn(x, w, initial_states=torch.randn(2, 8, 4), backend=backend)
    with pytest.raises(TypeError, match="causal_conv1d_fn.*initial_states"):
        ops.causal_conv1d_fn(x, w, initial_states=torch.randn(2, 8, 3, dtype=torch.float64), backend=backend)
    with pytest.raises(ValueError, match="causal_conv1d_fn.*bias"):
        ops.causal_conv1d_fn(x, w, torch.randn(7), backend=backend)
    with pytest.raises(ValueError, match="causal_conv1d_update.*at least W-1"):
        ops.causal_conv1d_update(x, torch.randn(2, 8, 2), w, backend=backend)
    with pytest.raises(ValueError, match="causal_conv1d_update.*conv_state"):
        ops.causal_conv1d_update(x, torch.randn(2, 7, 4), w, backend=backend)
    with pytest.raises(ValueError, match="causal_conv1d_update.*activation"):
        ops.causal_conv1d_update(x, torch.randn(2, 8, 4), w, activation="gelu", backend=backend)


@pytest.mark.skipif(not _HAS_TRITON, reason="triton missing")
def test_triton_rejects_wide_kernels_and_seq_idx_with_initial_states():
    x = torch.randn(1, 8, 5)
    with pytest.raises(ValueError, match="W <= 8"):
        ops.causal_conv1d_fn(x, torch.randn(8, 9), backend="triton")
    with pytest.raises(ValueError, match="seq_idx together with initial_states"):
        ops.causal_conv1d_fn(x, torch.randn(8, 4), seq_idx=torch.zeros(1, 5, dtype=torch.int32),
                             initial_states=torch.randn(1, 8, 3), backend="triton")
    with pytest.raises(ValueError, match="seq_idx together with initial_states"):
        ops.causal_conv1d_fn(x, torch.randn(8, 4), seq_idx=torch.zeros(1, 5, dtype=torch.int32),
                             initial_states=torch.randn(1, 8, 3), backend="torch")


def test_torch_backend_is_not_the_fallback():
    """The torch decode path is the cat-free one: no F.conv1d call."""
    import unittest.mock as mock

    x = torch.randn(1, 16, 1)
    state = torch.randn(1, 16, 4)
    with mock.patch.object(F, "conv1d", side_effect=AssertionError("conv1d called")):
        ops.causal_conv1d_update(x, state, torch.randn(16, 4), None, "silu", backend="torch")
        ops.causal_conv1d_fn(torch.randn(1, 16, 9), torch.randn(16, 4), None, activation="silu", backend="torch")


@pytest.mark.parametrize("layout", ["transposed", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_prefill_in_many_chunks(monkeypatch, dtype, layout):
    """The torch prefill's chunking (along T for channel-last x, along D otherwise), forced small."""
    from interns2_fast.torch_impl import conv1d as torch_conv1d

    monkeypatch.setattr(torch_conv1d, "CHUNK_ELEMENTS", 64)
    B, D, T, W = 2, 40, 13, 4
    x = make_x(B, D, T, dtype, layout)
    weight, b = make_params(D, W, dtype, True)
    h0 = torch.randn(B, D, W - 1).to(dtype)
    out, fs = ops.causal_conv1d_fn(x, weight, b, initial_states=h0, return_final_states=True, activation="silu",
                                   backend="torch")
    ref, ref_fs = ops.causal_conv1d_fn(x, weight, b, initial_states=h0, return_final_states=True,
                                       activation="silu", backend="reference")
    assert_close(out, ref, TOL_REF[dtype])
    assert torch.equal(fs, ref_fs)
    seq_idx = torch.tensor([[0] * 6 + [1] * 7, [0] * 2 + [1] * 11], dtype=torch.int32)
    out = ops.causal_conv1d_fn(x, weight, b, seq_idx=seq_idx, activation="silu", backend="torch")
    assert_close(out, loop_conv(x, weight, b, seq_idx=seq_idx), TOL_LOOP[dtype])
