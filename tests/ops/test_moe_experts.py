"""moe_experts: torch and Triton (interpreter) backends vs the installed transformers eager experts
(the reference backend) and vs an independent float64 per-slot loop written here.

Tolerances (rms = rms(out - ref) / rms(ref); max_abs relative to max|ref|):

| dtype | vs float64 loop: rms / max_abs | vs reference backend: rms / max_abs |
|-------|--------------------------------|-------------------------------------|
| fp32  | 1e-5 / 1e-5                    | 1e-5 / 1e-5                         |
| bf16  | 2e-2 / 4e-2                    | 3e-2 / 6e-2                         |

bf16: the reference rounds gate/up, the activation, each expert's output and the running sum to
bf16; the backends keep fp32 accumulators and round once, so they sit closer to the float64 loop.
"""
import pytest
import torch

from interns2_fast import ops
from interns2_fast.ops import moe as moe_ops

TOL = {torch.float32: dict(loop=(1e-5, 1e-5), ref=(1e-5, 1e-5)),
       torch.bfloat16: dict(loop=(2e-2, 4e-2), ref=(3e-2, 6e-2))}
H, I = 32, 16


def _metrics(out, ref):
    out, ref = out.double(), ref.double()
    rms = (out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)
    mx = (out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)
    return rms.item(), mx.item()


def _close(out, ref, tol):
    rms, mx = _metrics(out, ref)
    assert rms <= tol[0] and mx <= tol[1], f"rms {rms:.3g} (tol {tol[0]}), max_abs {mx:.3g} (tol {tol[1]})"


def loop64(hidden, ids, weights, gu, dn, shared=None, gate=None):
    """Independent float64 per-slot loop: out[t] = sum_j w[t,j] * down[e] @ (silu(g) * u)."""
    x, gu, dn, w = hidden.double(), gu.double(), dn.double(), weights.double()
    inter = dn.shape[2]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate_up = gu[e] @ x[t]
            h = torch.nn.functional.silu(gate_up[:inter]) * gate_up[inter:]
            out[t] += w[t, j] * (dn[e] @ h)
        if shared is not None:
            s = shared[t].double()
            out[t] += s * (torch.sigmoid(gate[t].double().reshape(())) if gate is not None else 1.0)
    return out


def make(T, E, k, dtype, *, ids=None, seed=0, h=H, i=I):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, h, generator=g).to(dtype)
    gu = (torch.randn(E, 2 * i, h, generator=g) * h ** -0.5).to(dtype)
    dn = (torch.randn(E, h, i, generator=g) * i ** -0.5).to(dtype)
    if ids is None:
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    w = torch.rand(T, k, generator=g) + 0.1
    w = w / w.sum(-1, keepdim=True)
    return hidden, ids, w, gu, dn


BACKENDS = ["torch", "triton"]


def _run(backend, *args, **kw):
    if backend == "triton":
        pytest.importorskip("triton")
    return ops.moe_experts(*args, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
# (64, 16, 2) -> Triton plan blocks of 16 rows, (64, 16, 8) -> 32, (64, 8, 8) -> 64; T*k <= 64 -> decode.
@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (2, 16, 8), (7, 8, 8), (64, 16, 2), (64, 16, 8), (64, 8, 8)])
def test_matches_reference_and_loop(backend, dtype, T, E, k):
    args = make(T, E, k, dtype)
    out = _run(backend, *args)
    assert out.shape == (T, H) and out.dtype == dtype
    _close(out, loop64(*args), TOL[dtype]["loop"])
    _close(out, ops.moe_experts(*args, backend="reference"), TOL[dtype]["ref"])


