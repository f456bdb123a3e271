// UB plan of the gated RMSNorm kernel (norm_gated.hpp), for its one compiled configuration:
// N = 128 (the value head dim it normalises over), R = 32 rows per block. fp32. Offsets and sizes
// in bytes. Same rules and format as gdn_decode_ub.hpp (checked by tests/csrc/test_ub_plan.py).
// The row view RROW ([1, R]) and the column view RSTD ([R, 1]) are TRESHAPE aliases of RSUM.
#ifndef INTERNS2_FAST_NORM_GATED_UB_HPP
#define INTERNS2_FAST_NORM_GATED_UB_HPP

#define I2F_NORM_GATED_N 128
#define I2F_NORM_GATED_R 32

#define I2F_NORM_GATED_UB(X)                                                                                      \
    X(X0, 0x00000, 16384)       /* x rows [R, N], ping */                                                         \
    X(X1, 0x04000, 16384)       /* x rows [R, N], pong */                                                         \
    X(G0, 0x08000, 16384)       /* gate rows [R, N], ping */                                                      \
    X(G1, 0x0C000, 16384)       /* gate rows [R, N], pong */                                                      \
    X(O0, 0x10000, 16384)       /* silu(gate), then the output [R, N], ping */                                    \
    X(O1, 0x14000, 16384)       /* silu(gate), then the output [R, N], pong */                                    \
    X(WORK, 0x18000, 16384)     /* x*x, then w * x * rstd [R, N] */                                               \
    X(ROWTMP, 0x1C000, 16384)   /* TROWSUM scratch [R, N] */                                                      \
    X(WEIGHT, 0x20000, 512)     /* weight [1, N] */                                                               \
    X(RSUM, 0x20200, 128)       /* sum(x*x) -> rstd, [R, 1] column-major */

#endif
