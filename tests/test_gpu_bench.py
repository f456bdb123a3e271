"""scripts/gpu_bench.sh (driver: scripts/gpu_bench.py), the prepared run for an offline NVIDIA machine.

No GPU here: every stage is dry-run on the CPU (`--dry-run`: tiny sizes, Triton kernels through the
interpreter) and checked for the files it writes under $OUT and the skip notes it gives. The wheel
planning (which carried wheels to install, which to skip and why) and the time plan (caps, budget,
the 15-minute session) are tested directly. No timing is asserted: only the bookkeeping.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_driver():
    name = "interns2_gpu_bench_driver"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gb = _load_driver()


def make_wheel(folder: pathlib.Path, name: str, version: str, requires=(), module_source: str = "X = 1\n",
               module: str | None = None) -> pathlib.Path:
    """A minimal, installable pure-Python wheel: one module, METADATA with Requires-Dist."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    module = module or dist
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{module}.py": module_source, f"{info}/METADATA": meta,
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{info}/top_level.txt": module + "\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def _installed(versions: dict):
    return lambda name: versions.get(name)


# --- wheel planning -------------------------------------------------------------------------------

TRANSFORMERS_520_REQUIRES = ["huggingface-hub<2.0,>=1.3.0", "numpy>=1.17", "packaging>=20.0", "pyyaml>=5.1",
                             "regex!=2019.12.17", "tokenizers<=0.23.0,>=0.22.0", "typer-slim", "safetensors>=0.4.3",
                             "tqdm>=4.27", "torch>=2.2; extra == 'torch'"]
IMAGE = {"huggingface-hub": "1.33.0", "numpy": "2.5.2", "packaging": "25.0", "pyyaml": "6.0.2", "regex": "2025.1.1",
         "tokenizers": "0.23.2", "safetensors": "0.8.0", "tqdm": "4.67.1", "torch": "2.11.0"}


def test_transformers_520_skipped_when_the_image_has_tokenizers_0232(tmp_path):
    w = gb.read_wheel(make_wheel(tmp_path, "transformers", "5.2.0", TRANSFORMERS_520_REQUIRES, module="transformers"))
    gb.plan_wheels([w], installed=_installed(IMAGE))
    assert not w.install
    assert "tokenizers<=0.23.0,>=0.22.0" in w.reason and "0.23.2" in w.reason and "the image has" in w.reason
    notes = gb.wheel_notes(tmp_path, [w])
    assert any(n.startswith("wheel transformers-5.2.0") and "not installed" in n for n in notes)


def test_transformers_520_installed_with_a_carried_tokenizers(tmp_path):
    wheels = [gb.read_wheel(make_wheel(tmp_path, "transformers", "5.2.0", TRANSFORMERS_520_REQUIRES)),
              gb.read_wheel(make_wheel(tmp_path, "tokenizers", "0.22.2", ["huggingface-hub<2.0,>=0.16.4"]))]
    gb.plan_wheels(wheels, installed=_installed(IMAGE))
    assert [w.install for w in wheels] == [True, True], [w.reason for w in wheels]


def test_transformers_520_installed_when_the_image_tokenizers_fits(tmp_path):
    w = gb.read_wheel(make_wheel(tmp_path, "transformers", "5.2.0", TRANSFORMERS_520_REQUIRES))
    gb.plan_wheels([w], installed=_installed(dict(IMAGE, tokenizers="0.22.1")))
    assert w.install, w.reason
    # typer-slim is provided by nothing: noted, not a reason to skip (the import probe decides)
    assert any("typer-slim" in n and "import probe" in n for n in w.notes)


def test_skipping_one_wheel_strands_the_wheel_that_needed_it(tmp_path):
    # b 2.0 needs c<1 (image: c 1.5) -> skipped; then a (needs b>=2) sees the image's b 1.0 -> skipped
    a = gb.read_wheel(make_wheel(tmp_path, "pkg-a", "1.0", ["pkg-b>=2"]))
    b = gb.read_wheel(make_wheel(tmp_path, "pkg-b", "2.0", ["pkg-c<1"]))
    gb.plan_wheels([a, b], installed=_installed({"pkg-b": "1.0", "pkg-c": "1.5"}))
    assert not b.install and "pkg-c<1" in b.reason and "1.5" in b.reason
    assert not a.install and "pkg-b>=2" in a.reason and "pkg-b 1.0" in a.reason