# Widths that are no multiple of the tiles (I = 40, odd H) and below tl.dot's 16 (H or I = 8: the GEMM
# tiles are zero-filled to 16). T*k = 8, 56 -> decode; 72, 160 -> the plan GEMMs (T = 9..20, a small
# prefill, used to hit Triton's "M >= 16, N >= 16 and K >= 16" assertion at H or I < 16).
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h,i", [(32, 40), (37, 40), (128, 40), (33, 24), (16, 8), (8, 16), (8, 8), (128, 8)])
@pytest.mark.parametrize("T", [1, 7, 9, 20])
def test_any_width_and_small_prefill(backend, h, i, T):
    args = make(T, 16, 8, torch.float32, h=h, i=i, seed=T)
    out = _run(backend, *args)
    assert out.shape == (T, h)
    _close(out, loop64(*args), TOL[torch.float32]["loop"])
    _close(out, ops.moe_experts(*args, backend="reference"), TOL[torch.float32]["ref"])


@pytest.mark.parametrize("h,i", [(37, 40), (8, 8)])
@pytest.mark.parametrize("T", [1, 2, 3])
def test_triton_plan_gemms_with_fewer_rows_than_a_block(h, i, T):
    # the plan path forced on 1..3 tokens: one partly filled 16-row block per hit expert
    pytest.importorskip("triton")
    from interns2_fast.kernels import moe_experts as km

    args = make(T, 8, 2, torch.float32, h=h, i=i, seed=T)
    shared, gate = torch.randn(T, h), torch.randn(T, 1)
    out = km.moe_experts(*args, shared_expert_output=shared, shared_expert_gate=gate, plan_fn=moe_ops.moe_align,
                         force_plan=True)
    _close(out, loop64(*args, shared=shared, gate=gate), TOL[torch.float32]["loop"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_tokens_on_one_expert_and_idle_experts(backend):
    # Every token picks experts 3 and 5 (most experts get nothing); the plan path (T*k > 64).
    T, E, k = 40, 16, 2
    ids = torch.tensor([[3, 5]] * T)
    args = make(T, E, k, torch.float32, ids=ids)
    out = _run(backend, *args)
    _close(out, loop64(*args), TOL[torch.float32]["loop"])
    _close(out, ops.moe_experts(*args, backend="reference"), TOL[torch.float32]["ref"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_k1_single_expert_everything(backend):
    T, E, k = 70, 8, 1
    args = make(T, E, k, torch.float32, ids=torch.full((T, 1), 7))
    _close(_run(backend, *args), loop64(*args), TOL[torch.float32]["loop"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 7, 64])
def test_triton_decode_and_plan_paths_agree(dtype, T):
    pytest.importorskip("triton")
    from interns2_fast.kernels import moe_experts as km

    args = make(T, 8, 2, dtype)
    dec = km.moe_experts(*args, plan_fn=moe_ops.moe_align)
    plan = km.moe_experts(*args, plan_fn=moe_ops.moe_align, force_plan=True)
    _close(dec, loop64(*args), TOL[dtype]["loop"])
    _close(plan, loop64(*args), TOL[dtype]["loop"])


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("T,k", [(3, 2), (40, 8)])
@pytest.mark.parametrize("with_gate", [True, False])
def test_shared_expert_fused_add(backend, T, k, with_gate):
    args = make(T, 16, k, torch.float32)
    shared = torch.randn(T, H)
    gate = torch.randn(T, 1) if with_gate else None
    out = _run(backend, *args, shared_expert_output=shared, shared_expert_gate=gate)
    _close(out, loop64(*args, shared=shared, gate=gate), TOL[torch.float32]["loop"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [5, 64])
def test_deterministic(backend, T):
    args = make(T, 8, 8, torch.bfloat16)
    shared = torch.randn(T, H).to(torch.bfloat16)
    gate = torch.randn(T)
    a = _run(backend, *args, shared_expert_output=shared, shared_expert_gate=gate.to(torch.bfloat16))
    b = _run(backend, *args, shared_expert_output=shared, shared_expert_gate=gate.to(torch.bfloat16))
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_ids_match_int64(backend):
    args = make(9, 8, 8, torch.float32)
    a = _run(backend, *args)
    b = _run(backend, args[0], args[1].to(torch.int32), *args[2:])
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
@pytest.mark.parametrize("T", [3, 40])  # decode and plan paths on Triton
def test_int64_and_int32_ids_on_every_backend(backend, id_dtype, T):
    # one contract for all backends: int64 and int32 ids, the same values
    hidden, ids, w, gu, dn = make(T, 8, 2, torch.float32)
    out = _run(backend, hidden, ids.to(id_dtype), w, gu, dn)
    _close(out, loop64(hidden, ids, w, gu, dn), TOL[torch.float32]["loop"])
    _close(out, ops.moe_experts(hidden, ids, w, gu, dn, backend="reference"), TOL[torch.float32]["ref"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [3, 40])
def test_repeated_expert_within_a_token(backend, T):
    # Not produced by top-k, but the eager loop sums both slots; so must every backend.
    ids = torch.tensor([[2, 2, 5]] * T)
    args = make(T, 8, 3, torch.float32, ids=ids)
    out = _run(backend, *args)
    _close(out, loop64(*args), TOL[torch.float32]["loop"])
    _close(out, ops.moe_experts(*args, backend="reference"), TOL[torch.float32]["ref"])


def test_bad_inputs_name_the_op():
    hidden, ids, w, gu, dn = make(4, 8, 2, torch.float32)
    with pytest.raises(ValueError, match="moe_experts.*shared_expert_output"):
        ops.moe_experts(hidden, ids, w, gu, dn, shared_expert_gate=torch.zeros(4, 1))
    with pytest.raises(ValueError, match="moe_experts.*shared_expert_output"):
        ops.moe_experts(hidden, ids, w, gu, dn, shared_expert_output=torch.zeros(3, H))
    with pytest.raises(ValueError, match="moe_experts.*shared_expert_gate"):
        ops.moe_experts(hidden, ids, w, gu, dn, shared_expert_output=torch.zeros(4, H),
                        shared_expert_gate=torch.zeros(4, 2))
    with pytest.raises(TypeError, match="moe_experts.*down_proj"):
        ops.moe_experts(hidden, ids, w, gu, dn.double())


def test_npu_native_without_torch_npu_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("torch_npu") is not None:
        pytest.skip("torch_npu is installed")
    from interns2_fast.torch_impl import moe_npu_native

    with pytest.raises(RuntimeError, match="torch_npu"):
        moe_npu_native.moe_experts(*make(2, 8, 2, torch.float32))


@pytest.mark.parametrize("T,dtype", [(2, torch.float32), (20, torch.bfloat16)], ids=["decode-fp32", "grouped-bf16"])
def test_torch_accelerator_paths_read_nothing_back(T, dtype):
    # On "meta" any read of a value to the host raises: the paths an accelerator takes (the
    # gathered-weights bmm for decode, grouped_mm for bf16 prefill) must not read anything back.
    from interns2_fast.torch_impl import moe_experts as impl

    if T * 8 > impl.DECODE_SLOTS and not hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has no F.grouped_mm")
    hidden, ids, w, gu, dn = (t.to("meta") for t in make(T, 8, 8, dtype))
    out = impl.moe_experts(hidden, ids, w, gu, dn, shared_expert_output=torch.empty(T, H, device="meta", dtype=dtype),
                           shared_expert_gate=torch.empty(T, 1, device="meta", dtype=dtype))
    assert out.device.type == "meta" and out.shape == (T, H) and out.dtype == dtype


def test_triton_gemms_skip_blocks_past_num_rows():
    # Rows at or past plan.num_rows must stay untouched (the grid covers the static max_rows).
    pytest.importorskip("triton")
    from interns2_fast import device as _device
    from interns2_fast.kernels import moe_experts as km

    T, E, k, bm = 12, 8, 2, 16
    hidden, ids, w, gu, dn = make(T, E, k, torch.float32, ids=torch.tensor([[1, 6]] * T))
    plan = moe_ops.moe_align(ids, E, bm)
    max_rows, used = plan.sorted_slots.shape[0], int(plan.num_rows)
    assert used < max_rows
    inter = torch.full((max_rows, I), float("nan"))
    n_tasks = (max_rows // bm) * (I // min(km.GU_BLOCK_N, I))
    km._gate_up_kernel[(_device.persistent_grid(hidden.device, n_tasks, cube=True),)](
        hidden, gu, inter, plan.sorted_slots, plan.block_expert, plan.num_rows, T * k, n_tasks, E,
        H=H, I=I, K_TOP=k, BLOCK_M=bm, BLOCK_N=min(km.GU_BLOCK_N, I), BLOCK_K=min(km.GU_BLOCK_K, H), DOT_FP32=True)
    assert torch.isfinite(inter[:used]).all() and torch.isnan(inter[used:]).all()
    # padding rows inside a group are computed from zero input: exactly zero
    pad = plan.sorted_slots[:used] == T * k
    assert pad.any() and (inter[:used][pad] == 0).all()


# ------------------------------------------------------------------------------- bad expert ids


@pytest.mark.parametrize("T, k", [(4, 2), (40, 4)], ids=["decode", "plan"])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_triton_experts_drop_out_of_range_ids_without_reading_out_of_bounds(T, k, id_dtype):
    """Device ids are not validated (a sync): the kernels must never read an expert's weights out of
    bounds, and a slot with an id outside [0, E) contributes nothing. The weights sit between two
    NaN-filled guard experts, so a read past either end shows up as NaN. The launcher is called
    directly (as the op does for a device tensor)."""
    pytest.importorskip("triton")
    from interns2_fast.kernels import moe_experts as km

    E = 6
    hidden, ids, w, gu, dn = make(T, E, k, torch.float32)
    bad = torch.zeros_like(ids, dtype=torch.bool)
    bad[0, 0] = bad[1, k - 1] = bad[T - 1, 0] = True
    wild = [-1, E, 2**40 if id_dtype == torch.int64 else 2**30]
    ids_bad = ids.clone()
    for (t, j), v in zip(bad.nonzero().tolist(), wild):
        ids_bad[t, j] = v
    gu_buf = torch.full((E + 2, *gu.shape[1:]), float("nan"))
    dn_buf = torch.full((E + 2, *dn.shape[1:]), float("nan"))
    gu_buf[1:E + 1], dn_buf[1:E + 1] = gu, dn
    out = km.moe_experts(hidden, ids_bad.to(id_dtype), w, gu_buf[1:E + 1], dn_buf[1:E + 1], plan_fn=km_plan(),
                         force_plan=T * k > km.DECODE_SLOTS)
    assert torch.isfinite(out).all()
    # the same op with the bad slots' weights set to 0 (and any valid id there)
    want = ops.moe_experts(hidden, torch.where(bad, 0, ids), torch.where(bad, 0.0, w), gu, dn, backend="torch")
    rms, mx = _metrics(out, want)
    assert rms <= 1e-5 and mx <= 1e-5, (rms, mx)


def km_plan():
    from interns2_fast.kernels import moe_routing as kr

    return kr.moe_align  # the plan launcher itself: no host-side id check in between


def test_out_of_range_ids_in_host_memory_are_an_error():
    hidden, ids, w, gu, dn = make(3, 4, 2, torch.float32)
    for v in (-1, 4):
        bad = ids.clone()
        bad[1, 0] = v
        for backend in ("reference", *BACKENDS):
            if backend == "triton":
                pytest.importorskip("triton")
            with pytest.raises(ValueError, match=r"moe_experts: topk_ids must lie in \[0, 4\)"):
                ops.moe_experts(hidden, bad, w, gu, dn, backend=backend)
