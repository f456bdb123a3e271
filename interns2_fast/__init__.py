"""interns2_fast: fast Gated DeltaNet, conv1d, gated norm and MoE for Intern-S2-Preview on Ascend.

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, ...)
    interns2_fast.patch(model)
"""
from . import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
