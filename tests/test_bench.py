"""The benchmark tooling: table / ratio / plot code on a synthetic pytest-benchmark JSON, the launch
and sync counter (benchmarks/counts.py) on the scaled-down default model, and the CLI wiring.

No timing is asserted here: these tests check the bookkeeping, not the speed."""
from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest
import torch

from interns2_fast import bench

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def counts():
    return _load(ROOT / "benchmarks" / "counts.py", "interns2_bench_counts")


def _bench_entry(group, backend, median, shape, op, **extra):
    return {"group": group, "name": f"test_x[{backend}]", "fullname": f"bench_x.py::test_x[{backend}]",
            "stats": {"median": median, "min": median, "max": median, "rounds": 3, "data": [median] * 3},
            "extra_info": dict(op=op, shape=shape, backend=backend, device="cpu", dtype="float32", **extra)}


@pytest.fixture
def synthetic_json(tmp_path):
    entries = []
    for T, ref, torch_t in ((512, 2.0, 1.0), (2048, 8.0, 2.0)):
        shape = f"B=1 T={T} H=32"
        entries.append(_bench_entry(f"gdn_chunk {shape}", "reference", ref, shape, "gdn_chunk"))
        entries.append(_bench_entry(f"gdn_chunk {shape}", "torch", torch_t, shape, "gdn_chunk"))
    for B, ref, patched in ((1, 0.4, 0.2), (8, 0.8, 0.2)):
        shape = f"full-width 4 layers B={B} context=16"
        entries.append(_bench_entry(f"e2e decode {shape}", "reference", ref, shape, "e2e decode",
                                    batch=B, tokens_per_s=B * 4 / ref, peak_mem_bytes=3 * 2**20))
        entries.append(_bench_entry(f"e2e decode {shape}", "patched", patched, shape, "e2e decode",
                                    batch=B, tokens_per_s=B * 4 / patched))
    entries.append(_bench_entry("conv1d T512", "torch", 1e-4, "T512", "conv1d"))  # no reference in group
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": entries}))
    return path


def test_rows_and_ratios(synthetic_json):
    rows = bench.make_rows(bench.load_benchmarks([synthetic_json]))
    assert len(rows) == 9
    by = {(r.group, r.backend): r for r in rows}
    assert by[("gdn_chunk B=1 T=512 H=32", "reference")].ratio == pytest.approx(1.0)
    assert by[("gdn_chunk B=1 T=512 H=32", "torch")].ratio == pytest.approx(2.0)
    assert by[("gdn_chunk B=1 T=2048 H=32", "torch")].ratio == pytest.approx(4.0)
    assert by[("e2e decode full-width 4 layers B=8 context=16", "patched")].ratio == pytest.approx(4.0)
    assert by[("conv1d T512", "torch")].ratio is None
    # the reference comes first within its group
    assert rows[0].backend == "reference"


def test_markdown_table(synthetic_json):
    table = bench.markdown_table(bench.make_rows(bench.load_benchmarks([synthetic_json])))
    lines = table.splitlines()
    assert lines[0].startswith("| case | shape | backend")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "4.00×" in table and "1.00× (baseline)" in table and "| — |" in table
    assert "tok/s" in table and "peak 3.0 MiB" in table
    assert "2 s" in table and "100 µs" in table


@pytest.mark.parametrize("shape, extra, expected", [
    ("B=1 T=512 H=32", {}, {"B": 1, "T": 512}),
    ("B1 T2048", {}, {"B": 1, "T": 2048}),
    ("full-width 4 layers", {"seq_len": 8192, "batch": 2}, {"B": 2, "T": 8192}),
    ("H=32 K=128", {}, {}),
    ("TOPK=8 BT=64", {}, {}),
])
def test_axis_values(shape, extra, expected):
    row = bench.Row(group="g", op="op", shape=shape, backend="torch", median_s=1.0, ratio=1.0, extra=extra)
    assert bench.axis_values(row) == expected


