"""The op registry: every op is a real PyTorch custom operator with declared mutation, a fake kernel,
capability predicates and an autograd policy — and the recipe for adding an op is enforced here.

Adding an op takes these places (README, "Adding an op"): (1) its validator + `define` + backends in
`interns2_fast/ops/<family>.py`, (2) the reference semantics in `reference.py`, (3) the torch path in
`torch_impl/<family>.py`, (4) the Triton kernel + LOWERING_CONFIGS in `kernels/<family>.py`, (5) a test
file in `tests/ops/`, (6) a benchmark case in `benchmarks/ops/`. The tests below fail when one is missing.
"""
import importlib
import inspect
import logging
import pathlib
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from interns2_fast import kernels, ops
from interns2_fast.ops._registry import NAMESPACE

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: ops without one of the three backends, and why
MISSING_BACKENDS = {
    ("moe_align", "reference"): "transformers has no routing plan: the plan's invariants are tested instead",
}


def _example(name: str) -> dict:
    """Small valid arguments for every op (CPU, fp32)."""
    B, T, Hk, Hv, K, V = 2, 5, 2, 4, 8, 8
    q, v = torch.randn(B, T, Hk, K), torch.randn(B, T, Hv, V)
    g, beta = -torch.rand(B, T, Hv), torch.rand(B, T, Hv)
    state = torch.randn(B, Hv, K, V)
    gdn = dict(q=q, k=torch.randn(B, T, Hk, K), v=v, scale=None, use_qk_l2norm_in_kernel=True, cu_seqlens=None)
    x, w = torch.randn(B, 6, T), torch.randn(6, 4)
    H, E, I, k = 16, 4, 8, 2
    hidden = torch.randn(3, H)
    ids = torch.tensor([[0, 1], [2, 0], [3, 1]])
    return {
        "chunk_gated_delta_rule": dict(gdn, g=g, beta=beta, initial_state=state, output_final_state=True),
        "fused_recurrent_gated_delta_rule": dict(gdn, g=g, beta=beta, initial_state=state.clone(),
                                                 output_final_state=True, inplace_final_state=True),
        "fused_recurrent_gated_delta_rule_with_gating": dict(
            gdn, a=torch.randn(B, T, Hv), b=torch.randn(B, T, Hv), A_log=torch.randn(Hv), dt_bias=torch.randn(Hv),
            initial_state=state.clone(), output_final_state=True, inplace_final_state=False),
        "gdn_gating": dict(A_log=torch.randn(Hv), a=torch.randn(B, T, Hv), dt_bias=torch.randn(Hv),
                           b=torch.randn(B, T, Hv), head_major=True),
        "causal_conv1d_fn": dict(x=x, weight=w, bias=torch.randn(6), seq_idx=None, initial_states=None,
                                 return_final_states=True, final_states_out=None, activation="silu"),
        "causal_conv1d_update": dict(x=x[:, :, :1].contiguous(), conv_state=torch.randn(B, 6, 4), weight=w,
                                     bias=None, activation="silu"),
        "rms_norm_gated": dict(x=torch.randn(7, 8), gate=torch.randn(7, 8), weight=torch.randn(8), eps=1e-6),
        "moe_route": dict(hidden=hidden, weight=torch.randn(E, H), top_k=k, renormalize=True),
        "moe_align": dict(topk_ids=ids, num_experts=E, block_size=4),
        "moe_experts": dict(hidden=hidden, topk_ids=ids, topk_weights=torch.rand(3, k),
                            gate_up_proj=torch.randn(E, 2 * I, H), down_proj=torch.randn(E, H, I),
                            shared_expert_output=torch.randn(3, H), shared_expert_gate=torch.randn(3, 1)),
        "moe_experts_shared": dict(hidden=hidden, topk_ids=ids, topk_weights=torch.rand(3, k),
                                   gate_up_proj=torch.randn(E, 2 * I, H), down_proj=torch.randn(E, H, I),
                                   shared_gate_proj=torch.randn(I, H), shared_up_proj=torch.randn(I, H),
                                   shared_down_proj=torch.randn(H, I), shared_gate=torch.randn(1, H)),
        "moe_sparse_block": dict(hidden=hidden, router_weight=torch.randn(E, H), top_k=k, renormalize=True,
                                 gate_up_proj=torch.randn(E, 2 * I, H), down_proj=torch.randn(E, H, I),
                                 shared_gate_proj=torch.randn(I, H), shared_up_proj=torch.randn(I, H),
                                 shared_down_proj=torch.randn(H, I), shared_gate=torch.randn(1, H)),
        "add_rms_norm": dict(x=torch.randn(3, 2, 16), residual=torch.randn(3, 2, 16), weight=torch.randn(16), eps=1e-6),
        "decode_attention": dict(q=torch.randn(2, 4, 8), k_cache=torch.randn(2, 2, 6, 8), v_cache=torch.randn(2, 2, 6, 8),
                                 cache_lens=torch.tensor([3, 6], dtype=torch.int32), gate=torch.randn(2, 4, 8),
                                 scale=None, k_new=torch.randn(2, 2, 8), v_new=torch.randn(2, 2, 8),
                                 mask=torch.zeros(2, 6)),
        "attention_prologue": dict(q=torch.randn(2, 4, 16), k=torch.randn(2, 2, 8), v=torch.randn(2, 2, 8),
                                   q_weight=torch.randn(8), k_weight=torch.randn(8), cos=torch.randn(2, 4),
                                   sin=torch.randn(2, 4), eps=1e-6, k_cache=torch.randn(2, 2, 6, 8),
                                   v_cache=torch.randn(2, 2, 6, 8), cache_lens=torch.tensor([3, 6], dtype=torch.int32)),
    }[name]


