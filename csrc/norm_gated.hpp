// Gated RMSNorm (norm before gate) as a PTO manual-mode kernel; one source for the CPU simulator
// and Ascend A2/A3 (differences: pto_compat.hpp).
//
// Semantics: interns2_fast.ops.rms_norm_gated for fp32 x, gate [M, N], weight [N]:
//     out = (weight * (x * rsqrt(mean(x^2) + eps))) * silu(gate),  silu(g) = g / (1 + exp(-g))
// the order of operations of transformers' Qwen3_5MoeRMSNormGated.
//
// Work split: the M rows are cut into blocks of R rows (the last one partial); contiguous runs of
// blocks go to the vector cores. x / gate / out are ping-ponged so the loads of block i+1 overlap
// the vector work on block i.
#ifndef INTERNS2_FAST_NORM_GATED_HPP
#define INTERNS2_FAST_NORM_GATED_HPP

#include "pto_compat.hpp"
#include "norm_gated_ub.hpp"

namespace i2f::norm {

using namespace pto;

constexpr int N = I2F_NORM_GATED_N;
constexpr int R = I2F_NORM_GATED_R;

#define I2F_SLOT(name, off, bytes) constexpr uint32_t name##_OFF = off, name##_BYTES = bytes;
I2F_NORM_GATED_UB(I2F_SLOT)
#undef I2F_SLOT

using Rows = Tile<TileType::Vec, float, R, N, BLayout::RowMajor, DYNAMIC, N>;
using RowsFull = Tile<TileType::Vec, float, R, N>;
using RowN = Tile<TileType::Vec, float, 1, N>;
using ColR = Tile<TileType::Vec, float, R, 1, BLayout::ColMajor, DYNAMIC, 1>;
using RowR = Tile<TileType::Vec, float, 1, R>;

using GmRows = GlobalTensor<float, Shape<1, 1, 1, DYNAMIC, N>, Stride<1, 1, 1, N, 1>>;
using GmRowN = GlobalTensor<float, Shape<1, 1, 1, 1, N>, Stride<1, 1, 1, N, 1>>;

struct Args {
    __gm__ float *x;       // [M, N]
    __gm__ float *gate;    // [M, N]
    __gm__ float *weight;  // [N]
    __gm__ float *out;     // [M, N]
    int32_t M;
    float eps;
};

AICORE inline void norm_gated_body(const Args &p, int32_t blk, int32_t nblk)
{
    pto_init_vector_mask();
    const int32_t blocks = (p.M + R - 1) / R;
    const int32_t per = (blocks + nblk - 1) / nblk;
    const int32_t first = blk * per;
    const int32_t last = first + per < blocks ? first + per : blocks;
    if (first >= last) {
        return;
    }
    RowN w;
    RowsFull rowtmp;
    pto_place<WEIGHT_OFF, WEIGHT_BYTES>(w);
    pto_place<ROWTMP_OFF, ROWTMP_BYTES>(rowtmp);
    GmRowN gmw(p.weight);
    TLOAD(w, gmw);
    pto_wait_mte2_for_vector(2);

    set_flag(PIPE_V, PIPE_MTE2, PTO_EV(0));
    set_flag(PIPE_V, PIPE_MTE2, PTO_EV(1));
    set_flag(PIPE_MTE3, PIPE_V, PTO_EV(0));
    set_flag(PIPE_MTE3, PIPE_V, PTO_EV(1));
    int32_t it = 0;
    for (int32_t blkRow = first; blkRow < last; ++blkRow, ++it) {
        const int pp = it & 1;
        const int32_t row0 = blkRow * R;
        const int32_t r = p.M - row0 < R ? p.M - row0 : R;
        Rows x(r), g(r), o(r), work(r);
        ColR rsum(r), rstd(r);
        RowR rrow;
        if (pp == 0) {
            pto_place<X0_OFF, X0_BYTES>(x);
            pto_place<G0_OFF, G0_BYTES>(g);
            pto_place<O0_OFF, O0_BYTES>(o);
        } else {
            pto_place<X1_OFF, X1_BYTES>(x);
            pto_place<G1_OFF, G1_BYTES>(g);
            pto_place<O1_OFF, O1_BYTES>(o);
        }
        pto_place<WORK_OFF, WORK_BYTES>(work);
        pto_place<RSUM_OFF, RSUM_BYTES>(rsum);
        GmRows gmx(p.x + static_cast<int64_t>(row0) * N, Shape<1, 1, 1, DYNAMIC, N>(r));
        GmRows gmg(p.gate + static_cast<int64_t>(row0) * N, Shape<1, 1, 1, DYNAMIC, N>(r));
        GmRows gmo(p.out + static_cast<int64_t>(row0) * N, Shape<1, 1, 1, DYNAMIC, N>(r));

        wait_flag(PIPE_V, PIPE_MTE2, PTO_EV(pp));
        TLOAD(x, gmx);
        TLOAD(g, gmg);
        pto_wait_mte2_for_vector(pp);

        TMUL(work, x, x);
        pipe_barrier(PIPE_V);
        TROWSUM(rsum, work, rowtmp);           // sum(x^2) per row, [R, 1]
        pipe_barrier(PIPE_V);
        TRESHAPE(rrow, rsum);                  // the same R floats as a row (unary ops need row-major)
        TMULS(rrow, rrow, 1.0f / N);           // mean
        pipe_barrier(PIPE_V);
        TADDS(rrow, rrow, p.eps);
        pipe_barrier(PIPE_V);
        TRSQRT(rrow, rrow);
        pipe_barrier(PIPE_V);
        TRESHAPE(rstd, rrow);                  // back to a column for the row broadcast
        TROWEXPANDMUL(work, x, rstd);          // x * rstd
        pipe_barrier(PIPE_V);
        TCOLEXPANDMUL(work, work, w);          // weight * (x * rstd)
        wait_flag(PIPE_MTE3, PIPE_V, PTO_EV(pp));  // o[pp] stored
        TMULS(o, g, -1.0f);
        pipe_barrier(PIPE_V);
        TEXP(o, o);
        pipe_barrier(PIPE_V);
        TADDS(o, o, 1.0f);
        pipe_barrier(PIPE_V);
        TDIV(o, g, o);                         // silu(gate) = gate / (1 + exp(-gate))
        pipe_barrier(PIPE_V);
        set_flag(PIPE_V, PIPE_MTE2, PTO_EV(pp));  // x[pp], g[pp] consumed
        TMUL(o, work, o);
        set_flag(PIPE_V, PIPE_MTE3, PTO_EV(pp));
        wait_flag(PIPE_V, PIPE_MTE3, PTO_EV(pp));
        TSTORE(gmo, o);
        set_flag(PIPE_MTE3, PIPE_V, PTO_EV(pp));
    }
    wait_flag(PIPE_V, PIPE_MTE2, PTO_EV(0));
    wait_flag(PIPE_V, PIPE_MTE2, PTO_EV(1));
    wait_flag(PIPE_MTE3, PIPE_V, PTO_EV(0));
    wait_flag(PIPE_MTE3, PIPE_V, PTO_EV(1));
    pipe_barrier(PIPE_ALL);
}

}  // namespace i2f::norm

#endif
