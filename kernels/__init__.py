"""Triton kernels (triton-ascend 3.2 and NVIDIA Triton), installed as `interns2_fast.kernels`.

Device code plus thin launchers only: no transformers knowledge here. Each module lists its
production launch configurations in `LOWERING_CONFIGS` for the Ascend lowering gate
(`interns2_fast.lowering`). Importing a kernel module needs Triton; importing this package does not.
"""

#: Kernel modules whose LOWERING_CONFIGS the lowering gate collects.
KERNEL_MODULES = (
    "gdn_gating",
    "gdn_chunk",
    "gdn_recurrent",
    "conv1d",
    "norm_gated",
    "rms_norm",
    "decode_attention",
    "attention_prologue",
    "moe_routing",
    "moe_experts",
)

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LoweringConfig:
    """One production launch of a kernel, for the Ascend lowering gate.

    `signature` maps every non-constexpr argument to its Triton type ("*bf16", "*fp32", "i32",
    "fp32", ...); `constants` gives every constexpr. `kernel` may be a JITFunction or a
    heuristics/autotune wrapper around one.
    """

    name: str
    kernel: Any
    signature: dict[str, str]
    constants: dict[str, Any] = field(default_factory=dict)


def _hand_over_to_hugging_face() -> None:
    """Give `import kernels` Hugging Face's package when this folder was found as a top-level module.

    Python puts the current directory (or a script's folder) first on `sys.path`, so from a clone's
    root `import kernels` — which transformers does with every Qwen3.5 model from 5.25 on — finds this
    folder before site-packages. This module then loads the `kernels` found on the rest of `sys.path`
    in its place (an import returns what `sys.modules` holds once the module has run), or raises the
    ModuleNotFoundError Python would have raised without this folder. What the rest of this file
    defined stays in a module object nobody sees.
    """
    import importlib.machinery
    import importlib.util
    import os
    import sys

    this_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [p for p in sys.path if isinstance(p, str) and os.path.abspath(p or os.curdir) != this_root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    del sys.modules["kernels"]
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("No module named 'kernels' (the kernels/ folder here holds interns2_fast's Triton "
                                  "kernels, importable only as interns2_fast.kernels)", name="kernels")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("kernels", None)
        raise


if __name__ == "kernels":
    _hand_over_to_hugging_face()
