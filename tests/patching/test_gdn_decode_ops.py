"""The Gated DeltaNet layer's decode step on the Triton path: what it launches, counted.

One decode token of a patched linear-attention layer (backend="triton", the Triton interpreter on
CPU tensors) must run: ONE input-projection GEMM (the fused buffer), the conv update, the recurrent
step (gating + L2 norm + delta rule) and the gated norm as at most 3 Triton launches, and out_proj —
no other ATen compute op in between (no casts, copies, `.contiguous()`). qwen3_next's interleaved
layout keeps one `cat` and six reshape copies (its q/k/v/z/b/a come per key-head group; the layer's
own `fix_query_key_value_ordering` and the conv's q|k|v channel order need them: not removed here).
Counted with benchmarks/counts.py's own classifier (views and bare allocations are not device work).
"""
from __future__ import annotations

import collections
import importlib.util
import pathlib
import sys

import pytest
import torch

import interns2_fast
from interns2_fast import device

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def counts():
    name = "interns2_bench_counts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "counts.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("family, glue", [("qwen3_5_moe", {}), ("interns2_remote", {}),
                                          ("qwen3_next", {"aten::cat": 1, "aten::clone": 6})])
def test_gdn_decode_step_is_one_gemm_three_launches_and_out_proj(family, glue, counts, model_factory, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if device.triton_flavour() is None:
        pytest.skip("triton missing")
    from interns2_fast.bench import cache_keyword, output_cache

    model = model_factory(family)
    report = interns2_fast.patch(model, backend="triton", static_decode=False)
    assert all(p.backend == "triton" for p in report.patched if p.op in ("gdn", "conv", "norm")), report
    gdn = next(m for m in model.modules() if hasattr(m, "A_log") and hasattr(m, "conv1d"))
    handles, ranges = [], []

    def pre(m, a):
        rf = torch.profiler.record_function("layer::gdn")
        rf.__enter__()
        ranges.append(rf)

    def post(m, a, o):
        ranges.pop().__exit__(None, None, None)

    handles += [gdn.register_forward_pre_hook(pre), gdn.register_forward_hook(post)]
    kw = cache_keyword(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
            cache, tok = output_cache(out), out.logits[:, -1:].argmax(-1)
            with counts.count_triton_launches(), torch.profiler.profile() as prof:
                model(input_ids=tok, use_cache=True, **{kw: cache})
    finally:
        for h in handles:
            h.remove()
    cls = counts.classify_events(prof.events())
    aten = collections.Counter({n: c for (s, n), c in cls.compute_ops.items() if s == "layer::gdn"})
    launches = collections.Counter({n: c for (s, n), c in cls.launches.items() if s == "layer::gdn"})
    if callable(getattr(cache, "increase_count", None)):
        glue = {**glue, "aten::add_": 1}  # 5.25's cache counts the in-place decode token (its get_seq_length)
    assert aten == collections.Counter({"aten::linear": 2, **glue}), aten  # fused in-projection + out_proj
    assert sum(launches.values()) <= 3, launches
    assert set(launches) == {"_conv1d_update_kernel", "gdn_recurrent_kernel", "_rms_norm_gated_kernel"}, launches
    assert not any(s == "layer::gdn" for (s, _) in cls.syncs), cls.syncs
