"""The PTO kernels of csrc/ on PTO-ISA's CPU simulator (backend="pto" on CPU tensors), fp32, at the
Intern-S2 decode shapes (16 key heads, 32 value heads, K = V = 128, B in {1, 3}).

Each result is compared with the reference backend (the transformers fallback) and with a float64
loop written here. Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref|, relative
to max(1, max |ref|)):

| op                               | vs reference        | vs float64 loop     |
|----------------------------------|---------------------|---------------------|
| decode step (o and final state)  | rms 2e-6, max 2e-5  | rms 2e-6, max 2e-5  |
| gated RMSNorm                    | rms 1e-6, max 1e-5  | rms 1e-6, max 1e-5  |

(the same fp32 rows as tests/ops/test_gdn_recurrent.py and test_norm_gated.py). Measured on the
simulator (rms vs float64): o 2.2e-7, state 6.5e-8, norm 7.3e-8 (the reference backend: o 1.2e-7,
state 5.1e-8). The simulator proves the
arithmetic and the work split over 40 virtual vector cores; it does not model the Unified Buffer
(tests/csrc/test_ub_plan.py checks the plan) nor pipe flags, and nothing here ran on an NPU.
Skipped, with the reason, when no clang++ >= 15 or no PTO-ISA headers are found.
"""
import pytest
import torch
import torch.nn.functional as F

from interns2_fast import device, ops, pto
import tolerance  # noqa: E402  (tests/tolerance.py)

DECODE_TOL = (2e-6, 2e-5)
NORM_TOL = (1e-6, 1e-5)
Hk, Hv, K, V = 16, 32, 128, 128


def close(out, ref, tol, what):
    tolerance.assert_close(out, ref, *tol, what, max_scale="ref_or_1")


def decode_inputs(B, *, l2=True, h0=True, Hk=Hk, Hv=Hv):
    q, k = torch.randn(B, 1, Hk, K), torch.randn(B, 1, Hk, K)
    if not l2:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return dict(
        q=q, k=k, v=torch.randn(B, 1, Hv, V), a=torch.randn(B, 1, Hv) * 2, b=torch.randn(B, 1, Hv) * 2,
        A_log=torch.rand(Hv) * 2 - 1, dt_bias=torch.randn(Hv) * 0.5,
        initial_state=torch.randn(B, Hv, K, V) * 0.5 if h0 else None,
    )


def decode(backend, x, **kw):
    return ops.fused_recurrent_gated_delta_rule_with_gating(
        x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], initial_state=x["initial_state"],
        backend=backend, **kw)


