"""The Ascend lowering gate must be able to fail: a tiny kernel lowers, an oversized one overflows UB.

Lowering needs compiled (not interpreted) Triton, so it runs in a subprocess without TRITON_INTERPRET.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")
pytest.importorskip("ascendnpuir")

PROBE_DIR = pathlib.Path(__file__).parent / "lowering_probe"


def _lower(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(PROBE_DIR), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "interns2_fast.cli", "lower", *args], capture_output=True,
                          text=True, env=env, cwd=str(PROBE_DIR), timeout=600)


def test_tiny_lowers_and_oversized_reports_ub_overflow():
    proc = _lower("--json", "--module", "probe_kernels")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1, "a failed configuration must make the exit status non-zero"
    assert report["target"] == "Ascend910_9362" and report["failed"] == 1
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["probe/tiny"]["status"] in ("lowered", "compiled"), by_name["probe/tiny"]["error"]
    huge = by_name["probe/huge"]
    assert huge["status"] == "failed" and "ub overflow" in huge["error"]
    assert huge["ub_available_bits"] == 1572864 and huge["ub_required_bits"] > 1572864


def test_passing_configs_exit_zero():
    proc = _lower("--module", "probe_kernels", "--only", "tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 lowered, 0 failed" in proc.stdout


def test_lowering_refuses_interpreted_kernels(monkeypatch):
    from interns2_fast import lowering
    from interns2_fast.kernels import LoweringConfig

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        lowering.lower(LoweringConfig("x/y", None, {"a": "i32"}))


def test_every_declared_config_is_well_formed():
    from interns2_fast import lowering
    from interns2_fast.kernels import LoweringConfig

    for cfg in lowering.collect():
        assert isinstance(cfg, LoweringConfig)
        assert "/" in cfg.name and cfg.signature


def test_target_option_910b3_and_unknown_chip():
    """--target picks the chip: the same probe lowers / overflows for Ascend910B3; an unknown chip fails."""
    proc = _lower("--json", "--module", "probe_kernels", "--target", "Ascend910B3")
    report = json.loads(proc.stdout)
    assert report["target"] == "Ascend910B3" and report["failed"] == 1
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["probe/tiny"]["status"] in ("lowered", "compiled"), by_name["probe/tiny"]["error"]
    assert "ub overflow" in by_name["probe/huge"]["error"]
    proc = _lower("--json", "--module", "probe_kernels", "--only", "tiny", "--target", "Ascend999")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and "Ascend999" in report["results"][0]["error"]


@pytest.mark.parametrize("target", ["Ascend910_9362", "Ascend910B3"])
@pytest.mark.parametrize("family", ["rms_norm/", "decode_attention/"])
def test_new_kernel_configs_lower_for_both_targets(family, target):
    proc = _lower("--only", family, "--target", target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"for {target}" in proc.stderr and " 0 failed" in proc.stdout
