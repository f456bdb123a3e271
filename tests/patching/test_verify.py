"""verify mode: the first call of each patched op runs the reference path beside it and compares.

A deliberately broken kernel is registered as the "torch" backend of one op (monkeypatched into the
dispatch registry for the test only); verify must catch it, warn, put that module back on the
reference path (so the model's output is the reference output), and record it in the report;
verify="strict" raises instead. A correct backend passes verify and stays patched.
"""
import pytest
import torch

from interns2_fast import models
from interns2_fast import ops
from interns2_fast.ops._registry import Backend
from interns2_fast.patching import VerifyError, patch


def _break(monkeypatch, op, how):
    good = (ops.OPS[op].backends.get("torch") or ops.OPS[op].backends["reference"]).impl

    def broken(**kwargs):
        return how(good(**kwargs), *kwargs.values())

    monkeypatch.setitem(ops.OPS[op].backends, "torch", Backend("torch", broken))


def _scaled(out, *args):
    if isinstance(out, tuple):
        return (out[0] * 1.5, *out[1:])
    return out * 1.5


def _corrupt_state(out, x, conv_state, *rest):
    conv_state.add_(1.0)  # writes garbage into the cache's conv state
    return out


CASES = {
    "rms_norm_gated": ("linear_attn.norm", _scaled),
    "chunk_gated_delta_rule": ("linear_attn", _scaled),
    "causal_conv1d_update": ("linear_attn", _corrupt_state),
    "moe_sparse_block": ("mlp", _scaled),  # what the sparse-MoE block calls (router + experts + shared)
    "add_rms_norm": ("", _scaled),  # decoder layers / final norm
}


@pytest.mark.parametrize("op", list(CASES))
def test_verify_catches_a_broken_kernel_and_falls_back(model_factory, monkeypatch, op):
    model = model_factory("qwen3_5_moe")
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    gen = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        ref = model.generate(ids, **gen)
        _break(monkeypatch, op, CASES[op][1])
        report = patch(model, backend="torch", verify=True)
        with pytest.warns(RuntimeWarning, match="beyond tolerance"):
            out = model.generate(ids, **gen)
    bad = [r for r in report.verify if not r.ok]
    assert bad and {r.op for r in bad} <= {op, "moe_block"} and all(r.action == "reverted to reference" for r in bad)
    suffix = CASES[op][0]
    assert all(r.path.endswith(suffix) for r in bad)
    assert set(report.reverted) == {r.path for r in bad}
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        assert (a - b).abs().max().item() <= 1e-3
    assert "reverted to reference" in report.to_markdown()


def test_verify_strict_raises(model_factory, monkeypatch):
    model = model_factory("qwen3_5_moe")
    _break(monkeypatch, "rms_norm_gated", _scaled)
    patch(model, backend="torch", verify="strict")
    with torch.no_grad(), pytest.raises(VerifyError, match="linear_attn.norm"):
        model(torch.randint(0, model.config.vocab_size, (1, 5)))


@pytest.mark.parametrize("family", models.FAMILIES)
def test_verify_passes_correct_backends(model_factory, family):
    model = model_factory(family)
    report = patch(model, verify=True)
    with torch.no_grad():
        model.generate(torch.randint(0, model.config.vocab_size, (1, 6)), max_new_tokens=3, do_sample=False)
    assert report.verify and all(r.ok for r in report.verify), [r for r in report.verify if not r.ok]
    ops_seen = {r.op for r in report.verify}
    assert {"chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule_with_gating", "causal_conv1d_fn",
            "causal_conv1d_update", "gdn_gating", "rms_norm_gated"} <= ops_seen
    if family != "qwen3_5":
        # the block routes itself (moe_sparse_block) unless its router's output is observed, so
        # the router module is verified as part of the block
        assert "moe_block" in ops_seen
    assert report.reverted == []


def test_verify_passes_correct_backends_in_bf16(model_factory):
    """bf16 results (and the fp32 states computed from bf16 inputs) are judged with the bf16 tolerance."""
    model = model_factory("qwen3_5_moe", torch.bfloat16)
    report = patch(model, verify=True)
    with torch.no_grad():
        model.generate(torch.randint(0, model.config.vocab_size, (2, 70)), max_new_tokens=2, do_sample=False)
    assert report.verify and all(r.ok for r in report.verify), [r for r in report.verify if not r.ok]
    assert {r.dtype for r in report.verify} == {"bfloat16"}


# --- backends that raise or return the wrong dtype: a verify failure like a wrong value ----------

def _raises(out, *args):
    raise RuntimeError("simulated kernel failure")


def _to_float64(out, *args):
    if isinstance(out, tuple):
        return tuple(o.double() if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
    return out.double()


def _raise_after_corrupting_state(out, x, conv_state, *rest):
    conv_state.add_(1.0)  # an in-place update half done, then the failure
    raise RuntimeError("simulated kernel failure after a partial in-place update")


FAILURES = {
    # op: (module path suffix, how the backend misbehaves, reason the record must give)
    "rms_norm_gated/raises": ("rms_norm_gated", "linear_attn.norm", _raises, "raised RuntimeError"),
    "rms_norm_gated/float64": ("rms_norm_gated", "linear_attn.norm", _to_float64, "dtype float64"),
    "chunk_gated_delta_rule/raises": ("chunk_gated_delta_rule", "linear_attn", _raises, "raised RuntimeError"),
    "chunk_gated_delta_rule/float64": ("chunk_gated_delta_rule", "linear_attn", _to_float64, "dtype float64"),
    "causal_conv1d_update/raises": ("causal_conv1d_update", "linear_attn", _raise_after_corrupting_state,
                                    "raised RuntimeError"),
    "moe_sparse_block/raises": ("moe_sparse_block", "mlp", _raises, "raised RuntimeError"),
    "moe_sparse_block/float64": ("moe_sparse_block", "mlp", _to_float64, "dtype float64"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_verify_falls_back_when_a_backend_raises_or_returns_the_wrong_dtype(model_factory, monkeypatch, case):
    op, suffix, how, reason = FAILURES[case]
    model = model_factory("qwen3_5_moe")
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    gen = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        ref = model.generate(ids, **gen)
        _break(monkeypatch, op, how)
        report = patch(model, backend="torch", verify=True)
        with pytest.warns(RuntimeWarning, match="back on the reference path"):
            out = model.generate(ids, **gen)  # must not raise: verify falls back
    bad = [r for r in report.verify if not r.ok]
    assert bad and all(r.action == "reverted to reference" for r in bad)
    assert all(r.path.endswith(suffix) for r in bad)
    assert any(reason in r.reason for r in bad), [r.reason for r in bad]
    assert set(report.reverted) == {r.path for r in bad}
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        assert a.dtype == b.dtype and (a - b).abs().max().item() <= 1e-3
    assert reason in report.to_markdown()


def test_verify_strict_raises_verify_error_for_a_backend_that_raises(model_factory, monkeypatch):
    model = model_factory("qwen3_5_moe")
    _break(monkeypatch, "rms_norm_gated", _raises)
    patch(model, backend="torch", verify="strict")
    with torch.no_grad(), pytest.raises(VerifyError, match="linear_attn.norm.*raised RuntimeError") as info:
        model(torch.randint(0, model.config.vocab_size, (1, 5)))
    assert isinstance(info.value.__cause__, RuntimeError)