def decode_f64(x, l2):
    """float64, one (sequence, value head) at a time; gating with torch's thresholded softplus."""
    q, k, v, a, b = (x[n][:, 0].double() for n in ("q", "k", "v", "a", "b"))
    A_log, dt_bias = x["A_log"].double(), x["dt_bias"].double()
    B, Hk, Hv = q.shape[0], q.shape[1], v.shape[1]
    S = torch.zeros(B, Hv, K, V, dtype=torch.float64) if x["initial_state"] is None else x["initial_state"].double().clone()
    o = torch.zeros(B, 1, Hv, V, dtype=torch.float64)
    for bi in range(B):
        for h in range(Hv):
            hk = h // (Hv // Hk)
            qt, kt = q[bi, hk], k[bi, hk]
            if l2:
                qt, kt = qt / (qt @ qt + 1e-6).sqrt(), kt / (kt @ kt + 1e-6).sqrt()
            xg = a[bi, h] + dt_bias[h]
            sp = xg if xg > 20 else torch.log1p(xg.exp())
            d = torch.exp(-A_log[h].exp() * sp)
            beta = torch.sigmoid(b[bi, h])
            s = S[bi, h] * d
            s = s + torch.outer(kt, beta * (v[bi, h] - s.T @ kt))
            o[bi, 0, h] = s.T @ (qt * K**-0.5)
            S[bi, h] = s
    return o, S


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("l2", [True, False], ids=["l2norm", "no-l2norm"])
@pytest.mark.parametrize("h0", [True, False], ids=["h0", "zero-state"])
def test_decode_matches_reference_and_float64(pto_sim, B, l2, h0):
    x = decode_inputs(B, l2=l2, h0=h0)
    h_before = None if x["initial_state"] is None else x["initial_state"].clone()
    o, s = decode("pto", x, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o_ref, s_ref = decode("reference", x, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o_64, s_64 = decode_f64(x, l2)
    assert o.shape == (B, 1, Hv, V) and o.dtype == torch.float32 and s.shape == (B, Hv, K, V)
    close(o, o_ref, DECODE_TOL, "o vs reference")
    close(s, s_ref, DECODE_TOL, "state vs reference")
    close(o, o_64, DECODE_TOL, "o vs float64")
    close(s, s_64, DECODE_TOL, "state vs float64")
    if h_before is not None:  # not in place: the caller's state is untouched
        assert torch.equal(x["initial_state"], h_before)


@pytest.mark.parametrize("Hk_, Hv_", [(2, 6), (1, 64), (4, 4)], ids=["G3", "G64-HVMAX", "G1"])
def test_decode_other_head_groupings(pto_sim, Hk_, Hv_):
    """GVA with other group sizes (value head h reads key head h // (Hv / Hk)), up to the 64 heads the
    kernel's gating rows hold; rows of a / b that are not 32-byte multiples."""
    x = decode_inputs(2, Hk=Hk_, Hv=Hv_)
    o, s = decode("pto", x, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_ref, s_ref = decode("reference", x, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_64, s_64 = decode_f64(x, True)
    close(o, o_ref, DECODE_TOL, "o vs reference")
    close(s, s_ref, DECODE_TOL, "state vs reference")
    close(o, o_64, DECODE_TOL, "o vs float64")
    close(s, s_64, DECODE_TOL, "state vs float64")


@pytest.mark.parametrize("B", [1, 3])
def test_decode_in_place_over_several_steps(pto_sim, B):
    """Four decode steps updating one state tensor in place, against the reference doing the same."""
    x = decode_inputs(B)
    state, state_ref = x["initial_state"].clone(), x["initial_state"].clone()
    for _ in range(4):
        step = decode_inputs(B)
        step["initial_state"] = state
        o, s = decode("pto", step, inplace_final_state=True, use_qk_l2norm_in_kernel=True)
        assert s is state
        step["initial_state"] = state_ref
        o_ref, _ = decode("reference", step, inplace_final_state=True, use_qk_l2norm_in_kernel=True)
        close(o, o_ref, DECODE_TOL, "o vs reference")
    close(state, state_ref, DECODE_TOL, "state after 4 steps")
    assert not torch.equal(state, x["initial_state"])


def test_decode_gating_extremes(pto_sim):
    """softplus above its threshold (a + dt_bias > 20), very negative gates, saturated betas."""
    x = decode_inputs(3)
    x["a"] = torch.linspace(-40, 40, 3 * Hv).reshape(3, 1, Hv)
    x["b"] = torch.linspace(-30, 30, 3 * Hv).reshape(3, 1, Hv)
    o, s = decode("pto", x, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_64, s_64 = decode_f64(x, True)
    close(o, o_64, DECODE_TOL, "o vs float64")
    close(s, s_64, DECODE_TOL, "state vs float64")


def test_decode_work_split_does_not_change_results(pto_sim):
    """1, 7, 40 and 200 virtual cores (more cores than the 96 tasks) give bit-identical results."""
    x = decode_inputs(3)
    results = []
    for cores in (1, 7, 40, 200):
        S = x["initial_state"].clone()
        o = torch.empty(3, Hv, V)
        ptrs = [x[n].contiguous().data_ptr() for n in ("q", "k", "v", "a", "b", "A_log", "dt_bias")]
        pto_sim.gdn_decode(*ptrs, S.data_ptr(), o.data_ptr(), 3, Hk, Hv, K**-0.5, True, cores)
        results.append((o, S))
    for o, S in results[1:]:
        assert torch.equal(o, results[0][0]) and torch.equal(S, results[0][1])


def norm_f64(x, gate, weight, eps):
    xd, gd = x.double(), gate.double()
    n = xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + eps)
    return weight.double() * n * gd * torch.sigmoid(gd)


@pytest.mark.parametrize("shape", [(1, 1, Hv, 128), (3, 1, Hv, 128), (5, 7, 128), (1, 128)],
                         ids=["B1-decode", "B3-decode", "35-rows-partial-block", "one-row"])
def test_norm_gated_matches_reference_and_float64(pto_sim, shape):
    x, gate = torch.randn(shape) * 2, torch.randn(shape) * 2
    weight = 1 + 0.2 * torch.randn(128)
    out = ops.rms_norm_gated(x, gate, weight, 1e-6, backend="pto")
    ref = ops.rms_norm_gated(x, gate, weight, 1e-6, backend="reference")
    assert out.shape == x.shape and out.dtype == torch.float32
    close(out, ref, NORM_TOL, "vs reference")
    close(out, norm_f64(x, gate, weight, 1e-6), NORM_TOL, "vs float64")


def test_unsupported_inputs_raise_clear_errors(pto_sim):
    x = decode_inputs(1)
    with pytest.raises(ValueError, match=r"backend 'pto' cannot take these arguments: .*float32"):
        decode("pto", {**x, "q": x["q"].bfloat16(), "k": x["k"].bfloat16(), "v": x["v"].bfloat16()})
    two = {n: (t.repeat(1, 2, *([1] * (t.dim() - 2))) if t is not None and t.dim() >= 3 and n != "initial_state" else t)
           for n, t in x.items()}
    with pytest.raises(ValueError, match=r"T == 1"):
        decode("pto", two)
    with pytest.raises(ValueError, match=r"at most 64 value heads"):
        decode("pto", decode_inputs(1, Hk=1, Hv=72))
    with pytest.raises(ValueError, match=r"N = 128"):
        ops.rms_norm_gated(torch.randn(4, 64), torch.randn(4, 64), torch.ones(64), backend="pto")


def test_unbuilt_extension_says_how_to_build(tmp_path, monkeypatch):
    """Runs without a compiler: point the build directory at an empty folder."""
    monkeypatch.setenv("INTERNS2_PTO_BUILD_DIR", str(tmp_path))
    pto._load_sim.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"not built.*python -m interns2_fast.pto build"):
            ops.rms_norm_gated(torch.randn(2, 128), torch.randn(2, 128), torch.ones(128), backend="pto")
        assert "not built" in pto.state() or "not buildable" in pto.state()
    finally:
        pto._load_sim.cache_clear()


def test_auto_never_selects_pto():
    assert "pto" in ops.BACKENDS
    for op in ("rms_norm_gated", "fused_recurrent_gated_delta_rule_with_gating"):
        assert "pto" in ops.registered(op)
        for dev in ("cpu", "cuda"):  # (torch.device("npu") needs torch_npu)
            assert "pto" not in device.auto_backends(torch.device(dev))
        assert ops.resolve(op, "auto", torch.device("cpu")) != "pto"


def test_info_reports_pto_state_in_one_line(capsys):
    import json

    from interns2_fast import cli

    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    line = info["pto"]
    assert "\n" not in line and "cpu-sim" in line and "npu unbuilt, unverified on hardware" in line
    assert "pto" in info["ops"]["rms_norm_gated"]
    assert pto.main(["info"]) == 0
    assert capsys.readouterr().out.startswith("pto: cpu-sim")