ALL_OPS = sorted(ops.OPS)


def test_every_public_op_is_in_the_registry():
    public = {n for n in ops.__all__ if isinstance(getattr(ops, n), ops.Op)}
    assert public == set(ops.OPS)
    for name in ops.OPS:
        assert hasattr(getattr(torch.ops, NAMESPACE), name)


def test_declared_mutation():
    mutates = {name: op.mutates for name, op in ops.OPS.items()}
    assert mutates["causal_conv1d_update"] == ("conv_state",)
    assert mutates["causal_conv1d_fn"] == ("final_states_out",)
    assert mutates["fused_recurrent_gated_delta_rule"] == ("initial_state",)
    assert mutates["fused_recurrent_gated_delta_rule_with_gating"] == ("initial_state",)
    assert mutates["decode_attention"] == ("k_cache", "v_cache")
    for name in ("chunk_gated_delta_rule", "gdn_gating", "rms_norm_gated", "moe_route", "moe_align", "moe_experts",
                 "add_rms_norm"):
        assert mutates[name] == (), name
    schema = str(ops.OPS["causal_conv1d_update"].custom_op.default._schema)
    assert "Tensor(a!) conv_state" in schema


@pytest.mark.parametrize("name", ALL_OPS)
def test_has_reference_torch_triton_backends_or_a_reason(name):
    have = ops.OPS[name].registered()
    for backend in ("reference", "torch", "triton"):
        assert backend in have or (name, backend) in MISSING_BACKENDS, f"{name} lacks {backend}"


@pytest.mark.parametrize("name", ALL_OPS)
def test_triton_backend_kernels_are_in_the_lowering_gate(name):
    impl = ops.OPS[name].backends["triton"].impl
    mods = re.findall(r"from \.\.kernels import (\w+)", inspect.getsource(inspect.unwrap(impl)))
    assert mods, f"{name}: the triton backend names no kernels/ module"
    for mod in mods:
        assert mod in kernels.KERNEL_MODULES, f"kernels/{mod}.py is not in KERNEL_MODULES"
        configs = importlib.import_module(f"interns2_fast.kernels.{mod}").LOWERING_CONFIGS
        assert configs, f"kernels/{mod}.py declares no LOWERING_CONFIGS"


