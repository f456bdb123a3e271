"""The kernels use only what triton-ascend 3.2 and NVIDIA triton 3.6-3.9 share.

A static scan of kernels/*.py (the interpreter runs of tests/ops under both Tritons are the
dynamic check; CI runs them under NVIDIA triton 3.6 and 3.9 too, see .ci/run):
  * no block pointers (`tl.make_block_ptr`, `tl.advance`): NVIDIA triton 3.9 removed them;
  * no tensor descriptors (`tl.make_tensor_descriptor`, ...): triton-ascend 3.2 has none;
  * no `tl.sort` (triton-ascend's interpreter lacks it), no launch hints (`num_warps`,
    `num_stages`: Ascend rule), no in-place pointer advance (`ptr += ...` on a *_ptr name).
"""
import ast
import pathlib

import pytest

KERNELS = sorted((pathlib.Path(__file__).parent.parent / "kernels").glob("*.py"))
FORBIDDEN_ATTRS = {"make_block_ptr", "advance", "make_tensor_descriptor", "load_tensor_descriptor",
                   "store_tensor_descriptor", "sort"}
FORBIDDEN_KWARGS = {"num_warps", "num_stages", "eviction_policy", "cache_modifier"}


@pytest.mark.parametrize("path", KERNELS, ids=[p.name for p in KERNELS])
def test_kernel_module_uses_only_shared_triton_features(path):
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS and \
                isinstance(node.value, ast.Name) and node.value.id == "tl":
            found.append(f"line {node.lineno}: tl.{node.attr}")
        if isinstance(node, ast.keyword) and node.arg in FORBIDDEN_KWARGS:
            found.append(f"line {node.value.lineno}: {node.arg}=")
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id.endswith("_ptr"):
            found.append(f"line {node.lineno}: {node.target.id} advanced in place")
    assert not found, f"{path.name}: " + "; ".join(found)


def test_the_scan_sees_the_kernels():
    assert {"moe_experts.py", "moe_routing.py", "gdn_chunk.py", "conv1d.py"} <= {p.name for p in KERNELS}
