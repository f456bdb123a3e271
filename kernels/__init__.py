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
