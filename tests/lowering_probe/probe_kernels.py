"""Two kernels that the lowering gate must tell apart (imported by a subprocess without TRITON_INTERPRET)."""
import triton
import triton.language as tl

from interns2_fast.kernels import LoweringConfig


@triton.jit
def scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    for i in range(pid, tl.cdiv(n, BLOCK), tl.num_programs(0)):
        offs = i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2.0, mask=mask)


@triton.jit
def huge_tile_kernel(x_ptr, y_ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    # One [ROWS, COLS] fp32 tile held on chip: 1 MiB at 512 x 512, far past the 192 KB UB.
    offs = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    x = tl.load(x_ptr + offs)
    tl.store(y_ptr + offs, tl.exp(x) + x * x)


LOWERING_CONFIGS = [
    LoweringConfig("probe/tiny", scale_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32"}, {"BLOCK": 256}),
    LoweringConfig("probe/huge", huge_tile_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32"}, {"ROWS": 512, "COLS": 512}),
]