def test_speedup_series_and_plot(synthetic_json, tmp_path):
    rows = bench.make_rows(bench.load_benchmarks([synthetic_json]))
    series = bench.speedup_series(rows)
    assert series["T"][("gdn_chunk", "torch")] == [(512, pytest.approx(2.0)), (2048, pytest.approx(4.0))]
    assert series["B"][("e2e decode", "patched")] == [(1, pytest.approx(2.0)), (8, pytest.approx(4.0))]
    assert not any(key[1] == "reference" for axis in series.values() for key in axis)
    png = tmp_path / "speedup.png"
    assert bench.plot_speedup(rows, png, title="synthetic")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not bench.plot_speedup([], tmp_path / "empty.png")


def test_merge_benchmark_json(synthetic_json, tmp_path):
    dest = tmp_path / "merged.json"
    bench.merge_benchmark_json([synthetic_json, tmp_path / "missing.json", synthetic_json], dest)
    merged = json.loads(dest.read_text())
    assert len(merged["benchmarks"]) == 18 and "machine_info" in merged
    assert all("data" not in b["stats"] and "median" in b["stats"] for b in merged["benchmarks"])


def test_pytest_command_and_cli_parser(tmp_path):
    cmd = bench.pytest_command([tmp_path / "ops"], tmp_path / "b.json", quick=True)
    assert f"--benchmark-json={tmp_path / 'b.json'}" in cmd and "--benchmark-only" in cmd
    assert "--benchmark-min-rounds=3" in cmd
    from interns2_fast.cli import build_parser

    args = build_parser().parse_args(["bench", "--suite", "ops", "--quick", "--out", str(tmp_path)])
    assert (args.command, args.suite, args.quick, args.out) == ("bench", "ops", True, str(tmp_path))
    with pytest.raises(ValueError, match="unknown suite"):
        bench.run("nope")


def test_synced_benchmark_forwards_and_syncs(monkeypatch):
    conftest = _load(ROOT / "benchmarks" / "conftest.py", "interns2_bench_conftest")
    synced_devices = []
    monkeypatch.setattr(conftest, "synchronize", lambda dev: synced_devices.append(dev))

    class Inner:
        group = None
        extra_info: dict = {}

        def __call__(self, fn, *args):
            return fn(*args)

        def pedantic(self, fn, args=(), rounds=1):
            return [fn(*args) for _ in range(rounds)][-1]

    inner = Inner()
    wrapped = conftest.SyncedBenchmark(inner, torch.device("cuda"))
    wrapped.group = "op shape"
    assert inner.group == "op shape" and wrapped.extra_info is inner.extra_info
    assert wrapped(lambda x: x + 1, 1) == 2
    assert wrapped.pedantic(lambda x: x * 2, args=(3,), rounds=2) == 6
    assert len(synced_devices) == 2 + 1 + 2  # one before each timed call set, one after each call


def test_triton_launch_counter(counts):
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def _add_one(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1.0, mask=mask)

    from torch.profiler import profile, record_function

    x = torch.zeros(8)
    with counts.count_triton_launches() as launches, profile() as prof:
        _add_one[(1,)](x, 8, BLOCK=8)
        with record_function("layer::0::linear_attention"):
            _add_one[(1,)](x, 8, BLOCK=8)
    assert dict(launches) == {"_add_one": 2}
    cls = counts.classify_events(prof.events())
    assert dict(cls.launches) == {("outside", "_add_one"): 1, ("layer::0::linear_attention", "_add_one"): 1}
    assert not cls.compute_ops  # the interpreter's host-side copies belong to the launch
    assert torch.equal(x, torch.full((8,), 2.0))
    _add_one[(1,)](x, 8, BLOCK=8)  # not counted once the block is left
    assert sum(launches.values()) == 2


