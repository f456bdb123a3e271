"""Model patching: the only code in interns2_fast that knows transformers versions and module layouts.

* `api` — `patch(model)`, `unpatch(model)`, `PatchReport`;
* `discovery` — finds linear-attention layers, gated norms and sparse-MoE blocks by structure;
* `gdn` — the patched Gated DeltaNet and gated-norm forwards (cache protocols of 5.2 and 5.15+);
* `moe` — the MoE hooks (router, experts, sparse-MoE block);
* `state` — per-instance patch state, forward installation, verify mode, `reference_mode`;
* `autopatch` — the load-time switch (`from_pretrained`, `enable_auto_patch`).
"""
from .api import PatchReport, is_patched, last_report, patch, unpatch
from .state import VerifyError, reference_mode

__all__ = ["PatchReport", "VerifyError", "is_patched", "last_report", "patch", "reference_mode", "unpatch"]
