"""A patched model never gives a wrong answer or gradient: training, grad-enabled forwards, deepcopy,
pickle / torch.save, shapes a backend cannot take, unknown backends, and torch.compile.

Tolerances (fp32): gradients rtol 1e-4 / atol 1e-5 of the unpatched model's (the autograd policy runs
the installed reference ops, so only the patched glue — unrepeated q/k heads, fused shared-expert add —
separates them); logits max-abs 1e-4.
"""
import copy

import pytest
import torch

import interns2_fast
from interns2_fast import device, models
from interns2_fast.ops import _registry
from interns2_fast.patching.state import patched_states
from tiny_models import round_trip  # noqa: E402  (tests/tiny_models.py)

FAMILIES = models.FAMILIES
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


def _ids(model, T=10, B=2):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture
def interpret_triton(monkeypatch):
    """The Triton backend on CPU tensors under the interpreter (what `auto` resolves to on an NPU)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if device.triton_flavour() is None:
        pytest.skip("triton missing")


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_training_gradients_equal_the_unpatched_model(family, backend, model_factory, request):
    if backend == "triton":
        request.getfixturevalue("interpret_triton")
    model = model_factory(family)
    model.train()
    ids = _ids(model)
    try:
        want_loss, want = _grads(model, ids)
        interns2_fast.patch(model, backend=backend)
        got_loss, got = _grads(model, ids)
    finally:
        model.eval()
    torch.testing.assert_close(got_loss, want_loss, **GRAD_TOL)
    missing = [n for n, g in got.items() if g is None and want[n] is not None]
    assert not missing, f"parameters without a gradient after patching: {missing}"
    for name, g in got.items():
        if want[name] is not None:
            torch.testing.assert_close(g, want[name], **GRAD_TOL, msg=f"{family}/{backend}: grad of {name}")


def _rel(got, want):
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_trains_like_the_unpatched_model(family, reentrant, model_factory):
    # reentrant checkpointing runs each layer's first forward under no_grad and recomputes it with grad:
    # both must take the same path, and no layer may hand its next norm over to the next layer
    model = model_factory(family)
    ids = _ids(model)
    model.train()
    try:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        want_loss, want = _grads(model, ids)
        interns2_fast.patch(model)
        got_loss, got = _grads(model, ids)
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    assert abs(got_loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())
    for name, g in got.items():
        if want[name] is None:
            continue
        assert g is not None, f"{family}: no gradient for {name} after patching"
        assert _rel(g, want[name]) <= 1e-3, f"{family}: grad of {name} off by {_rel(g, want[name]):.3g} (relative norm)"


@pytest.mark.parametrize("family", FAMILIES)
def test_grad_enabled_forward_and_generate_work(family, model_factory):
    model = model_factory(family)
    ids = _ids(model, B=1)
    with torch.no_grad():
        want = model(ids).logits
    interns2_fast.patch(model)
    out = model(ids).logits  # no torch.no_grad(): parameters require grad
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), want, atol=1e-4, rtol=1e-4)
    interns2_fast.unpatch(model)
    ref_tokens = model.generate(ids, max_new_tokens=4, do_sample=False)
    interns2_fast.patch(model)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=4, do_sample=False), ref_tokens)


def test_deepcopy_computes_with_the_copys_weights(model_factory):
    model = model_factory("qwen3_5_moe")
    interns2_fast.patch(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    ids = _ids(model, B=1)
    with torch.no_grad():
        got = twin(ids).logits
        interns2_fast.unpatch(twin)
        want = twin(ids).logits  # the copy's own weights, on the transformers code
        original = model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - original).abs().max() > 1e-2
    assert interns2_fast.is_patched(model)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_and_torch_save_round_trip(how):
    # a fresh model: transformers' own output-capturing hooks (installed on a model's first
    # output_router_logits call) are local functions that no model can be pickled with
    model = models.build_causal_lm("qwen3_5_moe")
    interns2_fast.patch(model)
    back = round_trip(model, how)
    ids = _ids(model, B=1)
    assert interns2_fast.is_patched(back)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits)
    states = patched_states(back)
    assert states and all(any(s.module is m for m in back.modules()) for s in states)  # bound to the copy
    assert interns2_fast.unpatch(back) == len(states)


def test_unknown_backend_names_the_valid_ones(model_factory):
    model = model_factory("qwen3_5_moe")
    with pytest.raises(ValueError, match=r"unknown backend 'bogus'.*'triton'.*'torch'"):
        interns2_fast.patch(model, backend="bogus")
    assert not interns2_fast.is_patched(model)


def _patched_rows(report, op):
    return [p for p in report.patched if p.op == op]


@pytest.mark.parametrize("overrides, family, op, fallback_op, reason", [
    (dict(linear_conv_kernel_dim=9), "conv", "causal_conv1d_update", "causal_conv1d_fn", "W <= 8"),
    (dict(linear_key_head_dim=320), "gdn", "chunk_gated_delta_rule", "", "head dims up to 256"),
])
def test_patch_reports_the_backend_that_will_really_run(overrides, family, op, fallback_op, reason, interpret_triton):
    """Shapes the Triton kernels cannot take: patch() says so per module, and the forward runs (never a
    raise mid-generation) and equals the reference."""
    config = models.tiny_config("qwen3_5_moe")
    for k, v in overrides.items():
        setattr(config, k, v)
    model = models.build_causal_lm("qwen3_5_moe", config=config)
    ids = _ids(model, T=6, B=1)
    with torch.no_grad():
        want = model(ids).logits
        report = interns2_fast.patch(model, backend="triton")
        rows = _patched_rows(report, family)
        assert rows and all("torch" in r.backend for r in rows), rows
        assert all(op in r.note and "runs on torch" in r.note and reason in r.note for r in rows), rows[0].note
        assert reason in report.to_markdown()
        got = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=3, do_sample=False)
        interns2_fast.unpatch(model)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tokens, model.generate(ids, max_new_tokens=3, do_sample=False))


@pytest.mark.parametrize("width", [12, 40])
def test_patch_runs_the_experts_on_triton_at_any_width(width, interpret_triton):
    """Expert widths that are no multiple of the tiles (the kernels mask their tails): patch() keeps the
    MoE on Triton, and a prefill (T*k > 64: the plan GEMMs) and greedy decode equal the reference."""
    config = models.tiny_config("qwen3_5_moe")
    config.moe_intermediate_size = width
    model = models.build_causal_lm("qwen3_5_moe", config=config)
    ids = _ids(model, T=9, B=1)
    with torch.no_grad():
        want = model(ids).logits
        report = interns2_fast.patch(model, backend="triton")
        rows = _patched_rows(report, "moe")
        assert rows and all(r.backend == "triton" for r in rows), rows
        got = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=2, do_sample=False)
        interns2_fast.unpatch(model)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tokens, model.generate(ids, max_new_tokens=2, do_sample=False))


def test_npu_native_falls_back_per_op_and_says_so(model_factory, monkeypatch):
    """npu_native implements the experts only: the router runs on what auto picks, and the report says
    so. (npu_native itself cannot run here: its device check fails on the CPU, which is also reported.)"""
    model = model_factory("qwen3_5_moe")
    report = interns2_fast.patch(model, backend="npu_native")
    rows = _patched_rows(report, "moe")
    assert rows and all(r.backend == "torch" for r in rows)
    assert "moe_route runs on torch (backend 'npu_native' is not implemented" in rows[0].note
    assert "moe_experts runs on torch (needs torch_npu" in rows[0].note
    # pretend the device check holds: the experts would then run on npu_native, the router still not
    monkeypatch.setitem(_registry.BACKEND_DEVICE_CHECKS, "npu_native", lambda dev: _registry.OK)
    report = interns2_fast.patch(model, backend="npu_native")
    assert {r.backend for r in _patched_rows(report, "moe")} == {"torch+npu_native"}


def _graph_breaks_in_interns2_fast(explain) -> list:
    """Graph breaks whose stack passes through this package's code."""
    out = []
    for r in explain.break_reasons:
        frames = [f.filename for f in (r.user_stack or [])]
        if any("interns2_fast" in f for f in frames):
            out.append(r.reason.splitlines()[0])
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_compiles_without_graph_breaks_from_interns2_fast(family, model_factory):
    """Prefill and one decode step of a patched model under torch._dynamo.explain: no graph break is
    caused by interns2_fast (breaks inside the model's own code are allowed and listed), and the
    compiled forward matches eager."""
    model = model_factory(family)
    interns2_fast.patch(model)
    ids = _ids(model, T=8, B=1)
    torch._dynamo.reset()
    with torch.no_grad():
        prefill = torch._dynamo.explain(lambda i: model(i, use_cache=True))(ids)
        assert _graph_breaks_in_interns2_fast(prefill) == []
        out = model(ids, use_cache=True)
        step = ids[:, -1:]
        decode = torch._dynamo.explain(lambda i, c: model(i, past_key_values=c).logits)(
            step, copy.deepcopy(out.past_key_values))
        assert _graph_breaks_in_interns2_fast(decode) == []
        compiled = torch.compile(lambda i: model(i).logits, backend="aot_eager")
        torch.testing.assert_close(compiled(ids), model(ids).logits, atol=1e-4, rtol=1e-4)