def test_classify_views_and_syncs(counts):
    from torch.profiler import profile

    x, w = torch.randn(4, 6), torch.randn(3, 6)
    with profile() as prof:
        y = x.view(6, 4).t().contiguous()   # views + one copy
        z = torch.nn.functional.linear(x, w)  # one matmul
        z = torch.nn.functional.dropout(z, 0.5, training=False)  # nothing
        _ = (z > 0).nonzero()  # compare (its wrapped-scalar copy is not a separate op) + nonzero (a sync)
        _ = float(y.sum().item())  # sum + item (a sync, not a compute op)
    cls = counts.classify_events(prof.events())
    names = {name: n for (_, name), n in cls.compute_ops.items()}
    assert names == {"aten::contiguous": 1, "aten::linear": 1, "aten::gt": 1, "aten::nonzero": 1, "aten::sum": 1}
    syncs = {name: n for (_, name), n in cls.syncs.items()}
    assert syncs == {"aten::nonzero": 1, "aten::item": 1}


def test_counts_on_default_model(counts):
    from interns2_fast import models

    from interns2_fast.bench import _set_experts_implementation

    model = models.build_causal_lm("qwen3_5_moe", models.default_config(4))
    # What the installed torch/transformers pick: grouped_mm on torch >= 2.9, else eager. The variant
    # must leave it as it found it; give it a non-eager one to restore where the default is eager.
    if getattr(model.config, "_experts_implementation", None) in (None, "eager"):
        _set_experts_implementation(model, "batched_mm")
    before = model.config._experts_implementation
    assert before != "eager"
    results = counts.run_counts(model, ["reference-eager"], steps=1, prompt_len=4)
    (r,) = results
    assert r.error is None, r.error
    assert r.num_layers == 4 and r.launches == 0 and r.launches_per_layer == 0
    assert set(r.by_layer_type) == {"linear_attention", "full_attention"}
    # the eager experts loop: each decode token hits 8 experts per layer, with host syncs
    assert r.ops_per_layer > 50 and r.syncs_per_layer >= 8
    assert r.ops_per_layer == pytest.approx(
        sum(v["ops_per_layer"] * v["layers"] for v in r.by_layer_type.values()) / 4)
    assert model.config._experts_implementation == before  # the variant was undone
    table = counts.markdown_table(results)
    assert table.count("\n") == 2 and "reference-eager" in table


def test_counts_patched_variant(counts):
    try:
        from interns2_fast.patching import patch  # noqa: F401
    except ImportError:
        pytest.skip("interns2_fast.patch is not in this checkout yet")
    from interns2_fast import models

    model = models.build_causal_lm("qwen3_5_moe", models.default_config(4))
    (r,) = counts.run_counts(model, ["patched"], steps=1, prompt_len=4)
    assert r.error is None, r.error
    assert r.ops_per_layer > 0 and r.patch


def test_gpu_script_syntax_and_pack(synthetic_json, tmp_path):
    """scripts/gpu_bench.sh parses, and its driver's pack step (no GPU needed) writes a stage's archive
    and merges the bench stages' JSON into $OUT (the stages themselves: tests/test_gpu_bench.py)."""
    import shutil
    import subprocess

    script = ROOT / "scripts" / "gpu_bench.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    driver = _load(ROOT / "scripts" / "gpu_bench.py", "interns2_gpu_bench_for_test_bench")
    run = driver.Run(out=tmp_path / "out", run_dir=tmp_path / "run", wheels=tmp_path / "w", budget=600,
                     dry_run=False, caps=dict(driver.CAPS), quick=False)
    (run.dir / "ops").mkdir()
    shutil.copy(synthetic_json, run.dir / "ops" / "benchmarks.json")
    run.results["ops"] = driver.StageResult("ops", status="ok")
    run.pack("ops")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["benchmarks.json", "ops.tar.gz", "status.json", "summary.md"]
    assert len(json.loads((out / "benchmarks.json").read_text())["benchmarks"]) == 9
