"""The load-time switch: have models patched as they finish loading, without changing the loading code.

    import interns2_fast
    interns2_fast.enable_auto_patch()            # every from_pretrained() from now on is patched
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.bfloat16,
                                                 device_map="auto")   # already patched
    interns2_fast.last_report(model)            # what was patched

or, for one model, `interns2_fast.from_pretrained(path, **kwargs)` (AutoModelForCausalLM + patch).
Setting the environment variable INTERNS2_FAST_AUTO_PATCH=1 before `import interns2_fast` calls
`enable_auto_patch()` at import.

How: `enable_auto_patch` wraps `transformers.PreTrainedModel.from_pretrained` (the classmethod that
every transformers model class and every `trust_remote_code` model class inherits, and that the Auto
classes end in) so that the loaded model goes through `patch()` after its weights are loaded and
after accelerate has dispatched it over the devices of `device_map`. `disable_auto_patch` puts the
original classmethod back. Classes that override `from_pretrained` without calling `super()` are not
covered: patch those models explicitly.
"""
from __future__ import annotations

import functools
import logging

from .api import patch
from .state import FAMILIES

logger = logging.getLogger("interns2_fast")

_AUTO: dict = {}  # "original": the PreTrainedModel.__dict__ entry; "settings": patch() kwargs


def _patch_loaded(result, settings):
    model = result[0] if isinstance(result, tuple) else result
    try:
        patch(model, **settings)
    except Exception as exc:  # a model this package cannot handle still loads, unpatched
        logger.warning("interns2_fast: auto-patch of %s failed: %s", type(model).__name__, exc)
    return result


def enable_auto_patch(*, ops=FAMILIES, backend: str = "auto", verify: bool | str = False,
                      fix_legacy_continuation: bool = False) -> None:
    """Patch every model loaded with `from_pretrained` from now on (arguments as for `patch`)."""
    from transformers import PreTrainedModel

    _AUTO["settings"] = dict(ops=tuple(ops), backend=backend, verify=verify,
                             fix_legacy_continuation=fix_legacy_continuation)
    if "original" in _AUTO:
        return
    original = PreTrainedModel.__dict__["from_pretrained"]
    func = original.__func__

    @functools.wraps(func)
    def from_pretrained(cls, *args, **kwargs):
        result = func(cls, *args, **kwargs)
        if "settings" in _AUTO:
            _patch_loaded(result, _AUTO["settings"])
        return result

    from_pretrained.__interns2_fast__ = True
    _AUTO["original"] = original
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)


def disable_auto_patch() -> None:
    """Stop patching models at load time (models already patched stay patched; see `unpatch`)."""
    from transformers import PreTrainedModel

    original = _AUTO.pop("original", None)
    _AUTO.pop("settings", None)
    if original is not None:
        PreTrainedModel.from_pretrained = original


def auto_patch_enabled() -> bool:
    return "original" in _AUTO


def from_pretrained(path, *, ops=FAMILIES, backend: str = "auto", verify: bool | str = False,
                    fix_legacy_continuation: bool = False, model_class=None, **kwargs):
    """`AutoModelForCausalLM.from_pretrained(path, **kwargs)` (or `model_class`), then `patch()`.

    ops / backend / verify / fix_legacy_continuation: as for `patch`. Other kwargs go to transformers unchanged (Intern-S2-Preview needs `trust_remote_code=True`; the
    reported Ascend set-up adds `dtype=torch.bfloat16, device_map="auto",
    attn_implementation="eager"`). The PatchReport is at `interns2_fast.last_report(model)`.
    """
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    result = model_class.from_pretrained(path, **kwargs)
    return _patch_loaded(result, dict(ops=tuple(ops), backend=backend, verify=verify,
                                      fix_legacy_continuation=fix_legacy_continuation))
