"""Device helper shared by kernels that reproduce the fallbacks' intermediate roundings.

No kernel of its own (so no LOWERING_CONFIGS): it lowers inside the kernels that call it.
"""
import triton
import triton.language as tl


@triton.jit
def round_to(x, TY: tl.constexpr, EMULATE: tl.constexpr):
    """fp32 -> TY -> fp32, round to nearest even. Triton's interpreter truncates fp32 -> bf16
    (hardware rounds), so under the interpreter (EMULATE) bf16 rounding is done on the bits."""
    if EMULATE and TY == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return ((bits >> 16) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(TY).to(tl.float32)