def test_extras_and_other_platform_markers_are_ignored(tmp_path):
    w = gb.read_wheel(make_wheel(tmp_path, "pkg-x", "1.0", ["torch>=99; extra == 'dev'",
                                                            "numpy<1; python_version < '3'"]))
    gb.plan_wheels([w], installed=_installed({"torch": "2.11.0", "numpy": "2.0"}))
    assert w.install and not w.notes


def test_two_versions_of_one_package_keep_one(tmp_path):
    ws = [gb.read_wheel(make_wheel(tmp_path, "pkg-y", v)) for v in ("1.0", "1.1")]
    gb.plan_wheels(ws, installed=_installed({}))
    assert sum(w.install for w in ws) == 1
    assert "one version only" in next(w.reason for w in ws if not w.install)


def test_alternatives_and_sdists_are_explained(tmp_path):
    (tmp_path / "causal_conv1d-1.7.0.tar.gz").write_bytes(b"")
    notes = gb.wheel_notes(tmp_path, [])
    assert any("causal_conv1d-1.7.0.tar.gz not built" in n for n in notes)
    assert any(n.startswith("causal-conv1d skipped: no wheel carried") and "nvcc" in n for n in notes)
    assert any(n.startswith("fla skipped") for n in notes)
    carried = [gb.read_wheel(make_wheel(tmp_path, "causal-conv1d", "1.7.0")),
               gb.read_wheel(make_wheel(tmp_path, "fla-core", "0.6.0"))]
    assert all(w.alternative for w in carried)
    notes = gb.wheel_notes(tmp_path, carried)
    assert not any(n.startswith(("causal-conv1d skipped", "fla skipped")) for n in notes)


def test_read_wheel_top_level_without_top_level_txt(tmp_path):
    path = tmp_path / "pkg_z-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg_z/__init__.py", "")
        z.writestr("single.py", "")
        z.writestr("pkg_z-1.0.dist-info/METADATA", "Name: pkg-z\nVersion: 1.0\n")
    w = gb.read_wheel(path)
    assert (w.name, w.version, sorted(w.top_level)) == ("pkg-z", "1.0", ["pkg_z", "single"])


# --- the time plan ----------------------------------------------------------------------------------

def test_each_planned_command_fits_its_budget_and_the_session():
    part1, part2 = gb.expand(["part1"]), gb.expand(["part2"])
    assert part1 == ["setup", "tests", "ops"] and part2 == ["setup", "e2e", "counts"]
    for stages in (part1, part2):
        assert gb.plan_seconds(stages) <= gb.DEFAULT_BUDGET, stages
    assert gb.DEFAULT_BUDGET + 60 <= 8 * 60  # the run tool's timeout_s (budget + slack) stays under 8 minutes
    # two commands at their worst plus a machine's start fit the 15 minutes of device time
    assert 2 * gb.DEFAULT_BUDGET + gb.MACHINE_START_SECONDS <= gb.SESSION_SECONDS
    assert all(gb.MIN_SECONDS[s] <= gb.CAPS[s] for s in gb.STAGES)
    assert gb.GRACE + 5 < gb.RESERVE  # an interrupted last stage still has time to be packed


def test_stage_selection_errors():
    assert gb.expand(["all"]) == ["setup", "tests", "ops", "e2e", "counts"]
    with pytest.raises(SystemExit, match="unknown stage"):
        gb.expand(["bogus"])
    with pytest.raises(SystemExit, match="more than the 8 a device command brings back"):
        gb.expand(["all", "e2e-fla"])
    with pytest.raises(SystemExit, match="STAGE=SECONDS"):
        gb.parse_caps("ops=fast")
    assert gb.parse_caps("ops=5, e2e=7")["ops"] == 5


def test_a_stage_that_no_longer_fits_is_skipped_with_the_reason(tmp_path):
    run = gb.Run(out=tmp_path / "out", run_dir=tmp_path / "run", wheels=tmp_path / "w", budget=gb.RESERVE + 10,
                 dry_run=True, caps=dict(gb.CAPS), quick=False)
    timeout, reason = run.stage_timeout("e2e")
    assert timeout == 0 and "budget" in reason and "next command" in reason
    run = gb.Run(out=tmp_path / "out", run_dir=tmp_path / "run", wheels=tmp_path / "w", budget=1000,
                 dry_run=True, caps=dict(gb.CAPS, ops=7), quick=False)
    assert run.stage_timeout("ops") == (7, None)