@pytest.mark.parametrize("name", ALL_OPS)
def test_has_a_test_file_and_a_benchmark_case(name):
    tests = " ".join(p.read_text() for p in (ROOT / "tests" / "ops").glob("test_*.py") if p.name != "test_registry.py")
    benches = " ".join(p.read_text() for p in (ROOT / "benchmarks" / "ops").glob("bench_*.py"))
    assert re.search(rf"\b{name}\(", tests), f"no test in tests/ops calls {name}"
    assert re.search(rf"\b{name}\b", benches), f"no benchmark case in benchmarks/ops names {name}"


@pytest.mark.parametrize("name", ALL_OPS)
def test_opcheck(name):
    """torch.library.opcheck: schema (incl. mutation), fake kernel and dispatch agree with the real kernel."""
    op = ops.OPS[name]
    args = _example(name)
    values = [args[n] for n in op.arg_names] + ["torch"]
    torch.library.opcheck(op.custom_op.default, tuple(values),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("name", ALL_OPS)
def test_fake_kernel_matches_real_shapes(name):
    op = ops.OPS[name]
    real = op(**_example(name), backend="torch")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in _example(name).items()}
        fake = op(**fake_args, backend="torch")
    flat_r = [t for t in (real if isinstance(real, tuple) else (real,)) if isinstance(t, torch.Tensor)]
    flat_f = [t for t in (fake if isinstance(fake, tuple) else (fake,)) if isinstance(t, torch.Tensor)]
    assert [(t.shape, t.dtype) for t in flat_r] == [(t.shape, t.dtype) for t in flat_f]


