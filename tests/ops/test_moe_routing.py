"""moe_route (router) and moe_align (routing plan): torch and Triton (interpreter) backends.

Router, compared with the reference backend (the installed transformers router) and with a
float64 formula written here:

| quantity                          | dtype | rms(out-ref)/rms(ref) | max abs |
|-----------------------------------|-------|-----------------------|---------|
| logits vs reference               | fp32  | 1e-6                  | 1e-5    |
| logits vs reference               | bf16  | 1e-2 (1-ulp flips)    | 0.0625  |
| logits vs float64 matmul          | fp32  | 1e-6                  | 1e-5    |
| logits vs float64 matmul          | bf16  | 8e-3 (bf16 rounding)  | 0.05    |
| weights vs float64 softmax/top-k/ | any   | 1e-6                  | 1e-6    |
|   renorm of the returned logits   |       |                       |         |
| weights vs reference              | fp32  | 1e-6                  | 1e-6    |
| weights vs reference              | bf16  | 2e-2 (5.24 rounds its | 2e-2    |
|                                   |       | scores to bf16)       |         |

ids: exactly the documented rule (descending probability, ties to the LOWER expert id) applied in
float64 to the returned logits; against the reference, the selected probabilities must agree
(torch.topk orders ties in an unspecified way), and where no two of the top-(k+1) reference
probabilities are closer than 1e-4 the ids must be identical.

Plan: compared exactly with a naive Python construction of the documented layout, plus the
invariants checked field by field (every slot once, counts, block alignment, padding only at group
ends, block_expert, inverse map), and a hypothesis property test on random ids.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interns2_fast.ops import RoutingPlan, moe_align, moe_align_max_rows, moe_route

BACKENDS = ("torch", "triton")

TOL = {
    torch.float32: dict(logits_ref=(1e-6, 1e-5), logits_64=(1e-6, 1e-5), w_ref=(1e-6, 1e-6)),
    torch.bfloat16: dict(logits_ref=(1e-2, 0.0625), logits_64=(8e-3, 0.05), w_ref=(2e-2, 2e-2)),
}
W_FORMULA = (1e-6, 1e-6)


def _rms_ratio(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def _close(out, ref, tol, what):
    rms, mx = tol
    r = _rms_ratio(out, ref)
    m = (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0
    assert r <= rms and m <= mx, f"{what}: rms ratio {r:.3g} (tol {rms}), max abs {m:.3g} (tol {mx})"


def _rule_topk(logits: torch.Tensor, k: int, renormalize: bool = True):
    """float64 softmax, top-k by descending probability with ties to the lower id, renormalised."""
    p = torch.softmax(logits.double(), dim=-1)
    vals, ids = torch.sort(p, dim=-1, descending=True, stable=True)
    vals, ids = vals[:, :k], ids[:, :k]
    if renormalize:
        vals = vals / vals.sum(-1, keepdim=True)
    return vals, ids


def _router_inputs(T, E, H, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g).to(dtype)
    weight = (torch.randn(E, H, generator=g) / H**0.5).to(dtype)
    return hidden, weight


# ----------------------------------------------------------------------------------------- router


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 2, 7, 64])
@pytest.mark.parametrize("E,k", [(8, 2), (16, 8)])
def test_route_matches_reference_and_formula(backend, dtype, T, E, k):
    H = 160 if backend == "triton" else 64  # 160: several H steps, the last one partial (BLOCK_H 64 fp32, 128 bf16)
    hidden, weight = _router_inputs(T, E, H, dtype, seed=T * 100 + E)
    logits, w, ids = moe_route(hidden, weight, k, backend=backend)
    assert logits.shape == (T, E) and logits.dtype == dtype
    assert w.shape == (T, k) and w.dtype == torch.float32
    assert ids.shape == (T, k) and ids.dtype == torch.int64

    r_logits, r_w, r_ids = moe_route(hidden, weight, k, backend="reference")
    tol = TOL[dtype]
    _close(logits, r_logits, tol["logits_ref"], "logits vs reference")
    _close(logits, hidden.double() @ weight.double().T, tol["logits_64"], "logits vs float64 matmul")

    # softmax / top-k / renormalise: exact rule on the returned logits, in float64
    f_w, f_ids = _rule_topk(logits, k)
    assert torch.equal(ids, f_ids), f"ids differ from the documented rule:\n{ids}\n{f_ids}"
    _close(w, f_w, W_FORMULA, "weights vs float64 formula")

    # against transformers: the same probabilities selected; identical ids where no near-ties
    p_ref = torch.softmax(r_logits.double(), dim=-1)
    _close(p_ref.gather(1, ids), p_ref.gather(1, r_ids), tol["w_ref"], "selected probabilities vs reference")
    _close(w, r_w, tol["w_ref"], "weights vs reference")
    top = torch.sort(p_ref, dim=-1, descending=True).values[:, : min(k + 1, E)]
    clear = (top[:, :-1] - top[:, 1:]).min(dim=-1).values > 1e-4 if top.shape[1] > 1 else torch.ones(T, dtype=torch.bool)
    assert torch.equal(ids[clear], r_ids[clear])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_route_no_renormalize(backend, dtype):
    hidden, weight = _router_inputs(7, 16, 32, dtype, seed=3)
    logits, w, ids = moe_route(hidden, weight, 4, renormalize=False, backend=backend)
    r_logits, r_w, r_ids = moe_route(hidden, weight, 4, renormalize=False, backend="reference")
    f_w, f_ids = _rule_topk(logits, 4, renormalize=False)
    assert torch.equal(ids, f_ids)
    _close(w, f_w, W_FORMULA, "weights vs float64 formula")
    _close(w, r_w, TOL[dtype]["w_ref"], "weights vs reference")
    assert (w.sum(-1) < 1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_route_ties_go_to_lower_expert_id(backend):
    """Equal scores: zero router weights (all E equal) and duplicated expert rows."""
    T, E, H, k = 3, 16, 32, 8
    hidden = torch.randn(T, H)
    _, w, ids = moe_route(hidden, torch.zeros(E, H), k, backend=backend)
    assert torch.equal(ids, torch.arange(k).expand(T, k))
    torch.testing.assert_close(w, torch.full((T, k), 1.0 / k), rtol=0, atol=1e-7)

    weight = torch.randn(E, H) / H**0.5
    weight[[9, 12, 14]] = weight[2].clone()  # four equal experts: 2, 9, 12, 14
    weight[[7, 13]] = weight[5].clone()  # three equal experts: 5, 7, 13
    weight[3] = weight[1]
    logits, w, ids = moe_route(hidden, weight, k, backend=backend)
    f_w, f_ids = _rule_topk(logits, k)
    assert torch.equal(ids, f_ids)
    _close(w, f_w, W_FORMULA, "weights vs float64 formula")
    # each tied group contributes its lowest ids first: an id appears only after its equal, lower twins
    for row in ids.tolist():
        for hi, lo in [(9, 2), (12, 9), (14, 12), (7, 5), (13, 7), (3, 1)]:
            if hi in row:
                assert lo in row and row.index(lo) < row.index(hi), row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_route_many_ties_backends_agree(dtype):
    """Small-integer logits: most rows have ties straddling the k-th place. torch and triton agree
    exactly, both follow the rule, and the reference selects equally probable experts."""
    g = torch.Generator().manual_seed(7)
    T, E, H, k = 20, 16, 32, 8
    hidden = torch.randint(-1, 2, (T, H), generator=g).to(dtype)
    weight = (torch.randint(-1, 2, (E, H), generator=g) * (torch.rand(E, H, generator=g) < 0.15)).to(dtype)
    out = {b: moe_route(hidden, weight, k, backend=b) for b in ("torch", "triton", "reference")}
    assert torch.equal(out["torch"][0], out["triton"][0])
    assert torch.equal(out["torch"][2], out["triton"][2])
    _close(out["triton"][1], out["torch"][1], W_FORMULA, "weights triton vs torch")
    f_w, f_ids = _rule_topk(out["torch"][0], k)
    assert torch.equal(out["torch"][2], f_ids)
    p = torch.softmax(out["reference"][0].double(), -1)
    _close(p.gather(1, out["torch"][2]), p.gather(1, out["reference"][2]), TOL[dtype]["w_ref"], "selected probs")


def test_topk_lowest_id_keys():
    """Both tie-breaking keys of the torch backend (float64 on CPU/CUDA, int64 elsewhere) follow the rule,
    including probabilities that differ in the last fp32 bit, exact ties and zeros."""
    from interns2_fast.torch_impl.moe_routing import _topk_lowest_id_int_key, topk_lowest_id

    g = torch.Generator().manual_seed(11)
    p = torch.softmax(torch.randn(64, 32, generator=g), -1)
    p[0] = 1.0 / 32
    p[1] = 0.0
    p[1, 20] = 1.0
    p[2, 5] = torch.nextafter(p[2, 7], torch.tensor(1.0))
    p[3, ::3] = p[3, 4]
    p[4] = torch.tensor([0.5, 0.25] * 16).flip(0)
    vals, ids = torch.sort(p.double(), dim=-1, descending=True, stable=True)
    for fn in (topk_lowest_id, _topk_lowest_id_int_key):
        v, i = fn(p, 8)
        assert torch.equal(i, ids[:, :8]), fn.__name__
        assert torch.equal(v, p.gather(1, i)) and v.dtype == torch.float32


def test_route_ties_torch_topk_is_not_lowest_id_on_cpu():
    """Why the rule is documented rather than borrowed: torch.topk's tie order is implementation-specific."""
    _, ids = torch.topk(torch.zeros(1, 8), 8)
    _, rule = _rule_topk(torch.zeros(1, 8), 8)
    assert sorted(ids[0].tolist()) == rule[0].tolist()  # same set; the order may differ


