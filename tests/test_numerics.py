"""numerics: compare_tensors tolerances, check() input forms and report content."""
import pytest
import torch

import interns2_fast
from interns2_fast import models, numerics
from interns2_fast import ops
from interns2_fast.ops._registry import Backend


@pytest.fixture(scope="module")
def model():
    return models.build_causal_lm("qwen3_5_moe")


def test_compare_tensors_tolerances():
    ref = torch.randn(64, 64)
    assert numerics.compare_tensors(ref + 1e-6, ref).ok
    assert not numerics.compare_tensors(ref * 1.1, ref).ok
    bf = ref.bfloat16()
    assert numerics.compare_tensors((ref * (1 + 4e-3)).bfloat16(), bf).ok
    assert not numerics.compare_tensors(bf * 1.2, bf).ok
    bad = ref.clone()
    bad[0, 0] = float("nan")
    assert not numerics.compare_tensors(bad, ref).ok
    c = numerics.compare_tensors(ref + 0.5, ref)
    assert c.max_abs == pytest.approx(0.5) and c.dtype == "float32"


def test_check_input_forms_and_temporary_patch(model):
    prompts = ["What is 2 + 3? Answer with just the number.", "hi"]
    r1 = interns2_fast.check(model, prompts)  # no tokenizer: UTF-8 bytes
    assert not interns2_fast.is_patched(model)  # patched for the call only
    assert [p.num_tokens for p in r1.prompts] == [len(p.encode()) for p in prompts]
    ids = torch.tensor([numerics.byte_token_ids(prompts[0], 512)])
    r2 = interns2_fast.check(model, ids, top_k=5)
    assert r2.prompts[0].top[0].id == r1.prompts[0].top[0].id and len(r2.prompts[0].top) == 5
    padded = {"input_ids": torch.tensor([[0, 0, 72, 105], [5, 6, 7, 8]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])}
    r3 = interns2_fast.check(model, padded)
    assert [p.num_tokens for p in r3.prompts] == [2, 4]
    for r in (r1, r2, r3):
        assert r.ok and r.top1_agreement == 1.0 and r.max_dlogit < 1e-3 and r.kl_max < 1e-8
    md = r1.to_markdown()
    assert md.count("| rank | token | id | reference p | patched p | Δp |") == 2
    assert "top-1 agreement 100.00%" in md and "float32 on cpu" in md
    row = r1.prompts[0].top[0]
    assert row.rank == 1 and 0 < row.p_reference < 1 and row.dp == pytest.approx(row.p_patched - row.p_reference)


def test_check_sees_a_broken_kernel(model, monkeypatch):
    good = ops.OPS["rms_norm_gated"].backends["torch"].impl
    monkeypatch.setitem(ops.OPS["rms_norm_gated"].backends, "torch", Backend("torch", lambda **kw: good(**kw) * 3.0))
    interns2_fast.patch(model, backend="torch")
    try:
        report = interns2_fast.check(model, ["What is 2 + 3?"])
    finally:
        interns2_fast.unpatch(model)
    assert report.max_dlogit > 1e-2 and report.kl_max > 1e-6
    assert report.backends.count("torch") >= 1