def _flat(out):
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_eager_direct_call_equals_the_dispatched_custom_op(name, backend):
    """In plain eager mode an op calls its backend directly; through torch.ops (what compile, fake tensors
    and dispatch modes see) the same backend gives the same values and the same in-place updates."""
    op = ops.OPS[name]
    if backend not in op.registered():
        pytest.skip(MISSING_BACKENDS.get((name, backend), "not registered"))
    if backend == "triton" and not op.check("triton", torch.device("cpu"), _example(name))[0]:
        pytest.skip("triton cannot run here (no interpreter)")
    torch.manual_seed(0)
    direct_args = _example(name)
    dispatched_args = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in direct_args.items()}
    with torch.profiler.profile() as prof:
        direct = op(**direct_args, backend=backend)
    assert not [e for e in prof.events() if e.name.startswith(f"{NAMESPACE}::")], "eager call went through the dispatcher"
    values = op.bind((), dispatched_args)
    out = op._from_sentinels(op.custom_op(*values.values(), backend))
    dispatched = op._finish(values, out) if op._finish is not None else out
    assert len(_flat(direct)) == len(_flat(dispatched))
    for a, b in zip(_flat(direct), _flat(dispatched)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for n in op.mutates:
        if isinstance(direct_args[n], torch.Tensor):
            assert torch.equal(direct_args[n], dispatched_args[n]), n


def _garbage_like(t: torch.Tensor) -> torch.Tensor:
    """Same shape, strides, dtype and device; values no validator could accept if it read them."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    out.fill_(float("nan") if t.is_floating_point() else (False if t.dtype == torch.bool else -7))
    return out


@pytest.mark.parametrize("name", ALL_OPS)
def test_validator_reads_only_metadata_outside_reads_values(name):
    """Validation is remembered per call signature (shapes, strides, dtypes, devices, scalar values), so a
    validator may read values only of the arguments it declares in `reads_values`: with every other tensor
    argument's values replaced by NaN / -7, it still accepts the example call."""
    op = ops.OPS[name]
    args = {k: (_garbage_like(v) if isinstance(v, torch.Tensor) and k not in op.reads_values else v)
            for k, v in _example(name).items()}
    op.validator(**op.bind((), args))


def test_validation_is_remembered_per_signature_and_never_for_rejected_calls(monkeypatch):
    op = ops.OPS["add_rms_norm"]
    calls = []
    validator = op.validator
    monkeypatch.setattr(op, "validator", lambda **kw: (calls.append(1), validator(**kw))[1])
    monkeypatch.setattr(op, "_validated", set())
    x, r, w = torch.randn(2, 8), torch.randn(2, 8), torch.randn(8)
    op(x, r, w, 1e-6, backend="torch")
    op(torch.randn(2, 8), torch.randn(2, 8), torch.randn(8), 1e-6, backend="torch")
    assert len(calls) == 1  # same signature: validated once
    op(x, r, w, 1e-5, backend="torch")  # another eps
    op(x[:, :4], r[:, :4], w[:4], 1e-6, backend="torch")  # other shapes
    op(x.t().contiguous().t(), r, w, 1e-6, backend="torch")  # other strides
    assert len(calls) == 4
    with pytest.raises(TypeError, match="add_rms_norm: x must have dtype"):
        op(x.long(), r, w, 1e-6, backend="torch")
    with pytest.raises(TypeError, match="add_rms_norm: x must have dtype"):
        op(x.long(), r, w, 1e-6, backend="torch")  # a rejected call is checked again every time
    with pytest.raises(ValueError, match="eps must be a non-negative number"):
        op(x, r, w, -1.0, backend="torch")
    ids = ops.OPS["moe_align"]
    with pytest.raises(ValueError, match="topk_ids must lie in"):
        ids(torch.tensor([[0, 1]]), 4, 4)
        ids(torch.tensor([[0, 9]]), 4, 4)  # same signature, a value out of range: reads_values keeps the check


@pytest.mark.parametrize("name", ALL_OPS)
def test_public_signature_is_the_schemas_arguments_plus_backend(name):
    """inspect.signature (help(), editors) shows the op's real parameters, not (*args, **kwargs), and a
    call by those keywords works."""
    op = ops.OPS[name]
    assert getattr(ops, name) is op
    sig = inspect.signature(op)
    assert tuple(sig.parameters) == op.arg_names + ("backend",)
    backend = sig.parameters["backend"]
    assert backend.kind is inspect.Parameter.KEYWORD_ONLY and backend.default == "auto"
    assert all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())
    assert str(sig).startswith(f"({op.arg_names[0]}") and "backend: str = 'auto'" in str(sig)
    args = _example(name)
    assert set(args) == set(op.arg_names)
    out = op(**args, backend="torch" if "torch" in op.backends else "reference")
    assert out is not None
    sig.bind(**args, backend="torch")  # the signature accepts what the op accepts


@pytest.mark.parametrize("name", ALL_OPS)
def test_bind_equals_pythons_binding(name):
    """The op's own argument binding (its fast path) gives what inspect's binding gives, or raises TypeError
    where Python would: too many positional arguments, unknown or repeated keywords, missing arguments."""
    op = ops.OPS[name]
    params = list(op.signature.parameters)
    for n_pos in range(len(params) + 2):
        args = tuple(f"a{i}" for i in range(n_pos))
        for names in ((), (params[0],), (params[-1],), ("no_such_argument",), tuple(params[n_pos:])):
            kwargs = {k: k for k in names}
            try:
                bound = op.signature.bind(*args, **kwargs)
                bound.apply_defaults()
                want = list(bound.arguments.items())
            except TypeError:
                with pytest.raises(TypeError):
                    op.bind(args, kwargs)
                continue
            assert list(op.bind(args, kwargs).items()) == want  # order too: it is the custom op's argument order


def test_inplace_state_is_the_callers_tensor():
    args = _example("fused_recurrent_gated_delta_rule")
    state = args["initial_state"]
    before = state.clone()
    _, final = ops.fused_recurrent_gated_delta_rule(**args, backend="torch")
    assert final is state and not torch.equal(state, before)


