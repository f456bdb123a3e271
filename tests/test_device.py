"""Broken installs the users hit, reproduced with fake packages on sys.path (no real torch_npu, CANN or
NVIDIA triton needed): a torch_npu without CANN, a `triton/` folder holding NVIDIA triton and
triton-ascend at once, and a Hugging Face `kernels` that the installed transformers cannot import. Library: npu_available() is False / import warns; every command: one sentence
naming the cause, exit status 2, no traceback.

Each case runs in a fresh interpreter (the fake packages must be found before torch / triton load).
"""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from interns2_fast import device

CLI = pathlib.Path(sys.executable).with_name("interns2-fast")
CANN_ERROR = "libhccl.so: cannot open shared object file: No such file or directory"


def _write(root: pathlib.Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def _fake_torch_npu(root: pathlib.Path, mode: str, *, autoload: bool = False) -> pathlib.Path:
    """mode "import": `import torch_npu` raises as it does without CANN; "is_available": it imports
    and registers torch.npu, whose is_available() raises. autoload: a dist-info with torch's
    `torch.backends` entry point, so that `import torch` loads it (as the real wheel does)."""
    if mode == "import":
        _write(root, "torch_npu/__init__.py", f"raise ImportError({CANN_ERROR!r})\n")
    else:
        _write(root, "torch_npu/__init__.py", f"""
            import types
            import torch

            def _is_available():
                raise RuntimeError("ACL stream synchronize failed, error code 507033: {CANN_ERROR}")

            torch.npu = types.SimpleNamespace(is_available=_is_available, device_count=lambda: 0)

            def _autoload():
                pass
        """)
    if autoload:
        _write(root, "torch_npu-2.9.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.9.0\n")
        _write(root, "torch_npu-2.9.0.dist-info/entry_points.txt", "[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    return root


def _fake_mixed_triton(root: pathlib.Path) -> pathlib.Path:
    """What `pip install torch` (x86, pulls NVIDIA triton) then `pip install triton-ascend` leave behind."""
    _write(root, "triton/__init__.py",
           "raise ImportError(\"cannot import name 'Language' from 'triton.backends.compiler'\")\n")
    for backend in ("ascend", "nvidia", "amd"):
        _write(root, f"triton/backends/{backend}/__init__.py")
    _write(root, "triton-3.5.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: triton\nVersion: 3.5.0\n")
    _write(root, "triton_ascend-3.2.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: triton-ascend\nVersion: 3.2.0\n")
    return root


def _run(argv, fake_root, *, autoload_off=True):
    env = dict(os.environ, PYTHONPATH=str(fake_root))
    env.pop("TRITON_INTERPRET", None)
    if autoload_off:
        env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    else:
        env.pop("TORCH_DEVICE_BACKEND_AUTOLOAD", None)
    return subprocess.run(argv, cwd=fake_root, capture_output=True, text=True, env=env, timeout=300)


def _assert_one_sentence(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _import_warns(root, then: str):
    """`import interns2_fast` (every warning shown), then `then`: the RuntimeWarning lines and stdout."""
    code = f"import warnings\nwarnings.simplefilter('always')\nimport interns2_fast\nfrom interns2_fast import device\n{then}\n"
    proc = _run([sys.executable, "-c", code], root)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stderr.splitlines() if "RuntimeWarning: interns2_fast:" in line], proc.stdout


def _commands_say(root, commands, *needles):
    """Each command exits 2 without a traceback, printing one `interns2-fast <command>:` sentence with the needles."""
    if not CLI.exists():
        pytest.skip(f"console script {CLI} not installed")
    for argv in commands:
        proc = _run([str(CLI), *argv], root)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        sentences = [line for line in proc.stderr.splitlines() if line.startswith(f"interns2-fast {argv[0]}:")]
        assert len(sentences) == 1 and all(needle in sentences[0] for needle in needles), proc.stderr


LIBRARY_CHECK = """
import interns2_fast
from interns2_fast import device
assert device.npu_available() is False
print("PROBLEM:", device.npu_problem())
"""


@pytest.mark.parametrize("mode", ["import", "is_available"])
def test_torch_npu_without_cann_library_and_commands(tmp_path, mode):
    root = _fake_torch_npu(tmp_path, mode)
    proc = _run([sys.executable, "-c", LIBRARY_CHECK], root)
    assert proc.returncode == 0, proc.stderr
    problem = proc.stdout.split("PROBLEM:", 1)[1]
    assert "torch_npu is installed but cannot load" in problem and "libhccl.so" in problem and "CANN" in problem
    if not CLI.exists():
        pytest.skip(f"console script {CLI} not installed")
    commands = [["info"], ["demo"]] if mode == "import" else [["info", "--json"], ["lower"], ["check"]]
    for argv in commands:
        _assert_one_sentence(_run([str(CLI), *argv], root), f"interns2-fast {argv[0]}:", "torch_npu", "CANN")


def test_torch_npu_autoloaded_without_cann(tmp_path):
    """Without TORCH_DEVICE_BACKEND_AUTOLOAD=0 `import torch` itself fails: the library raises one
    ImportError sentence that says what to do; the command prints it and exits 2."""
    root = _fake_torch_npu(tmp_path, "import", autoload=True)
    proc = _run([sys.executable, "-c", "import interns2_fast"], root, autoload_off=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: interns2_fast:") and "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in last, proc.stderr
    if not CLI.exists():
        pytest.skip(f"console script {CLI} not installed")
    _assert_one_sentence(_run([str(CLI), "info"], root, autoload_off=False), "TORCH_DEVICE_BACKEND_AUTOLOAD=0", "CANN")


def test_mixed_nvidia_and_ascend_install_warns_on_import_and_commands_exit_2(tmp_path):
    root = _fake_mixed_triton(tmp_path)
    warned, out = _import_warns(root, "assert device.triton_flavour() is None\nprint('OK', device.triton_install_problem())")
    assert len(warned) == 1 and "NVIDIA triton and triton-ascend" in warned[0] and device.TRITON_REPAIR in warned[0]
    assert out.startswith("OK ")
    _commands_say(root, (["info"], ["lower"]), device.TRITON_REPAIR)


KERNELS_ERROR = "Either a revision or a version must be specified."


def _fake_mismatched_kernels(root: pathlib.Path) -> pathlib.Path:
    """transformers 5.2.0's metadata beside Hugging Face `kernels` 0.19.1 (left by transformers 5.25): the real
    transformers then imports this `kernels`, which fails as the real one does under transformers 5.2."""
    _write(root, "kernels/__init__.py", f"raise ValueError({KERNELS_ERROR!r})\n")
    _write(root, "kernels-0.19.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
    _write(root, "transformers-5.2.0.dist-info/METADATA",
           "Metadata-Version: 2.1\nName: transformers\nVersion: 5.2.0\nProvides-Extra: kernels\n"
           "Requires-Dist: kernels<0.11,>=0.10.2; extra == \"kernels\"\n")
    return root


def _kernels_pair(monkeypatch, transformers_version, kernels_version, import_error=None, declared=None):
    """Pretend these versions are installed and importing transformers' kernels integration gives `import_error`."""
    versions = {"transformers": transformers_version, "kernels": kernels_version}
    monkeypatch.setattr(device, "_dist_version", versions.get)
    probes = []
    monkeypatch.setattr(device, "_hub_kernels_import_error", lambda: probes.append(1) or import_error)
    monkeypatch.setattr(device, "_declared_kernels_requirement", lambda: declared)
    device.kernels_install_problem.cache_clear()
    return probes


@pytest.fixture
def _fresh_kernels_check():
    device.kernels_install_problem.cache_clear()
    yield
    device.kernels_install_problem.cache_clear()


def test_kernels_mismatch_sentence(monkeypatch, _fresh_kernels_check):
    probes = _kernels_pair(monkeypatch, "5.2.0", "0.19.1", f"ValueError: {KERNELS_ERROR}", "kernels<0.11,>=0.10.2")
    problem = device.kernels_install_problem()
    assert probes == [1]
    assert problem.startswith("transformers 5.2.0 cannot import its Qwen3.5 modeling with kernels 0.19.1 installed")
    assert KERNELS_ERROR in problem and "`pip uninstall -y kernels`" in problem
    assert '`pip install "kernels<0.11,>=0.10.2"`' in problem
    assert problem in device.environment_problems()
    # no declared range: the measured one
    _kernels_pair(monkeypatch, "5.12.1", "0.15.1", f"ValueError: {KERNELS_ERROR}")
    assert '`pip install "kernels<0.15"`' in device.kernels_install_problem()


@pytest.mark.parametrize("transformers_version, kernels_version", [
    ("5.2.0", "0.14.1"),    # below the breaking kernels releases
    ("5.13.0", "0.19.1"),   # transformers that skips a kernels outside its declared range
    ("5.25.0", "0.19.1"),
    ("5.2.0", None),        # no kernels
    (None, "0.19.1"),       # no transformers
])
def test_kernels_good_pairs_import_nothing(monkeypatch, _fresh_kernels_check, transformers_version, kernels_version):
    probes = _kernels_pair(monkeypatch, transformers_version, kernels_version, "ValueError: must not be asked")
    assert device.kernels_install_problem() is None and probes == []


def test_kernels_pair_the_table_names_but_that_imports_is_fine(monkeypatch, _fresh_kernels_check):
    probes = _kernels_pair(monkeypatch, "5.2.0", "0.19.1", None)
    assert device.kernels_install_problem() is None and probes == [1]


def test_kernels_check_never_raises(monkeypatch, _fresh_kernels_check):
    monkeypatch.setattr(device, "_dist_version", lambda name: "not a version")
    assert device.kernels_install_problem() is None


def test_mismatched_kernels_warns_on_import_and_commands_exit_2(tmp_path):
    """The real transformers importing a `kernels` that fails as 0.19.1 does under transformers 5.2."""
    root = _fake_mismatched_kernels(tmp_path)
    warned, out = _import_warns(root, "print('OK', device.kernels_install_problem())")
    assert len(warned) == 1, warned
    for needle in ("transformers 5.2.0", "kernels 0.19.1", KERNELS_ERROR, '"kernels<0.11,>=0.10.2"'):
        assert needle in warned[0], warned[0]
    assert out.startswith("OK transformers 5.2.0 cannot import its Qwen3.5 modeling"), out
    _commands_say(root, (["info"], ["demo"]), "kernels 0.19.1", "pip uninstall -y kernels")


def test_this_environment_is_clean():
    """The test environment itself has no broken install (else every other test measures the wrong thing)."""
    assert device.triton_install_problem() is None
    assert device.npu_problem() is None
    assert device.kernels_install_problem() is None
    assert device.environment_problems() == []
