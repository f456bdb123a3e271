"""moe_experts_shared and moe_sparse_block (the shared expert as one more slot of the expert GEMMs,
its sigmoid gate and the combine fused): torch and Triton (interpreter) backends vs the installed
transformers sparse-MoE block of every family with a shared expert (qwen3_5_moe, qwen3_next, the
Intern-S2 remote-code stand-in), vs the reference backend, and vs an independent float64 loop.

Tolerances (rms = rms(out - ref) / rms(ref); max_abs relative to max|ref|, tests/tolerance.py "ref"):

| dtype | vs float64 loop: rms / max_abs | vs reference / transformers block: rms / max_abs |
|-------|--------------------------------|--------------------------------------------------|
| fp32  | 1e-5 / 1e-5                    | 1e-5 / 1e-5                                      |
| bf16  | 2e-2 / 4e-2                    | 3e-2 / 6e-2                                      |

bf16: the reference rounds every linear, the activation, each expert's output and the sums to bf16;
the backends accumulate in fp32 (the torch path rounds the SwiGLU intermediates to bf16 as the
eager loop does), so they sit closer to the float64 loop.
"""
import pytest
import torch
import torch.nn.functional as F

from interns2_fast import ops
from interns2_fast.torch_impl import moe_experts as torch_impl
from tolerance import assert_close

TOL = {torch.float32: dict(loop=(1e-5, 1e-5), ref=(1e-5, 1e-5)),
       torch.bfloat16: dict(loop=(2e-2, 4e-2), ref=(3e-2, 6e-2))}
DTYPES = [torch.float32, torch.bfloat16]
BACKENDS = ["torch", "triton"]


def _close(out, ref, tol, what=""):
    assert_close(out, ref, tol[0], tol[1], what, max_scale="ref")


def make(T, E, k, H, I, IS, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    hidden = r(T, H)
    gu, dn = r(E, 2 * I, H, scale=H ** -0.5), r(E, H, I, scale=I ** -0.5)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]) if T else torch.zeros(0, k, dtype=torch.long)
    w = torch.rand(T, k, generator=g) + 0.1
    w = w / w.sum(-1, keepdim=True)
    shared = (r(IS, H, scale=H ** -0.5), r(IS, H, scale=H ** -0.5), r(H, IS, scale=IS ** -0.5), r(1, H, scale=H ** -0.5))
    return (hidden, ids, w, gu, dn, *shared)


def loop64(hidden, ids, w, gu, dn, sg, su, sd, sgate):
    """Independent float64 loop: routed slots, then sigmoid(gate) * shared MLP."""
    x, gu, dn, w = hidden.double(), gu.double(), dn.double(), w.double()
    sg, su, sd, sgate = sg.double(), su.double(), sd.double(), sgate.double()
    inter = dn.shape[2]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            a = gu[e] @ x[t]
            out[t] += w[t, j] * (dn[e] @ (F.silu(a[:inter]) * a[inter:]))
        hs = F.silu(sg @ x[t]) * (su @ x[t])
        out[t] += torch.sigmoid(sgate[0] @ x[t]) * (sd @ hs)
    return out


def _run(backend, *args):
    if backend == "triton":
        pytest.importorskip("triton")
    return ops.moe_experts_shared(*args, backend=backend)


SHAPES = [  # (T, E, k, H, I, IS): decode (T*k <= 64) and prefill (> 64); IS != I; masked widths
    (1, 8, 2, 32, 16, 16), (2, 16, 8, 32, 16, 32), (3, 8, 4, 48, 16, 40), (1, 16, 8, 40, 32, 24),
    (20, 8, 4, 32, 16, 16), (40, 16, 8, 32, 16, 48), (20, 8, 4, 37, 40, 24), (12, 8, 8, 8, 8, 16),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,E,k,H,I,IS", SHAPES)
def test_matches_loop_and_reference(backend, dtype, T, E, k, H, I, IS):
    args = make(T, E, k, H, I, IS, dtype)
    out = _run(backend, *args)
    assert out.shape == (T, H) and out.dtype == dtype
    _close(out, loop64(*args), TOL[dtype]["loop"], "vs float64 loop")
    _close(out, ops.moe_experts_shared(*args, backend="reference"), TOL[dtype]["ref"], "vs reference")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 5])
