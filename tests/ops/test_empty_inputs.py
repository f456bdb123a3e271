"""Empty inputs, every op x every backend: empty results of the documented shapes, or one clear
error, and the same on every backend (interns2_fast/ops/_empty.py states the rule).

Zero-sized batch / token / row / channel axes give empty results (a final state after zero steps
is a copy of the initial state, never the caller's tensor unless the op updates it in place);
zero-sized feature axes (head count, head dim, kernel width, norm width, hidden size, experts,
top-k) raise a ValueError naming the op.
"""
import importlib.util

import pytest
import torch

from interns2_fast import ops


_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _backends(op):
    names = [b for b in ops.registered(op) if b not in ("npu_native", "pto")]
    return [b for b in names if b != "triton" or _HAS_TRITON]


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    if out is None:
        return [None]
    raise TypeError(type(out))


def _gdn_inputs(B, T, Hk=2, K=8, Hv=4, V=8, h0=True, dtype=torch.float32):
    N = B
    return dict(
        q=torch.randn(B, T, Hk, K, dtype=dtype), k=torch.randn(B, T, Hk, K, dtype=dtype),
        v=torch.randn(B, T, Hv, V, dtype=dtype), g=-torch.rand(B, T, Hv), beta=torch.rand(B, T, Hv),
        initial_state=torch.randn(N, Hv, K, V) if h0 else None,
    )


def _gating_call(fn, inp):
    """The with-gating op takes raw a, b and the two parameters instead of g, beta."""
    inp = dict(inp)
    a, b = inp.pop("g"), inp.pop("beta")
    Hv = a.shape[-1]
    return fn(inp.pop("q"), inp.pop("k"), inp.pop("v"), a, b, torch.randn(Hv), torch.randn(Hv), **inp)


GDN_OPS = {
    "chunk_gated_delta_rule": lambda inp, **kw: ops.chunk_gated_delta_rule(**inp, **kw),
    "fused_recurrent_gated_delta_rule": lambda inp, **kw: ops.fused_recurrent_gated_delta_rule(**inp, **kw),
    "fused_recurrent_gated_delta_rule_with_gating":
        lambda inp, **kw: _gating_call(ops.fused_recurrent_gated_delta_rule_with_gating, {**inp, **kw}),
}

# (name, op, call(backend) -> result, check(result, inputs) or None)
EMPTY_CASES = []


def _case(name, op):
    def deco(fn):
        EMPTY_CASES.append(pytest.param(op, fn, id=name))
        return fn
    return deco


for _op, _call in GDN_OPS.items():
    def _t0(backend, _call=_call):
        inp = _gdn_inputs(2, 0)
        o, s = _call(inp, output_final_state=True, backend=backend)
        assert o.shape == (2, 0, 4, 8) and o.dtype == torch.float32
        assert torch.equal(s, inp["initial_state"]) and s.data_ptr() != inp["initial_state"].data_ptr()
        return o, s

    def _t0_no_state(backend, _call=_call):
        o, s = _call(_gdn_inputs(2, 0, h0=False), output_final_state=True, backend=backend)
        assert s.shape == (2, 4, 8, 8) and s.dtype == torch.float32 and not s.any()
        return o, s

    def _b0(backend, _call=_call):
        o, s = _call(_gdn_inputs(0, 5, h0=False), output_final_state=True, backend=backend)
        assert o.shape == (0, 5, 4, 8) and s.shape == (0, 4, 8, 8)
        return o, s

    def _t0_packed(backend, _call=_call):
        inp = _gdn_inputs(1, 0, h0=False)
        o, s = _call(inp, output_final_state=True, cu_seqlens=torch.tensor([0, 0, 0]), backend=backend)
        assert o.shape == (1, 0, 4, 8) and s.shape == (2, 4, 8, 8) and not s.any()
        return o, s

    def _t0_bf16_no_final(backend, _call=_call):
        o, s = _call(_gdn_inputs(1, 0, dtype=torch.bfloat16), backend=backend)
        assert o.shape == (1, 0, 4, 8) and o.dtype == torch.bfloat16 and s is None
        return o, s

    for _n, _f in (("T0", _t0), ("T0_no_state", _t0_no_state), ("B0", _b0), ("T0_packed", _t0_packed),
                   ("T0_bf16", _t0_bf16_no_final)):
        _case(f"{_op}-{_n}", _op)(_f)


def _recurrent_t0_inplace(backend):
    inp = _gdn_inputs(2, 0)
    before = inp["initial_state"].clone()
    o, s = ops.fused_recurrent_gated_delta_rule(**inp, inplace_final_state=True, backend=backend)
    assert s is inp["initial_state"] and torch.equal(s, before)  # updated in place by zero steps
    return o, s


