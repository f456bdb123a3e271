"""interns2_fast: fast Gated DeltaNet, conv1d, gated norm and MoE for Intern-S2-Preview on Ascend.

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, ...)
    report = interns2_fast.patch(model)          # per-instance; interns2_fast.unpatch(model) undoes it
    interns2_fast.check(model, tokenizer("What is 2 + 3?", return_tensors="pt"))  # numerics vs reference

Load-time switch: `interns2_fast.enable_auto_patch()` (every later `from_pretrained` is patched,
`trust_remote_code` models included; `disable_auto_patch()` stops it; or set
INTERNS2_FAST_AUTO_PATCH=1 before importing), or `interns2_fast.from_pretrained(path, **kwargs)`.
"""
import os as _os
import sys as _sys


def _torch_import_failure(exc: BaseException) -> str:
    """One sentence for an `import torch` that failed (most often a torch_npu without CANN, autoloaded)."""
    import importlib.util

    text = " ".join(str(exc).split())
    if importlib.util.find_spec("torch_npu") is not None and ("torch_npu" in text or "backend extension" in text):
        return ("`import torch` fails because torch autoloads torch_npu, which cannot load without CANN: install CANN "
                "and `source /usr/local/Ascend/ascend-toolkit/set_env.sh`, or set TORCH_DEVICE_BACKEND_AUTOLOAD=0 "
                "(then interns2_fast runs without the NPU), or `pip uninstall torch_npu`")
    return f"`import torch` fails ({type(exc).__name__}: {text[:200]})"


#: Running as the `interns2-fast` console script: it reports broken installs itself, in one sentence.
_CONSOLE_SCRIPT = _os.path.basename(_sys.argv[0] if _sys.argv else "") == "interns2-fast"

try:
    import torch as _torch  # noqa: F401
except Exception as _exc:  # noqa: BLE001
    _message = _torch_import_failure(_exc)
    if _CONSOLE_SCRIPT:  # no traceback: the sentence and exit status 2
        print(f"interns2-fast: {_message}", file=_sys.stderr)
        raise SystemExit(2) from None
    raise ImportError(f"interns2_fast: {_message}") from _exc

from . import device as _device

# Broken installs found without importing anything heavy: a warning each, never an import failure (the
# PyTorch paths still work; transformers' Qwen3.5 modeling fails on its own import with a mismatched kernels).
for _problem in () if _CONSOLE_SCRIPT else (_device.triton_install_problem(), _device.kernels_install_problem()):
    if _problem:
        import warnings as _warnings

        _warnings.warn(f"interns2_fast: {_problem}", RuntimeWarning, stacklevel=2)

from . import ops
from .numerics import NumericsReport, check
from .patching import PatchReport, VerifyError, is_patched, last_report, patch, reference_mode, unpatch
from .patching.autopatch import auto_patch_enabled, disable_auto_patch, enable_auto_patch, from_pretrained

__version__ = "0.1.0"

__all__ = [
    "ops",
    "__version__",
    "patch",
    "unpatch",
    "check",
    "from_pretrained",
    "enable_auto_patch",
    "disable_auto_patch",
    "auto_patch_enabled",
    "is_patched",
    "last_report",
    "reference_mode",
    "PatchReport",
    "NumericsReport",
    "VerifyError",
]

if _os.environ.get("INTERNS2_FAST_AUTO_PATCH", "0") not in ("", "0"):
    enable_auto_patch()
