"""Packaging: kernels/ is importable only as interns2_fast.kernels, never as a top-level `kernels`."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import torch

from interns2_fast import device


def run_python(code: str, cwd) -> str:
    """stdout of a fresh interpreter running `code` in `cwd` (no PYTHONPATH), which must succeed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_kernels_is_a_subpackage_and_no_top_level_kernels(tmp_path):
    # Run from a neutral folder: the repo root itself is on sys.path when Python starts there.
    code = (
        "import importlib.util, interns2_fast, interns2_fast.kernels, pathlib\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "root = pathlib.Path(interns2_fast.__file__).resolve().parents[1]\n"
        "assert spec is None or pathlib.Path(spec.origin or '/').resolve().parent != root / 'kernels', spec\n"
        "print(interns2_fast.kernels.__name__)\n"
    )
    assert run_python(code, tmp_path) == "interns2_fast.kernels"


def test_repository_root_import_of_kernels_is_hugging_faces_package():
    """From the clone's root (the current directory first on sys.path) `import kernels` is Hugging Face's
    package — transformers 5.25 imports it with every Qwen3.5 model — or, where that is not installed, an
    empty placeholder (transformers 5.13 + imports `kernels` to read a version); never interns2_fast's
    kernels/, and transformers' Qwen3.5 modeling imports."""
    root = pathlib.Path(__file__).resolve().parents[1]
    hf = importlib.util.find_spec("kernels")  # pytest's importlib mode keeps the root off sys.path here
    code = (
        "import importlib.util, pathlib, sys\n"
        "assert sys.path[0] == '', sys.path[:2]\n"
        "import kernels\n"
        "where = getattr(kernels, '__file__', None)\n"
        "print('found', pathlib.Path(where).resolve() if where else 'placeholder', hasattr(kernels, 'KERNEL_MODULES'))\n"
        "import transformers.models.qwen3_5_moe.modeling_qwen3_5_moe\n"
        "import transformers.models.qwen3_next.modeling_qwen3_next\n"
        "import interns2_fast.kernels\n"
        "print('ours', interns2_fast.kernels.__name__, len(interns2_fast.kernels.KERNEL_MODULES))\n"
    )
    first, ours = run_python(code, root).splitlines()
    if hf is None:  # an empty placeholder: transformers reads no version from it and takes kernels as absent
        assert first == "found placeholder False"
    else:
        assert first == f"found {pathlib.Path(hf.origin).resolve()} False"
        assert pathlib.Path(hf.origin).resolve().parent != root / "kernels"
    assert ours.startswith("ours interns2_fast.kernels ")


def test_setup_lists_every_subpackage():
    """A wheel holds only the packages setup.py names: every folder of interns2_fast/ with an __init__.py."""
    import ast

    root = pathlib.Path(__file__).resolve().parents[1]
    setup_call = next(n for n in ast.walk(ast.parse((root / "setup.py").read_text()))
                      if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    listed = set(ast.literal_eval(next(k.value for k in setup_call.keywords if k.arg == "packages")))
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "interns2_fast").rglob("__init__.py")}
    assert found | {"interns2_fast.kernels"} == listed


def test_device_module_cpu_facts():
    cpu = torch.device("cpu")
    assert device.persistent_grid(cpu, 1, cube=True) == 1
    assert 1 <= device.persistent_grid(cpu, 1000, cube=False) == device.vector_cores(cpu)
    with device.device_guard(torch.zeros(1)):
        pass
    info = device.describe()
    assert info["torch"] == torch.__version__ and "transformers" in info


def test_cli_info_json(capsys):
    import json

    from interns2_fast import cli

    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "reference" in info["ops"]["chunk_gated_delta_rule"]