_case("fused_recurrent_gated_delta_rule-T0_inplace", "fused_recurrent_gated_delta_rule")(_recurrent_t0_inplace)


@_case("gdn_gating-rows0", "gdn_gating")
def _gating_rows0(backend):
    g, beta = ops.gdn_gating(torch.randn(4), torch.randn(0, 4), torch.randn(4), torch.randn(0, 4, dtype=torch.bfloat16),
                             backend=backend)
    assert g.shape == (0, 4) and g.dtype == torch.float32 and beta.dtype == torch.bfloat16
    return g, beta


@_case("gdn_gating-head_major_T0", "gdn_gating")
def _gating_hm(backend):
    g, beta = ops.gdn_gating(torch.randn(4), torch.randn(2, 0, 4), torch.randn(4), torch.randn(2, 0, 4),
                             head_major=True, backend=backend)
    assert g.shape == (2, 4, 0) and beta.shape == (2, 4, 0)
    return g, beta


def _conv_inputs(B, D, T, W=4):
    return torch.randn(B, D, T), torch.randn(D, W), torch.randn(D)


@_case("causal_conv1d_fn-T0_initial_states", "causal_conv1d_fn")
def _conv_t0(backend):
    x, w, b = _conv_inputs(2, 8, 0)
    init = torch.randn(2, 8, 3)
    out, fs = ops.causal_conv1d_fn(x, w, b, initial_states=init, return_final_states=True, activation="silu",
                                   backend=backend)
    assert out.shape == (2, 8, 0) and torch.equal(fs, init) and fs.data_ptr() != init.data_ptr()
    return out, fs


@_case("causal_conv1d_fn-T0_final_states_out", "causal_conv1d_fn")
def _conv_t0_out(backend):
    x, w, b = _conv_inputs(2, 8, 0)
    dst = torch.full((2, 8, 3), 7.0)
    out, fs = ops.causal_conv1d_fn(x, w, b, return_final_states=True, final_states_out=dst, backend=backend)
    assert fs is dst and not dst.any()
    return out, fs


@_case("causal_conv1d_fn-B0", "causal_conv1d_fn")
def _conv_b0(backend):
    x, w, b = _conv_inputs(0, 8, 5)
    out, fs = ops.causal_conv1d_fn(x, w, b, return_final_states=True, backend=backend)
    assert out.shape == (0, 8, 5) and fs.shape == (0, 8, 3)
    return out, fs


@_case("causal_conv1d_fn-D0", "causal_conv1d_fn")
def _conv_d0(backend):
    x, w, b = _conv_inputs(2, 0, 5)
    out = ops.causal_conv1d_fn(x, w, b, activation="silu", backend=backend)
    assert out.shape == (2, 0, 5)
    return out


@_case("causal_conv1d_update-T0", "causal_conv1d_update")
def _update_t0(backend):
    x, w, b = _conv_inputs(2, 8, 0)
    state = torch.randn(2, 8, 4)
    before = state.clone()
    out = ops.causal_conv1d_update(x, state, w, b, "silu", backend=backend)
    assert out.shape == (2, 8, 0) and torch.equal(state, before)
    return out


@_case("causal_conv1d_update-B0", "causal_conv1d_update")
def _update_b0(backend):
    x, w, b = _conv_inputs(0, 8, 1)
    out = ops.causal_conv1d_update(x, torch.randn(0, 8, 4), w, b, "silu", backend=backend)
    assert out.shape == (0, 8, 1)
    return out


@_case("rms_norm_gated-rows0", "rms_norm_gated")
def _norm_rows0(backend):
    out = ops.rms_norm_gated(torch.randn(0, 3, 8, dtype=torch.bfloat16), torch.randn(0, 3, 8, dtype=torch.bfloat16),
                             torch.randn(8, dtype=torch.bfloat16), backend=backend)
    assert out.shape == (0, 3, 8) and out.dtype == torch.bfloat16
    return out


@_case("moe_route-T0", "moe_route")
def _route_t0(backend):
    logits, w, ids = ops.moe_route(torch.randn(0, 8), torch.randn(6, 8), 2, backend=backend)
    assert logits.shape == (0, 6) and w.shape == (0, 2) and ids.shape == (0, 2)
    assert (logits.dtype, w.dtype, ids.dtype) == (torch.float32, torch.float32, torch.int64)
    return logits, w, ids