def test_pytest_outcomes_from_plain_xdist_and_interrupted_logs():
    log = "\n".join([
        "tests/ops/test_a.py::test_x[1] PASSED                                   [ 10%]",
        "[gw1] [ 20%] FAILED tests/ops/test_a.py::test_y[cuda]",
        "tests/ops/test_b.py::test_z SKIPPED (needs npu)                         [ 30%]",
        "tests/ops/test_b.py::test_w ERROR                                       [ 40%]",
        "FAILED tests/ops/test_a.py::test_y[cuda] - AssertionError",  # the short summary: not counted again
        "!!!!!!!!!!!!!!!!!!!! KeyboardInterrupt !!!!!!!!!!!!!!!!!!!!",
    ])
    counts, failed = gb.pytest_outcomes(log)
    assert counts == {"passed": 1, "failed": 1, "skipped": 1, "error": 1}
    assert failed == ["tests/ops/test_a.py::test_y[cuda]", "tests/ops/test_b.py::test_w"]
    reasons = gb.skip_reasons("SKIPPED [3] /x/interns2_fast/bench.py:112: fla: needs CUDA and the fla package\n"
                              "SKIPPED [1] bench.py:9: fla: needs CUDA and the fla package\n")
    assert reasons == ["4 case(s): fla: needs CUDA and the fla package"]


def test_gpu_mode_commands_environments_and_timeouts(tmp_path, monkeypatch):
    """The commands each stage would run on the GPU machine (recorded, not run): compiled Triton on
    CUDA, the alternatives visible where they are compared and hidden from e2e, each stage's timeout."""
    calls = []

    def fake_run(cmd, *, env, cwd, log_path, timeout):
        calls.append(dict(cmd=[str(c) for c in cmd], env=env, timeout=timeout))
        log_path.write_text("tests/ops/test_a.py::test_x PASSED [100%]\n")
        return 0, False, 0.1

    monkeypatch.setattr(gb, "run_command", fake_run)
    run = gb.Run(out=tmp_path / "out", run_dir=tmp_path / "run", wheels=tmp_path / "w", budget=10_000,
                 dry_run=False, caps=dict(gb.CAPS), quick=False)
    run.results["setup"] = gb.StageResult("setup", status="ok")
    run.env_info = {"interns2_fast_ok": True, "cuda_available": True, "gpu": "NVIDIA H200"}
    for stage in ("tests", "ops", "e2e", "counts"):
        r = run.run_stage(stage)
        assert r.status == "ok", (stage, r)
    by_stage = dict(zip(("tests", "ops", "e2e", "counts"), calls))
    for stage, call in by_stage.items():
        assert call["timeout"] == gb.CAPS[stage]
        paths = call["env"]["PYTHONPATH"].split(os.pathsep)
        assert paths[0] == str(run.pkg) and str(run.site) in paths
        assert (str(run.alt) in paths) == (stage in ("tests", "ops")), stage  # e2e / counts: the pure fallback
        assert call["env"]["PYTHONSAFEPATH"] == "1" and call["env"]["INTERNS2_BENCH_DEVICE"] == "cuda"
        assert call["env"]["INTERNS2_BENCH_DTYPE"] == "bfloat16" and "INTERNS2_BENCH_QUICK" not in call["env"]
    tests = by_stage["tests"]
    assert tests["env"]["TRITON_INTERPRET"] == "0" and "-p" in tests["cmd"] and "cuda_default_device" in tests["cmd"]
    assert "tests/ops" in tests["cmd"]
    for stage in ("ops", "e2e", "counts"):
        assert "TRITON_INTERPRET" not in by_stage[stage]["env"]  # compiled kernels, never the interpreter
    ops = by_stage["ops"]
    assert str(gb.ROOT / "benchmarks/ops") in ops["cmd"] and "--benchmark-only" in ops["cmd"]
    assert "partial_json" in ops["cmd"] and ops["env"]["INTERNS2_BENCH_PARTIAL_JSON"].endswith("benchmarks-partial.json")
    e2e = by_stage["e2e"]["env"]
    assert e2e["INTERNS2_BENCH_PREFILL_T"] == "512,2048,8192" and "INTERNS2_BENCH_E2E_MODEL" not in e2e
    counts = by_stage["counts"]["cmd"]
    assert counts[1].endswith("benchmarks/counts.py")
    assert counts[counts.index("--model") + 1] == "full" and counts[counts.index("--device") + 1] == "cuda"
    assert counts[counts.index("--dtype") + 1] == "bfloat16"
    # what the run would bring back so far
    assert {"tests.tar.gz", "ops.tar.gz", "e2e.tar.gz", "counts.tar.gz", "summary.md", "status.json"} <= {
        f.name for f in (tmp_path / "out").iterdir()}


# --- dry runs of the script (subprocesses) ------------------------------------------------------------