def test_auto_falls_back_when_a_predicate_fails_and_logs_once(monkeypatch, caplog):
    from interns2_fast import device

    monkeypatch.setattr(device, "auto_backends", lambda dev: ("triton", "torch", "reference"))
    x = torch.randn(1, 8, 5)
    w = torch.randn(8, 9)  # width 9: beyond the Triton kernel
    with caplog.at_level(logging.INFO, logger="interns2_fast"):
        assert ops.causal_conv1d_fn.select("auto", x.device, dict(_example("causal_conv1d_fn"), x=x, weight=w)) \
            == "torch"
        out = ops.causal_conv1d_fn(x, w, activation="silu")
        ops.causal_conv1d_fn(x, w, activation="silu")
    assert torch.allclose(out, ops.causal_conv1d_fn(x, w, activation="silu", backend="reference"), atol=1e-5)
    msgs = [r.getMessage() for r in caplog.records if "causal_conv1d_fn: backend auto -> torch" in r.getMessage()]
    assert len(msgs) == 1 and "W <= 8" in msgs[0]


def test_explicit_backend_that_cannot_take_the_input_raises_before_launch(monkeypatch):
    from interns2_fast.ops import _registry

    monkeypatch.setitem(_registry.BACKEND_DEVICE_CHECKS, "triton", lambda dev: _registry.OK)
    launched = []
    monkeypatch.setitem(ops.OPS["causal_conv1d_fn"].backends, "triton", _registry.Backend(
        "triton", lambda **kw: launched.append(1), ops.OPS["causal_conv1d_fn"].backends["triton"].supports))
    with pytest.raises(ValueError, match=r"causal_conv1d_fn: backend 'triton' cannot take these arguments: .*W <= 8"):
        ops.causal_conv1d_fn(torch.randn(1, 8, 5), torch.randn(8, 9), backend="triton")
    assert not launched


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_grad_enabled_forward_works_and_gradients_are_the_references(name, backend):
    """Autograd policy: with an input requiring grad, every backend gives the reference's gradients."""
    op = ops.OPS[name]
    if backend not in op.registered():
        pytest.skip(MISSING_BACKENDS.get((name, backend), "not registered"))
    base = _example(name)
    float_args = [n for n, v in base.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                  and n not in op.mutates]
    if not float_args or name == "moe_align":
        pytest.skip("no differentiable input")

    def run(b):
        args = {n: (v.clone().requires_grad_(n in float_args) if isinstance(v, torch.Tensor) else v)
                for n, v in _example(name).items()}
        torch.manual_seed(0)
        out = op(**args, backend=b)
        outs = [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)
                and t.is_floating_point() and t.requires_grad]
        loss = sum((t.double() * torch.linspace(0.5, 1.5, t.numel()).view(t.shape)).sum() for t in outs)
        grads = torch.autograd.grad(loss, [args[n] for n in float_args], allow_unused=True)
        return [torch.zeros_like(args[n]) if g is None else g for n, g in zip(float_args, grads)]

    torch.manual_seed(1)
    want = run("reference")
    torch.manual_seed(1)
    got = run(backend)
    for n, g, w in zip(float_args, got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=f"{name}: d/d{n}")


def test_ops_pickle_by_name():
    import pickle

    assert pickle.loads(pickle.dumps(ops.rms_norm_gated)) is ops.rms_norm_gated


def test_compiles_whole():
    args = _example("causal_conv1d_update")

    def step(x, state, w):
        y = ops.causal_conv1d_update(x, state, w, None, "silu")
        return ops.rms_norm_gated(y.transpose(1, 2), y.transpose(1, 2), torch.ones(6), 1e-6)

    expl = torch._dynamo.explain(step)(args["x"], args["conv_state"].clone(), args["weight"])
    assert expl.graph_break_count == 0 and expl.graph_count == 1
    s1, s2 = args["conv_state"].clone(), args["conv_state"].clone()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(args["x"], s1, args["weight"]), step(args["x"], s2, args["weight"]))
    torch.testing.assert_close(s1, s2)  # the in-place state update survives compilation
