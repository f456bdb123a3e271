// UB plan of the GDN decode kernel (gdn_decode.hpp), for its one compiled configuration:
// K = V = 128 (Intern-S2 key/value head dim), BV = 64 (state column block), HV_MAX = 64 (value
// heads per sequence the gating rows hold). fp32 throughout. Offsets and sizes in bytes.
//
// Rules (checked at compile time by i2f::pto_place and by tests/csrc/test_ub_plan.py, which also
// recomputes every size from the shapes): 32-byte aligned, non-overlapping, all below
// TMP_UB_OFFSET = 184 KiB; [184 KiB, 192 KiB) is PTO's own scratch (TROWEXPANDMUL with a
// column-vector operand broadcasts it there). The views QCOL / KCOL ([K, 1] column-major) are
// TRESHAPE aliases of QROW / KROW and take no slot of their own.
//
// Format (parsed by the test; keep one X(...) per line): X(name, offset, bytes)  // shape
#ifndef INTERNS2_FAST_GDN_DECODE_UB_HPP
#define INTERNS2_FAST_GDN_DECODE_UB_HPP

#define I2F_GDN_DECODE_K 128
#define I2F_GDN_DECODE_V 128
#define I2F_GDN_DECODE_BV 64
#define I2F_GDN_DECODE_HV_MAX 64

#define I2F_GDN_DECODE_UB(X)                                                                                      \
    X(STATE0, 0x00000, 32768)   /* S column block [K, BV], ping */                                               \
    X(STATE1, 0x08000, 32768)   /* S column block [K, BV], pong */                                               \
    X(WORK, 0x10000, 32768)     /* products S*k, k (x) u, S*q [K, BV] */                                          \
    X(COLTMP, 0x18000, 16384)   /* TCOLSUM binary-tree scratch [K/2, BV] */                                       \
    X(QROW, 0x1C000, 512)       /* q of the key head, [1, K] (L2-normalised, scaled) */                           \
    X(KROW, 0x1C200, 512)       /* k of the key head, [1, K] (L2-normalised) */                                   \
    X(SQ, 0x1C400, 512)         /* q*q or k*k [1, K] */                                                           \
    X(ROWTMP, 0x1C600, 512)     /* TROWSUM scratch [1, K] */                                                      \
    X(QSUM, 0x1C800, 32)        /* sum(q*q) [1, 8], valid [1, 1] */                                               \
    X(KSUM, 0x1C820, 32)        /* sum(k*k) [1, 8], valid [1, 1] */                                               \
    X(VBLK0, 0x1C840, 256)      /* v column block [1, BV], ping */                                                \
    X(VBLK1, 0x1C940, 256)      /* v column block [1, BV], pong */                                                \
    X(OBLK0, 0x1CA40, 256)      /* o column block [1, BV], ping */                                                \
    X(OBLK1, 0x1CB40, 256)      /* o column block [1, BV], pong */                                                \
    X(KS, 0x1CC40, 256)         /* (d S)^T k  [1, BV] */                                                          \
    X(U, 0x1CD40, 256)          /* beta (v - (d S)^T k)  [1, BV] */                                               \
    X(GA, 0x1CE40, 256)         /* a + dt_bias, then softplus, then g, then exp(g) [1, HV_MAX] */                 \
    X(GB, 0x1CF40, 256)         /* b, then sigmoid(b) [1, HV_MAX] */                                              \
    X(GT, 0x1D040, 256)         /* softplus / sigmoid scratch [1, HV_MAX] */                                      \
    X(ALOG, 0x1D140, 256)       /* exp(A_log) [1, HV_MAX] */                                                      \
    X(DTB, 0x1D240, 256)        /* dt_bias [1, HV_MAX] */

#endif
