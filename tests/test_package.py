"""Packaging: kernels/ is importable only as interns2_fast.kernels, never as a top-level `kernels`."""
import os
import subprocess
import sys

import torch

from interns2_fast import device


def test_kernels_is_a_subpackage_and_no_top_level_kernels(tmp_path):
    # Run from a neutral folder: the repo root itself is on sys.path when Python starts there.
    code = (
        "import importlib.util, interns2_fast, interns2_fast.kernels, pathlib\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "root = pathlib.Path(interns2_fast.__file__).resolve().parents[1]\n"
        "assert spec is None or root not in pathlib.Path(spec.origin or '/').resolve().parents, spec\n"
        "print(interns2_fast.kernels.__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "interns2_fast.kernels"


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
