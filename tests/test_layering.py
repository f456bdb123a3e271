"""Layering: kernels and PyTorch backends never import the API layer; leaf modules import nothing of
the package; importing any module first works (no import cycles)."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
API_LAYER = ("ops", "patching", "numerics", "usercmds", "cli", "bench", "models")
LEAVES = ("routing_plan", "compare", "host_sync", "cu_seqlens", "device")


def _package_imports(path: pathlib.Path) -> set[str]:
    """First components under interns2_fast of every import in `path` (relative ones resolved)."""
    rel = path.relative_to(ROOT)
    pkg = ["interns2_fast", *rel.parts[:-1]] if rel.parts[0] != "kernels" else ["interns2_fast", "kernels"]
    if rel.parts[0] == "interns2_fast":
        pkg = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "interns2_fast" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").glob("*.py")) + sorted(
    (ROOT / "interns2_fast" / "torch_impl").glob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_backends_never_import_the_api_layer(path):
    bad = _package_imports(path) & set(API_LAYER)
    assert not bad, f"{path.name} imports interns2_fast.{sorted(bad)}"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_of_the_package(leaf):
    assert _package_imports(ROOT / "interns2_fast" / f"{leaf}.py") == set()


def test_any_module_can_be_imported_first():
    mods = ["interns2_fast.routing_plan", "interns2_fast.compare", "interns2_fast.host_sync",
            "interns2_fast.kernels.moe_routing", "interns2_fast.torch_impl.moe_routing", "interns2_fast.ops.moe",
            "interns2_fast.patching.state", "interns2_fast.patching.families", "interns2_fast.numerics"]
    code = "; ".join(f"import importlib; importlib.import_module({m!r})" for m in mods[:1])
    for m in mods:
        code = f"import importlib; importlib.import_module({m!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
        assert proc.returncode == 0, f"importing {m} first fails:\n{proc.stderr[-2000:]}"
