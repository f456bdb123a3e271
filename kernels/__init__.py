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
    in its place (an import returns what `sys.modules` holds once the module has run). Where Hugging
    Face's package is not installed it leaves an empty placeholder with no version and no attributes,
    which transformers (5.13 +, which imports `kernels` to read its version) takes for "not installed";
    raising ModuleNotFoundError there would break transformers' own import. What the rest of this file
    defined stays in a module object nobody sees.
    """
    import importlib.machinery
    import importlib.util
    import os
    import sys
    import types

    this_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [p for p in sys.path if isinstance(p, str) and os.path.abspath(p or os.curdir) != this_root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    if spec is None or spec.loader is None:
        placeholder = types.ModuleType("kernels", "Placeholder: Hugging Face's `kernels` package is not installed "
                                                  "(the kernels/ folder here is interns2_fast.kernels).")
        placeholder.__spec__ = importlib.machinery.ModuleSpec("kernels", None, is_package=True)
        placeholder.__path__ = placeholder.__spec__.submodule_search_locations = []

        def __getattr__(name):
            raise AttributeError(f"Hugging Face's `kernels` package is not installed (no kernels.{name}); the "
                                 "kernels/ folder of this repository is interns2_fast.kernels")

        placeholder.__getattr__ = __getattr__
        sys.modules["kernels"] = placeholder
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("kernels", None)
        raise


if __name__ == "kernels":
    _hand_over_to_hugging_face()