def test_torch_cpu_grouped_and_gathered_decode_paths_agree(monkeypatch, dtype, T):
    # the CPU picks grouped_mm above CPU_GATHER_BYTES of selected weights, the gather below: both
    if torch_impl._grouped_mm_fn() is None:
        pytest.skip("this torch has no grouped_mm")
    args = make(T, 16, 8, 32, 16, 24, dtype)
    monkeypatch.setattr(torch_impl, "CPU_GATHER_BYTES", 0)
    grouped = ops.moe_experts_shared(*args, backend="torch")
    monkeypatch.setattr(torch_impl, "CPU_GATHER_BYTES", 1 << 40)
    gathered = ops.moe_experts_shared(*args, backend="torch")
    for out in (grouped, gathered):
        _close(out, loop64(*args), TOL[dtype]["loop"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_triton_decode_and_plan_paths_agree_and_deterministic(backend):
    args = make(7, 8, 8, 32, 16, 32, torch.bfloat16)
    a, b = _run(backend, *args), _run(backend, *args)
    assert torch.equal(a, b)
    if backend == "triton":
        from interns2_fast.kernels import moe_experts as km
        from interns2_fast.ops import moe as moe_ops

        plan = km.moe_experts_shared(*args, plan_fn=moe_ops.moe_align, force_plan=True)
        _close(plan, loop64(*args), TOL[torch.bfloat16]["loop"])


def test_int32_ids():
    args = list(make(3, 8, 4, 32, 16, 16, torch.float32))
    want = loop64(*args)
    for backend in ["reference", *BACKENDS]:
        if backend == "triton":
            pytest.importorskip("triton")
        a = list(args)
        a[1] = a[1].to(torch.int32)
        _close(ops.moe_experts_shared(*a, backend=backend), want, TOL[torch.float32]["loop"], backend)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_nan_row_stays_in_its_row(backend):
    args = list(make(4, 8, 4, 32, 16, 16, torch.float32))
    args[0] = args[0].clone()
    args[0][2, 5] = float("nan")
    out = _run(backend, *args) if backend != "reference" else ops.moe_experts_shared(*args, backend="reference")
    assert torch.isnan(out[2]).all()
    keep = [0, 1, 3]
    clean = list(args)
    clean[0], clean[1], clean[2] = args[0][keep], args[1][keep], args[2][keep]
    assert torch.isfinite(out[keep]).all()
    _close(out[keep], loop64(*clean), TOL[torch.float32]["loop"])


@pytest.mark.parametrize("T,k", [(4, 2), (40, 4)], ids=["decode", "plan"])
def test_triton_out_of_range_ids_add_nothing_and_read_nothing_out_of_bounds(T, k):
    """The expert weights sit between NaN guard experts: any out-of-bounds read shows as NaN."""
    pytest.importorskip("triton")
    from interns2_fast.kernels import moe_experts as km
    from interns2_fast.kernels import moe_routing as kr

    E = 6
    hidden, ids, w, gu, dn, *shared = make(T, E, k, 32, 16, 16, torch.float32)
    bad = torch.zeros_like(ids, dtype=torch.bool)
    bad[0, 0] = bad[1, k - 1] = bad[T - 1, 0] = True
    ids_bad = ids.clone()
    for (t, j), v in zip(bad.nonzero().tolist(), [-1, E, 2**40]):
        ids_bad[t, j] = v
    gu_buf = torch.full((E + 2, *gu.shape[1:]), float("nan"))
    dn_buf = torch.full((E + 2, *dn.shape[1:]), float("nan"))
    gu_buf[1:E + 1], dn_buf[1:E + 1] = gu, dn
    out = km.moe_experts_shared(hidden, ids_bad, w, gu_buf[1:E + 1], dn_buf[1:E + 1], *shared, plan_fn=kr.moe_align)
    assert torch.isfinite(out).all()
    want = loop64(hidden, torch.where(bad, 0, ids), torch.where(bad, 0.0, w), gu, dn, *shared)
    _close(out, want, TOL[torch.float32]["loop"])


def test_empty_tokens():
    args = make(0, 8, 2, 32, 16, 16, torch.float32)
    for backend in ["reference", *BACKENDS]:
        out = ops.moe_experts_shared(*args, backend=backend)
        assert out.shape == (0, 32)
        blk = ops.moe_sparse_block(args[0], torch.randn(8, 32), 2, True, *args[3:], backend=backend)
        assert blk.shape == (0, 32)


def test_grad_enabled_input_runs_the_differentiable_reference():
    args = list(make(3, 8, 2, 32, 16, 16, torch.float32))
    x = args[0].clone().requires_grad_(True)
    out = ops.moe_experts_shared(x, *args[1:], backend="torch")
    assert out.requires_grad
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        assert torch.equal(out.detach(), ops.moe_experts_shared(*args, backend="reference"))
    router = torch.randn(8, 32)
    x.grad = None
    blk = ops.moe_sparse_block(x, router, 2, True, *args[3:], backend="triton")
    blk.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert torch.equal(blk.detach(), ops.moe_sparse_block(args[0], router, 2, True, *args[3:], backend="reference"))


def test_bad_inputs_name_the_op():
    hidden, ids, w, gu, dn, sg, su, sd, sgate = make(4, 8, 2, 32, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="moe_experts_shared: shared_up_proj must have shape"):
        ops.moe_experts_shared(hidden, ids, w, gu, dn, sg, su[:8], sd, sgate)
    with pytest.raises(ValueError, match="moe_experts_shared: shared_gate must be 2-D"):
        ops.moe_experts_shared(hidden, ids, w, gu, dn, sg, su, sd, sgate.reshape(-1))
    with pytest.raises(TypeError, match="moe_experts_shared: shared_down_proj must have dtype"):
        ops.moe_experts_shared(hidden, ids, w, gu, dn, sg, su, sd.double(), sgate)
    with pytest.raises(ValueError, match=r"moe_experts_shared: topk_ids must lie in \[0, 8\)"):
        ops.moe_experts_shared(hidden, ids + 8, w, gu, dn, sg, su, sd, sgate)
    with pytest.raises(ValueError, match="moe_sparse_block: router_weight must have shape"):
        ops.moe_sparse_block(hidden, torch.randn(7, 32), 2, True, gu, dn, sg, su, sd, sgate)
    with pytest.raises(ValueError, match="moe_sparse_block: top_k"):
        ops.moe_sparse_block(hidden, torch.randn(8, 32), 9, True, gu, dn, sg, su, sd, sgate)


@pytest.mark.parametrize("T", [2, 20])
def test_torch_accelerator_path_reads_nothing_back(T):
    # on "meta" any read of a value to the host raises: the path a device takes must not read back
    args = [t.to("meta") for t in make(T, 8, 2, 32, 16, 16, torch.bfloat16)]
    out = torch_impl.moe_experts_shared(*args) if T * 2 <= torch_impl.DECODE_SLOTS else None
    if out is not None:
        assert out.device.type == "meta" and out.shape == (T, 32)


# ------------------------------------------------------------------ vs the installed transformers block

FAMILIES = ["qwen3_5_moe", "qwen3_next", "interns2_remote"]


def _block(family, dtype):
    from tiny_models import tiny_model

    model = tiny_model(family, dtype)
    for layer in model.model.layers:
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and hasattr(mlp, "shared_expert_gate"):
            return mlp
    pytest.fail(f"{family}: no sparse-MoE block with a shared expert")


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("T", [1, 3, 24])
def test_sparse_block_op_equals_installed_block(family, dtype, backend, T):
    from interns2_fast.patching import moe as hooks

    block = _block(family, dtype)
    H = block.gate.weight.shape[1]
    x = torch.randn(1, T, H, generator=torch.Generator().manual_seed(T)).to(dtype)
    weights = hooks.shared_expert_weights(block)
    assert weights is not None
    with torch.no_grad():
        want = block(x)
        want = want[0] if isinstance(want, tuple) else want
        got = ops.moe_sparse_block(x[0], block.gate.weight, block.gate.top_k,
                                   bool(getattr(block.gate, "norm_topk_prob", True)), block.experts.gate_up_proj,
                                   block.experts.down_proj, *weights, backend=backend)
    assert got.dtype == dtype
    _close(got, want.reshape(T, H), TOL[dtype]["ref"], f"{family} {backend}")
