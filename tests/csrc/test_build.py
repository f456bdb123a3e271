"""csrc/build.py without compiling anything: how it finds (or reports missing) headers, compiler, CANN."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[2] / "csrc" / "build.py"


@pytest.fixture()
def build():
    spec = importlib.util.spec_from_file_location("csrc_build_under_test", BUILD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bad_pto_isa_home_is_reported(build, tmp_path, monkeypatch):
    monkeypatch.setenv("PTO_ISA_HOME", str(tmp_path))
    with pytest.raises(build.Unavailable, match="PTO_ISA_HOME.*pto-inst.hpp"):
        build.find_pto_isa_home()


def test_missing_clang_is_reported(build, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CXX", "g++")
    with pytest.raises(build.Unavailable, match=r"clang\+\+ >= 15.*apt-get install -y clang-16"):
        build.find_clang()


def test_npu_build_needs_cann(build, monkeypatch):
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    with pytest.raises(build.Unavailable, match="ASCEND_HOME_PATH"):
        build.find_bisheng()


def test_simulator_command(build, tmp_path):
    pytest.importorskip("pybind11")
    cmd = build.sim_command("clang++-16", tmp_path, tmp_path / "out.so")
    for flag in ("-D__CPU_SIM", "-std=c++20", "-include", "stdint.h", str(tmp_path / "include")):
        assert flag in cmd
    assert cmd[-1] == str(tmp_path / "out.so") and cmd[-3].endswith("bind_cpu.cpp")


def test_npu_command_puts_the_pinned_headers_first(build, tmp_path):
    cmd = build.npu_command(tmp_path / "bisheng", tmp_path / "cann", tmp_path / "pto", tmp_path / "lib.so")
    assert "--cce-aicore-arch=dav-c220-vec" in cmd
    includes = [cmd[i + 1] for i, c in enumerate(cmd) if c == "-I"]
    assert includes[0] == str(tmp_path / "pto" / "include")


@pytest.mark.parametrize("flag, rc", [("--if-available", 0), (None, 2)])
def test_cli_exit_status_when_unavailable(tmp_path, flag, rc):
    env = {"PATH": "/usr/bin:/bin", "PTO_ISA_HOME": str(tmp_path), "INTERNS2_PTO_BUILD_DIR": str(tmp_path / "b")}
    proc = subprocess.run([sys.executable, str(BUILD)] + ([flag] if flag else []), capture_output=True, text=True,
                          env=env)
    assert proc.returncode == rc, proc.stderr
    assert "not built" in proc.stderr