@pytest.mark.parametrize("backend", BACKENDS)
def test_route_empty_and_noncontiguous(backend):
    hidden, weight = _router_inputs(6, 8, 64, torch.float32)
    logits, w, ids = moe_route(hidden[::2], weight, 2, backend=backend)
    r = moe_route(hidden[::2].contiguous(), weight, 2, backend="torch")
    torch.testing.assert_close(logits, r[0])
    assert torch.equal(ids, r[2])
    out = moe_route(hidden[:0], weight, 2, backend=backend)
    assert [tuple(t.shape) for t in out] == [(0, 8), (0, 2), (0, 2)]


def test_route_triton_task_loop():
    """T = 100: four 32-token tasks on the interpreter's 3 programs, so one program loops."""
    hidden, weight = _router_inputs(100, 8, 32, torch.float32, seed=5)
    got = moe_route(hidden, weight, 2, backend="triton")
    want = moe_route(hidden, weight, 2, backend="torch")
    _close(got[0], want[0], TOL[torch.float32]["logits_ref"], "logits")
    _close(got[1], want[1], TOL[torch.float32]["w_ref"], "weights")
    assert torch.equal(got[2], want[2])


def test_route_bad_inputs():
    h, w = torch.randn(2, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="moe_route"):
        moe_route(h, w, 5, backend="torch")
    with pytest.raises(ValueError, match="moe_route"):
        moe_route(h, torch.randn(4, 7), 2, backend="torch")
    with pytest.raises(TypeError, match="moe_route"):
        moe_route(h, w.double(), 2, backend="torch")


