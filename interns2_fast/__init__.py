"""interns2_fast: fast Gated DeltaNet, conv1d, gated norm and MoE for Intern-S2-Preview on Ascend.

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, ...)
    report = interns2_fast.patch(model)          # per-instance; interns2_fast.unpatch(model) undoes it
    interns2_fast.check(model, tokenizer("What is 2 + 3?", return_tensors="pt"))  # numerics vs reference

Load-time switch: `interns2_fast.enable_auto_patch()` (every later `from_pretrained` is patched,
`trust_remote_code` models included; `disable_auto_patch()` stops it; or set
INTERNS2_FAST_AUTO_PATCH=1 before importing), or `interns2_fast.from_pretrained(path, **kwargs)`.
"""
import os as _os

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