def _script(args, *, out, run_dir, wheels, extra_env=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(OUT=str(out), GPU_BENCH_RUN=str(run_dir), WHEELS=str(wheels), PYTHON=sys.executable,
               **(extra_env or {}))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").exists() else None
    return proc, status


def _members(archive: pathlib.Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return set(tar.getnames())


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of every default stage, with carried wheels: one that installs, one whose
    requirement conflicts with the installed tokenizers, and a causal-conv1d source distribution."""
    base = tmp_path_factory.mktemp("gpu_bench")
    wheels = base / "wheels"
    make_wheel(wheels, "i2f-fake-ok", "1.0", ["tokenizers>=0.1"], module_source="OK = 42\n")
    make_wheel(wheels, "i2f-fake-conflict", "1.0", ["tokenizers<0.0.1"])
    (wheels / "causal_conv1d-1.7.0.tar.gz").write_bytes(b"")
    proc, status = _script(["--dry-run", "all"], out=base / "out", run_dir=base / "run", wheels=wheels)
    return dict(base=base, out=base / "out", run=base / "run", wheels=wheels, proc=proc, status=status)


def test_dry_run_every_stage_ran_and_wrote_its_files(dry_run):
    proc, status, out = dry_run["proc"], dry_run["status"], dry_run["out"]
    assert status is not None, proc.stdout + proc.stderr
    stages = status["stages"]
    assert list(stages) == ["setup", "tests", "ops", "e2e", "counts"]
    assert {s: r["status"] for s, r in stages.items()} == dict.fromkeys(stages, "ok"), proc.stdout[-3000:]
    assert proc.returncode == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["summary.md", "status.json", "benchmarks.json", "setup.tar.gz", "tests.tar.gz",
                            "ops.tar.gz", "e2e.tar.gz", "counts.tar.gz"])  # the 8 files a device command returns
    expect = {"setup": {"setup/env.json", "setup/probe.log", "setup/info.txt", "setup/pip.log"},  # a wheel was carried
              "tests": {"tests/pytest.log", "tests/junit.xml", "tests/results.md"},
              "ops": {"ops/benchmarks.json", "ops/pytest.log", "ops/results.md", "ops/speedup.png"},
              "e2e": {"e2e/benchmarks.json", "e2e/pytest.log", "e2e/results.md"},
              "counts": {"counts/counts.json", "counts/results.md", "counts/counts.log"}}
    for stage, files in expect.items():
        got = _members(out / f"{stage}.tar.gz")
        assert files | {f"{stage}/gpu_bench.log"} <= got, (stage, got)
        assert stages[stage]["archive"] == f"{stage}.tar.gz"


def test_dry_run_results_reach_the_summary_and_the_merged_json(dry_run):
    out = dry_run["out"]
    merged = json.loads((out / "benchmarks.json").read_text())["benchmarks"]
    ops = {b["extra_info"]["op"] for b in merged}
    assert "rms_norm_gated" in ops and {"e2e prefill", "e2e decode"} <= ops
    backends = {(b["extra_info"]["op"], b["extra_info"]["backend"]) for b in merged}
    assert {("rms_norm_gated", "reference"), ("rms_norm_gated", "torch"), ("e2e decode", "patched")} <= backends
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary
    for section in ("## tests", "## ops", "## e2e", "## counts"):
        assert section in summary
    assert "passed" in summary and "patched-triton" in summary  # test outcomes, the counts table
    counts = json.loads(tarfile.open(out / "counts.tar.gz").extractfile("counts/counts.json").read())
    assert counts  # counts.py wrote its JSON


def test_dry_run_states_what_it_skipped_and_why(dry_run):
    status, summary = dry_run["status"], (dry_run["out"] / "summary.md").read_text()
    setup_notes = status["stages"]["setup"]["notes"]
    conflict = [n for n in setup_notes if "i2f_fake_conflict-1.0" in n]
    assert conflict and "tokenizers<0.0.1" in conflict[0] and "the image has tokenizers" in conflict[0]
    assert any("causal_conv1d-1.7.0.tar.gz not built" in n for n in setup_notes)
    assert any(n.startswith("causal-conv1d skipped") for n in setup_notes)
    assert any(n.startswith("fla skipped") for n in setup_notes)
    assert any("nvidia-smi not found" in n for n in setup_notes)
    ops_notes = status["stages"]["ops"]["notes"]
    assert any("triton: needs a CUDA/NPU device" in n for n in ops_notes)
    assert any("fla: needs CUDA and the fla package" in n for n in ops_notes)
    for n in setup_notes + ops_notes:
        assert n in summary
    # the wheel that fits was installed and is importable by the stages
    assert status["env"]["wheels_installed"] == ["i2f-fake-ok 1.0"]
    assert (dry_run["run"] / "site" / "i2f_fake_ok.py").exists()
    assert not (dry_run["run"] / "site" / "i2f_fake_conflict.py").exists()


def test_interrupted_stage_keeps_its_finished_cases_and_later_stages_skip_for_budget(dry_run, tmp_path):
    suite = tmp_path / "bench_fake.py"
    suite.write_text(
        "import time\nimport pytest\n\n"
        "@pytest.mark.parametrize('case', ['fast', 'slow'])\n"
        "def test_fake(benchmark, case):\n"
        "    benchmark.group = 'fake T=1'\n"
        "    benchmark.extra_info.update(op='fake', shape='T=1', backend='reference' if case == 'fast' else 'torch')\n"
        "    if case == 'slow':\n"
        "        time.sleep(600)\n"
        "    benchmark(lambda: sum(range(10)))\n")
    out = tmp_path / "out"
    # the warm machine's setup is reused (same run folder, same wheels): setup is "cached"
    proc, status = _script(["--dry-run", "--budget", str(gb.RESERVE + 50), "ops", "counts"], out=out,
                           run_dir=dry_run["run"], wheels=dry_run["wheels"],
                           extra_env=dict(GPU_BENCH_CAPS="ops=25", GPU_BENCH_OPS_PATHS=str(suite),
                                          GPU_BENCH_OPS_ARGS="-k fake"))
    assert status is not None, proc.stdout + proc.stderr
    st = status["stages"]
    assert st["setup"]["status"] == "cached"
    assert st["ops"]["status"] == "timed out", st["ops"]
    assert any("interrupted" in n for n in st["ops"]["notes"])
    assert st["counts"]["status"] == "skipped" and "budget" in st["counts"]["notes"][0]
    assert proc.returncode == 1
    merged = json.loads((out / "benchmarks.json").read_text())["benchmarks"]
    assert [b["extra_info"]["backend"] for b in merged] == ["reference"]  # the case that finished
    assert (out / "ops.tar.gz").exists() and (out / "counts.tar.gz").exists()
    summary = (out / "summary.md").read_text()
    assert "| ops | timed out |" in summary and "| counts | skipped |" in summary


def test_carried_wheels_that_break_an_import_are_dropped(tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "i2f-fake-broken", "1.0", module_source="raise ImportError('built for another ABI')\n")
    make_wheel(wheels, "fla-core", "0.0.1", module="fla", module_source="raise ImportError('fla needs triton>=3.3')\n")
    proc, status = _script(["--dry-run", "setup"], out=tmp_path / "out", run_dir=tmp_path / "run", wheels=wheels)
    assert status is not None, proc.stdout + proc.stderr
    setup = status["stages"]["setup"]
    assert setup["status"] == "ok", setup
    broken = [n for n in setup["notes"] if "break `import`" in n]
    assert broken and "i2f_fake_broken" in broken[0] and "built for another ABI" in broken[0]
    assert status["env"]["wheels_installed"] == []
    assert not (tmp_path / "run" / "site" / "i2f_fake_broken.py").exists()
    # a public alternative that does not import is removed, so that its benchmarks skip instead of failing
    alt = [n for n in setup["notes"] if n.startswith("the carried alternatives (fla-core 0.0.1) do not import")]
    assert alt and "fla needs triton>=3.3" in alt[0]
    assert not any((tmp_path / "run" / "alt").iterdir())


def test_without_cuda_the_gpu_stages_skip_with_the_reason(tmp_path):
    # a real (not dry) run on this CPU-only machine: what a GPU machine whose CUDA is broken would see
    proc, status = _script(["part1"], out=tmp_path / "out", run_dir=tmp_path / "run", wheels=tmp_path / "none")
    assert status is not None, proc.stdout + proc.stderr
    st = status["stages"]
    assert st["setup"]["status"] == "ok" and status["env"]["cuda_available"] is False
    assert any("torch sees no CUDA device" in n for n in st["setup"]["notes"])
    assert any("no wheel folder" in n for n in st["setup"]["notes"])
    for stage in ("tests", "ops"):
        assert st[stage]["status"] == "skipped"
        assert st[stage]["notes"] == ["no CUDA device (torch.cuda.is_available() is False on this machine)"]
    assert proc.returncode == 0  # skipping is not failing; the summary says why
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ops.tar.gz", "setup.tar.gz", "status.json",
                                                                    "summary.md", "tests.tar.gz"]