@_case("moe_experts-T0", "moe_experts")
def _experts_t0(backend):
    out = ops.moe_experts(torch.randn(0, 32), torch.zeros(0, 2, dtype=torch.long), torch.rand(0, 2),
                          torch.randn(4, 32, 32), torch.randn(4, 32, 16), backend=backend)
    assert out.shape == (0, 32) and out.dtype == torch.float32
    return out


@_case("moe_align-T0", "moe_align")
def _align_t0(backend):
    plan = ops.moe_align(torch.zeros(0, 2, dtype=torch.long), 4, 16, backend=backend)
    assert plan.sorted_slots.numel() == 0 and plan.slot_rows.numel() == 0 and int(plan.num_rows) == 0
    assert plan.expert_counts.tolist() == [0] * 4 and plan.expert_offsets.tolist() == [0] * 5
    return tuple(plan)


@pytest.mark.parametrize("op, call", EMPTY_CASES)
def test_empty_inputs_give_the_same_empty_results_on_every_backend(op, call):
    results = {}
    for backend in _backends(op):
        torch.manual_seed(0)
        results[backend] = _flat(call(backend))
    assert len(results) >= 2, results.keys()
    first_name, first = next(iter(results.items()))
    for name, got in results.items():
        assert len(got) == len(first), (name, first_name)
        for a, b in zip(got, first):
            if a is None or b is None:
                assert a is None and b is None, (name, first_name)
                continue
            assert a.shape == b.shape and a.dtype == b.dtype, (name, first_name, a.shape, b.shape, a.dtype, b.dtype)
            assert torch.equal(a, b), (name, first_name)


# (name, op, call(backend), expected message fragment): zero-sized feature axes
ERROR_CASES = [
    *[pytest.param(op, (lambda c: lambda be: c(_gdn_inputs(1, 4, K=0, h0=False), backend=be))(c), "K=0", id=f"{op}-K0")
      for op, c in GDN_OPS.items()],
    *[pytest.param(op, (lambda c: lambda be: c(_gdn_inputs(1, 4, V=0, h0=False), backend=be))(c), "V=0", id=f"{op}-V0")
      for op, c in GDN_OPS.items()],
    *[pytest.param(op, (lambda c: lambda be: c(_gdn_inputs(1, 4, Hk=0, Hv=0, h0=False), backend=be))(c), "(Hk|Hv)=0",
                   id=f"{op}-heads0") for op, c in GDN_OPS.items()],
    pytest.param("gdn_gating", lambda be: ops.gdn_gating(torch.randn(0), torch.randn(3, 0), torch.randn(0),
                                                         torch.randn(3, 0), backend=be), "Hv=0", id="gdn_gating-Hv0"),
    pytest.param("causal_conv1d_fn", lambda be: ops.causal_conv1d_fn(torch.randn(1, 8, 5), torch.randn(8, 0),
                                                                     backend=be), "W=0", id="causal_conv1d_fn-W0"),
    pytest.param("causal_conv1d_update", lambda be: ops.causal_conv1d_update(
        torch.randn(1, 8, 1), torch.randn(1, 8, 4), torch.randn(8, 0), backend=be), "W=0", id="causal_conv1d_update-W0"),
    pytest.param("rms_norm_gated", lambda be: ops.rms_norm_gated(torch.randn(3, 0), torch.randn(3, 0), torch.randn(0),
                                                                 backend=be), "N=0", id="rms_norm_gated-N0"),
    pytest.param("moe_route", lambda be: ops.moe_route(torch.randn(3, 0), torch.randn(4, 0), 2, backend=be), "H=0",
                 id="moe_route-H0"),
    pytest.param("moe_experts", lambda be: ops.moe_experts(
        torch.randn(3, 32), torch.zeros(3, 0, dtype=torch.long), torch.rand(3, 0), torch.randn(4, 32, 32),
        torch.randn(4, 32, 16), backend=be), "k=0", id="moe_experts-k0"),
    pytest.param("moe_experts", lambda be: ops.moe_experts(
        torch.randn(3, 32), torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2), torch.randn(4, 0, 32),
        torch.randn(4, 32, 0), backend=be), "I=0", id="moe_experts-I0"),
    pytest.param("moe_experts", lambda be: ops.moe_experts(
        torch.randn(3, 32), torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2), torch.randn(0, 32, 32),
        torch.randn(0, 32, 16), backend=be), "E=0", id="moe_experts-E0"),
]


@pytest.mark.parametrize("op, call, fragment", ERROR_CASES)
def test_zero_feature_axes_are_one_clear_error_on_every_backend(op, call, fragment):
    for backend in _backends(op):
        with pytest.raises(ValueError, match=fragment) as info:
            call(backend)
        assert str(info.value).startswith(f"{op}:"), (backend, str(info.value))