# ------------------------------------------------------------------------------------------- plan


def _naive_plan(ids: torch.Tensor, E: int, bs: int) -> dict[str, list[int]]:
    """The documented layout, built slot by slot in Python."""
    flat = ids.reshape(-1).tolist()
    n = len(flat)
    rows = moe_align_max_rows(n, E, bs)
    groups = [[s for s in range(n) if flat[s] == e] for e in range(E)]
    sorted_slots, offsets, block_expert = [], [0], []
    for e, g in enumerate(groups):
        padded = -(-len(g) // bs) * bs
        sorted_slots += g + [n] * (padded - len(g))
        block_expert += [e] * (padded // bs)
        offsets.append(offsets[-1] + padded)
    used = len(sorted_slots)
    sorted_slots += [n] * (rows - used)
    block_expert += [-1] * (rows // bs - len(block_expert))
    slot_rows = [0] * n
    for r, s in enumerate(sorted_slots):
        if s < n:
            slot_rows[s] = r
    return dict(sorted_slots=sorted_slots, block_expert=block_expert, num_rows=[used],
                expert_counts=[len(g) for g in groups], expert_offsets=offsets, slot_rows=slot_rows)


def _check_invariants(plan: RoutingPlan, ids: torch.Tensor, E: int, bs: int) -> None:
    n = ids.numel()
    rows = moe_align_max_rows(n, E, bs)
    assert isinstance(plan, RoutingPlan)
    shapes = dict(sorted_slots=(rows,), block_expert=(rows // bs,), num_rows=(1,), expert_counts=(E,),
                  expert_offsets=(E + 1,), slot_rows=(n,))
    for name, shape in shapes.items():
        t = getattr(plan, name)
        assert t.dtype == torch.int32 and tuple(t.shape) == shape and t.device == ids.device, name
    flat = ids.reshape(-1).long()
    ss, be = plan.sorted_slots.long(), plan.block_expert.long()
    counts, offs, used = plan.expert_counts.long(), plan.expert_offsets.long(), int(plan.num_rows)
    # every slot exactly once, everything else the sentinel n
    real = ss[ss < n]
    assert torch.equal(torch.sort(real).values, torch.arange(n)), "every slot exactly once"
    assert ((ss == n) | (ss < n)).all() and (ss >= 0).all()
    assert torch.equal(counts, torch.bincount(flat, minlength=E)) and counts.sum() == n
    # offsets: block-aligned exclusive cumsum of padded sizes, last = num_rows
    padded = (counts + bs - 1) // bs * bs
    assert offs[0] == 0 and torch.equal(offs[1:], torch.cumsum(padded, 0)) and offs[-1] == used
    assert (offs % bs == 0).all() and used <= rows
    for e in range(E):
        a, c, b = offs[e].item(), counts[e].item(), offs[e + 1].item()
        grp = ss[a:a + c]
        assert (flat[grp] == e).all(), f"expert {e}: group holds other experts' slots"
        assert (grp[1:] > grp[:-1]).all(), f"expert {e}: not stable"
        assert (ss[a + c:b] == n).all(), f"expert {e}: padding only at the group end"
        assert (be[a // bs:b // bs] == e).all(), f"expert {e}: block_expert"
    assert (ss[used:] == n).all() and (be[used // bs:] == -1).all()
    # inverse map
    assert torch.equal(ss[plan.slot_rows.long()], torch.arange(n))


PLAN_CASES = [
    # (T, k, E, block_size, kind)
    (1, 1, 4, 16, "random"),  # one slot
    (1, 2, 8, 4, "random"),
    (3, 2, 5, 4, "random"),
    (7, 8, 16, 16, "random"),
    (64, 2, 16, 64, "random"),
    (33, 8, 16, 8, "all_one_expert"),  # 264 slots, > one 256-slot chunk, on one expert
    (20, 4, 16, 4, "few_experts"),  # experts with no tokens
    (300, 8, 16, 64, "random"),  # 2400 slots: 10 chunks, several scan steps
    (40, 8, 256, 64, "random"),  # production E
    (5, 3, 7, 3, "random"),  # block_size not a power of two, E not a power of two
]


def _make_ids(T, k, E, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "all_one_expert":
        return torch.full((T, k), E - 3, dtype=torch.int64)
    if kind == "few_experts":
        return torch.tensor([2, 9, 11])[torch.randint(0, 3, (T, k), generator=g)]
    return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,k,E,bs,kind", PLAN_CASES)
def test_align_plan(backend, T, k, E, bs, kind):
    ids = _make_ids(T, k, E, kind, seed=T + E)
    plan = moe_align(ids, E, bs, backend=backend)
    _check_invariants(plan, ids, E, bs)
    naive = _naive_plan(ids, E, bs)
    for name, want in naive.items():
        assert getattr(plan, name).tolist() == want, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_align_int32_ids_and_noncontiguous(backend):
    ids = _make_ids(9, 4, 16, "random", seed=1)
    want = moe_align(ids, 16, 8, backend="torch")
    for variant in (ids.int(), ids.t().contiguous().t()):
        got = moe_align(variant, 16, 8, backend=backend)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("backend", BACKENDS)
def test_align_empty(backend):
    plan = moe_align(torch.zeros(0, 8, dtype=torch.int64), 16, 64, backend=backend)
    _check_invariants(plan, torch.zeros(0, 8, dtype=torch.int64), 16, 64)


@given(
    T=st.integers(1, 40), k=st.integers(1, 4), E=st.integers(1, 12), bs=st.sampled_from([1, 2, 4, 16]),
    data=st.data(),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_align_property_torch(T, k, E, bs, data):
    ids = torch.tensor(data.draw(st.lists(st.integers(0, E - 1), min_size=T * k, max_size=T * k))).view(T, k)
    plan = moe_align(ids, E, bs, backend="torch")
    _check_invariants(plan, ids, E, bs)


@given(
    T=st.integers(1, 40), k=st.integers(1, 4), E=st.integers(1, 12), bs=st.sampled_from([1, 4, 16]),
    data=st.data(),
)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_align_property_triton_equals_torch(T, k, E, bs, data):
    ids = torch.tensor(data.draw(st.lists(st.integers(0, E - 1), min_size=T * k, max_size=T * k))).view(T, k)
    got = moe_align(ids, E, bs, backend="triton")
    want = moe_align(ids, E, bs, backend="torch")
    for name, a, b in zip(RoutingPlan._fields, got, want):
        assert torch.equal(a, b), name


def test_align_bad_inputs():
    ids = torch.zeros(4, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="moe_align"):
        moe_align(ids.float(), 8, 16)
    with pytest.raises(ValueError, match="moe_align"):
        moe_align(ids.view(-1), 8, 16)
    with pytest.raises(ValueError, match="moe_align"):
        moe_align(ids, 0, 16)
    with pytest.raises(ValueError, match="moe_align"):
        moe_align(ids, 8, 0)
    with pytest.raises(TypeError, match="moe_align: block_size must be an integer"):
        moe_align(ids, 8, 16.0)


def test_max_rows_bound():
    assert moe_align_max_rows(0, 256, 64) == 0
    assert moe_align_max_rows(8, 256, 64) == 512  # decode: 8 experts, each one padded block
    assert moe_align_max_rows(32768, 256, 64) == 48896  # roundup(32768 + 256 * 63, 64)


# ---------------------------------------------------------------------------------------- no sync


def _sync_free(fn, *args) -> None:
    """Run `fn` on meta tensors: they hold no data, so every host read (.item(), .tolist(),
    bool(), nonzero, bincount, unique, boolean-mask indexing, repeat_interleave without
    output_size) raises."""
    return fn(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])


@pytest.mark.parametrize(
    "bad",
    [
        lambda ids: ids.sum().item(),
        lambda ids: ids.tolist(),
        lambda ids: torch.nonzero(ids),
        lambda ids: torch.bincount(ids.view(-1)),
        lambda ids: ids[ids > 1],
        lambda ids: torch.unique(ids),
        lambda ids: bool(ids.max() > 0),
    ],
    ids=["item", "tolist", "nonzero", "bincount", "mask_index", "unique", "bool"],
)
def test_sync_detector_catches_a_deliberate_sync(bad):
    with pytest.raises((RuntimeError, NotImplementedError)):
        _sync_free(bad, torch.zeros(4, 2, dtype=torch.int64))


def test_torch_backends_do_not_sync():
    T, E, H, k, bs = 9, 16, 32, 4, 8
    ids = _make_ids(T, k, E, "random")
    plan = _sync_free(lambda i: moe_align(i, E, bs, backend="torch"), ids)
    rows = moe_align_max_rows(T * k, E, bs)
    assert [tuple(t.shape) for t in plan] == [(rows,), (rows // bs,), (1,), (E,), (E + 1,), (T * k,)]
    hidden, weight = _router_inputs(T, E, H, torch.bfloat16)
    for renorm in (True, False):
        out = _sync_free(lambda h, w: moe_route(h, w, k, renormalize=renorm, backend="torch"), hidden, weight)
        assert [tuple(t.shape) for t in out] == [(T, E), (T, k), (T, k)]


# ------------------------------------------------------------------ integral arguments, NaN input


@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
def test_top_k_takes_any_integral_number_but_not_a_bool(backend):
    import numpy as np

    hidden, weight = _router_inputs(5, 8, 16, torch.float32)
    want = moe_route(hidden, weight, 2, backend=backend)
    for k in (np.int64(2), np.int32(2), torch.tensor(2)):
        got = moe_route(hidden, weight, k, backend=backend)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), type(k)
    for bad, error in ((True, TypeError), (False, TypeError), (2.0, TypeError), (np.float64(2), TypeError),
                       (0, ValueError), (9, ValueError), (-1, ValueError)):
        with pytest.raises(error, match="moe_route: top_k must be an integer"):
            moe_route(hidden, weight, bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_align_takes_integral_numbers_but_not_bools(backend):
    import numpy as np

    ids = torch.tensor([[0, 3], [2, 3], [1, 0]])
    want = moe_align(ids, 4, 4, backend=backend)
    got = moe_align(ids, np.int64(4), np.int32(4), backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(TypeError, match="moe_align: num_experts must be an integer, got the bool"):
        moe_align(ids, True, 4, backend=backend)
    with pytest.raises(TypeError, match="moe_align: block_size must be an integer, got the bool"):
        moe_align(ids, 4, True, backend=backend)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_nan_and_inf_hidden_states_give_nan_weights_and_valid_ids(backend, dtype, renormalize):
    """The documented rule (ops.moe_route): a token with a NaN/Inf among its logits gets NaN weights
    and valid ids (0..k-1 on torch/triton: an all-NaN row is treated as all-tied); other tokens
    are exactly as without the bad ones."""
    T, E, H, k = 6, 12, 32, 3
    hidden, weight = _router_inputs(T, E, H, dtype)
    clean = moe_route(hidden, weight, k, renormalize=renormalize, backend=backend)
    bad_rows = [1, 3, 4]
    hidden = hidden.clone()
    hidden[1, 5] = float("nan")
    hidden[3, 0] = float("inf")
    hidden[4] = float("-inf")
    logits, w, ids = moe_route(hidden, weight, k, renormalize=renormalize, backend=backend)
    assert ids.dtype == torch.int64 and ((ids >= 0) & (ids < E)).all(), ids
    assert torch.isnan(w[bad_rows]).all()
    good = [t for t in range(T) if t not in bad_rows]
    assert torch.equal(ids[good], clean[2][good]) and torch.equal(w[good], clean[1][good])
    for t in bad_rows:
        assert len(set(ids[t].tolist())) == k  # k distinct experts
        if backend != "reference":
            assert ids[t].tolist() == list(range(k))


def test_triton_align_leaves_out_of_range_ids_out_of_the_plan():
    """On a device the ids are not validated (a sync): the plan kernels must never read offsets or
    write rows out of bounds for an id outside [0, E). Such slots are left out of the plan
    (slot_rows = -1); the rest of the plan is the plan of the valid slots."""
    pytest.importorskip("triton")
    from interns2_fast.kernels import moe_routing as kr

    E, bs = 6, 4
    ids = torch.tensor([[0, 7], [-1, 2], [2, 6], [5, 2**40], [1, 0], [3, -2**35]], dtype=torch.int64)
    n = ids.numel()
    valid = ((ids >= 0) & (ids < E)).view(-1)
    plan = kr.moe_align(ids, E, bs)
    flat = ids.view(-1)
    assert plan.expert_counts.tolist() == torch.bincount(flat[valid], minlength=E).tolist()
    assert (plan.slot_rows[~valid] == -1).all()
    rows = plan.slot_rows[valid].long()
    assert torch.equal(plan.sorted_slots[rows].long(), torch.arange(n)[valid])
    used = plan.sorted_slots[: int(plan.num_rows)]
    placed = used[used != n]
    assert sorted(placed.tolist()) == torch.arange(n)[valid].tolist()  # each valid slot once, no invalid one
    assert (plan.sorted_slots[int(plan.num_rows):] == n).all()
    for s in torch.arange(n)[valid].tolist():  # each valid slot sits in its expert's group
        e = int(flat[s])
        assert int(plan.expert_offsets[e]) <= int(plan.slot_rows[s]) < int(plan.expert_offsets[e + 1])


def test_align_rejects_out_of_range_ids_in_host_memory():
    for bad in (torch.tensor([[0, 4]]), torch.tensor([[-1, 0]])):
        for backend in BACKENDS:
            with pytest.raises(ValueError, match=r"moe_align: topk_ids must lie in \[0, 4\)"):
                moe_align(bad, 4, 16, backend=backend)
