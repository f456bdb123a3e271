// GDN (gated delta rule) decode step, one token per sequence, as a PTO manual-mode kernel.
// One source for the CPU simulator and Ascend A2/A3 (differences: pto_compat.hpp).
//
// Semantics: interns2_fast.ops.fused_recurrent_gated_delta_rule_with_gating at T = 1, fp32,
// use_qk_l2norm_in_kernel selectable, state updated in place. For sequence b and value head h
// (key head hk = h / (Hv / Hk), read in place: q/k are never repeated):
//     g    = -exp(A_log[h]) * softplus(a[b,h] + dt_bias[h]);  d = exp(g);  beta = sigmoid(b[b,h])
//     q, k = l2norm(q[b,hk]), l2norm(k[b,hk]) (optional);      q = q * scale
//     S    = d * S;   u = beta * (v - S^T k);   S = S + k u^T;   o = S^T q
// the order of operations of transformers' torch_recurrent_gated_delta_rule.
//
// Work split: the B * Hv (sequence, value head) tasks are cut into contiguous runs, one per vector
// core. A task streams its [K, V] state in column blocks of BV (every column of S is independent
// in this step), ping-ponging two state buffers so the load of block i+1 overlaps the vector work
// on block i. q/k are normalised once per (sequence, key head) and the gates once per sequence.
// softplus(x) is computed as max(x, 0) + log(1 + exp(-|x|)), which equals torch's thresholded
// softplus in fp32 (for x > 20 the log term is below half an ulp of x).
#ifndef INTERNS2_FAST_GDN_DECODE_HPP
#define INTERNS2_FAST_GDN_DECODE_HPP

#include "pto_compat.hpp"
#include "gdn_decode_ub.hpp"

namespace i2f::gdn {

using namespace pto;

constexpr int K = I2F_GDN_DECODE_K;
constexpr int V = I2F_GDN_DECODE_V;
constexpr int BV = I2F_GDN_DECODE_BV;
constexpr int NB = V / BV;
constexpr int HV_MAX = I2F_GDN_DECODE_HV_MAX;
static_assert(V % BV == 0, "BV must divide V");

#define I2F_SLOT(name, off, bytes) constexpr uint32_t name##_OFF = off, name##_BYTES = bytes;
I2F_GDN_DECODE_UB(I2F_SLOT)
#undef I2F_SLOT

using RowK = Tile<TileType::Vec, float, 1, K>;
using ColK = Tile<TileType::Vec, float, K, 1, BLayout::ColMajor>;
using Scalar1 = Tile<TileType::Vec, float, 1, 8, BLayout::RowMajor, 1, 1>;
using StateBlk = Tile<TileType::Vec, float, K, BV>;
using ColTmp = Tile<TileType::Vec, float, K / 2, BV>;
using RowBV = Tile<TileType::Vec, float, 1, BV>;
using HeadRow = Tile<TileType::Vec, float, 1, HV_MAX, BLayout::RowMajor, 1, DYNAMIC>;

using GmStateBlk = GlobalTensor<float, Shape<1, 1, 1, K, BV>, Stride<1, 1, 1, V, 1>>;
using GmRowBV = GlobalTensor<float, Shape<1, 1, 1, 1, BV>, Stride<1, 1, 1, BV, 1>>;
using GmRowK = GlobalTensor<float, Shape<1, 1, 1, 1, K>, Stride<1, 1, 1, K, 1>>;
using GmHeads = GlobalTensor<float, Shape<1, 1, 1, 1, DYNAMIC>, Stride<1, 1, 1, 1, 1>>;

struct Args {
    __gm__ float *q;        // [B, Hk, K]   (the T = 1 token)
    __gm__ float *k;        // [B, Hk, K]
    __gm__ float *v;        // [B, Hv, V]
    __gm__ float *a;        // [B, Hv]      raw gate projection
    __gm__ float *b;        // [B, Hv]      raw beta projection
    __gm__ float *A_log;    // [Hv]
    __gm__ float *dt_bias;  // [Hv]
    __gm__ float *state;    // [B, Hv, K, V] fp32, read and written in place
    __gm__ float *o;        // [B, Hv, V]
    int32_t B, Hk, Hv;
    float scale;
    int32_t l2norm;
};

// L2-normalise (optional) and scale a [1, K] row in UB; returns after the vector pipe is done.
AICORE inline void normalise_rows(RowK &q, RowK &k, RowK &sq, RowK &rowtmp, Scalar1 &qsum, Scalar1 &ksum,
                                  float scale, bool l2norm)
{
    if (l2norm) {
        TMUL(sq, q, q);
        pipe_barrier(PIPE_V);
        TROWSUM(qsum, sq, rowtmp);
        pipe_barrier(PIPE_V);
        TMUL(sq, k, k);
        pipe_barrier(PIPE_V);
        TROWSUM(ksum, sq, rowtmp);
        pipe_barrier(PIPE_V);
        TADDS(qsum, qsum, 1e-6f);
        TADDS(ksum, ksum, 1e-6f);
        pipe_barrier(PIPE_V);
        TRSQRT(qsum, qsum);
        TRSQRT(ksum, ksum);
        pto_wait_vector_for_scalar();
        const float rq = qsum.GetValue(0);
        const float rk = ksum.GetValue(0);
        TMULS(q, q, rq);
        TMULS(k, k, rk);
        pipe_barrier(PIPE_V);
    }
    TMULS(q, q, scale);
    pipe_barrier(PIPE_V);
}

AICORE inline void gdn_decode_body(const Args &p, int32_t blk, int32_t nblk)
{
    pto_init_vector_mask();
    StateBlk S[2], W;
    ColTmp coltmp;
    RowK qrow, krow, sq, rowtmp;
    ColK qcol, kcol;
    Scalar1 qsum, ksum;
    RowBV vblk[2], oblk[2], ks, u;
    HeadRow ga(p.Hv), gb(p.Hv), gt(p.Hv), alog(p.Hv), dtb(p.Hv);
    pto_place<STATE0_OFF, STATE0_BYTES>(S[0]);
    pto_place<STATE1_OFF, STATE1_BYTES>(S[1]);
    pto_place<WORK_OFF, WORK_BYTES>(W);
    pto_place<COLTMP_OFF, COLTMP_BYTES>(coltmp);
    pto_place<QROW_OFF, QROW_BYTES>(qrow);
    pto_place<KROW_OFF, KROW_BYTES>(krow);
    pto_place<SQ_OFF, SQ_BYTES>(sq);
    pto_place<ROWTMP_OFF, ROWTMP_BYTES>(rowtmp);
    pto_place<QSUM_OFF, QSUM_BYTES>(qsum);
    pto_place<KSUM_OFF, KSUM_BYTES>(ksum);
    pto_place<VBLK0_OFF, VBLK0_BYTES>(vblk[0]);
    pto_place<VBLK1_OFF, VBLK1_BYTES>(vblk[1]);
    pto_place<OBLK0_OFF, OBLK0_BYTES>(oblk[0]);
    pto_place<OBLK1_OFF, OBLK1_BYTES>(oblk[1]);
    pto_place<KS_OFF, KS_BYTES>(ks);
    pto_place<U_OFF, U_BYTES>(u);
    pto_place<GA_OFF, GA_BYTES>(ga);
    pto_place<GB_OFF, GB_BYTES>(gb);
    pto_place<GT_OFF, GT_BYTES>(gt);
    pto_place<ALOG_OFF, ALOG_BYTES>(alog);
    pto_place<DTB_OFF, DTB_BYTES>(dtb);

    const int32_t tasks = p.B * p.Hv;
    const int32_t per = (tasks + nblk - 1) / nblk;
    const int32_t first = blk * per;
    const int32_t last = first + per < tasks ? first + per : tasks;
    if (first >= last) {
        return;
    }
    const int32_t G = p.Hv / p.Hk;

    // exp(A_log) and dt_bias, once per core.
    GmHeads gmAlog(p.A_log, Shape<1, 1, 1, 1, DYNAMIC>(p.Hv));
    GmHeads gmDtb(p.dt_bias, Shape<1, 1, 1, 1, DYNAMIC>(p.Hv));
    TLOAD(alog, gmAlog);
    TLOAD(dtb, gmDtb);
    pto_wait_mte2_for_vector(2);
    TEXP(alog, alog);
    pipe_barrier(PIPE_V);

    float decay[HV_MAX], beta[HV_MAX];
    int32_t cur_b = -1, cur_hk = -1;

    // Every buffer starts free: the first wait on each of these flags passes.
    set_flag(PIPE_MTE3, PIPE_MTE2, PTO_EV(0));
    set_flag(PIPE_MTE3, PIPE_MTE2, PTO_EV(1));
    set_flag(PIPE_V, PIPE_MTE2, PTO_EV(0));
    set_flag(PIPE_V, PIPE_MTE2, PTO_EV(1));
    set_flag(PIPE_MTE3, PIPE_V, PTO_EV(0));
    set_flag(PIPE_MTE3, PIPE_V, PTO_EV(1));

    int32_t it = 0;
    for (int32_t t = first; t < last; ++t) {
        const int32_t bi = t / p.Hv, h = t % p.Hv, hk = h / G;
        if (bi != cur_b || hk != cur_hk) {
            pipe_barrier(PIPE_ALL);  // everything that read the per-head tiles has finished
            GmRowK gmq(p.q + (static_cast<int64_t>(bi) * p.Hk + hk) * K);
            GmRowK gmk(p.k + (static_cast<int64_t>(bi) * p.Hk + hk) * K);
            TLOAD(qrow, gmq);
            TLOAD(krow, gmk);
            if (bi != cur_b) {
                GmHeads gma(p.a + static_cast<int64_t>(bi) * p.Hv, Shape<1, 1, 1, 1, DYNAMIC>(p.Hv));
                GmHeads gmb(p.b + static_cast<int64_t>(bi) * p.Hv, Shape<1, 1, 1, 1, DYNAMIC>(p.Hv));
                TLOAD(ga, gma);
                TLOAD(gb, gmb);
                pto_wait_mte2_for_vector(2);
                // g = -exp(A_log) * softplus(a + dt_bias); decay = exp(g)
                TADD(ga, ga, dtb);
                pipe_barrier(PIPE_V);
                TABS(gt, ga);
                pipe_barrier(PIPE_V);
                TMULS(gt, gt, -1.0f);
                pipe_barrier(PIPE_V);
                TEXP(gt, gt);
                pipe_barrier(PIPE_V);
                TADDS(gt, gt, 1.0f);
                pipe_barrier(PIPE_V);
                TLOG(gt, gt);
                TMAXS(ga, ga, 0.0f);
                pipe_barrier(PIPE_V);
                TADD(ga, ga, gt);
                pipe_barrier(PIPE_V);
                TMUL(ga, ga, alog);
                pipe_barrier(PIPE_V);
                TMULS(ga, ga, -1.0f);
                pipe_barrier(PIPE_V);
                TEXP(ga, ga);
                // beta = sigmoid(b) = 1 / (1 + exp(-b))
                TMULS(gb, gb, -1.0f);
                pipe_barrier(PIPE_V);
                TEXP(gb, gb);
                pipe_barrier(PIPE_V);
                TADDS(gb, gb, 1.0f);
                pipe_barrier(PIPE_V);
                TRECIP(gt, gb);
                pto_wait_vector_for_scalar();
                for (int32_t j = 0; j < p.Hv; ++j) {
                    decay[j] = ga.GetValue(j);
                    beta[j] = gt.GetValue(j);
                }
                cur_b = bi;
            } else {
                pto_wait_mte2_for_vector(2);
            }
            normalise_rows(qrow, krow, sq, rowtmp, qsum, ksum, p.scale, p.l2norm != 0);
            TRESHAPE(qcol, qrow);  // [1, K] row -> [K, 1] column: a view on the NPU, a copy in the simulator
            TRESHAPE(kcol, krow);
            cur_hk = hk;
        }
        const float d = decay[h], bt = beta[h];
        const int64_t head = static_cast<int64_t>(bi) * p.Hv + h;
        for (int32_t j = 0; j < NB; ++j, ++it) {
            const int pp = it & 1;
            GmStateBlk gmS(p.state + head * K * V + j * BV);
            GmRowBV gmv(p.v + head * V + j * BV);
            GmRowBV gmo(p.o + head * V + j * BV);
            wait_flag(PIPE_MTE3, PIPE_MTE2, PTO_EV(pp));
            TLOAD(S[pp], gmS);
            wait_flag(PIPE_V, PIPE_MTE2, PTO_EV(pp));
            TLOAD(vblk[pp], gmv);
            pto_wait_mte2_for_vector(pp);

            TMULS(S[pp], S[pp], d);             // S = d S
            pipe_barrier(PIPE_V);
            TROWEXPANDMUL(W, S[pp], kcol);      // W[i, :] = k_i S[i, :]
            pipe_barrier(PIPE_V);
            pto_colsum(ks, W, coltmp);          // ks = S^T k
            pipe_barrier(PIPE_V);
            TSUB(u, vblk[pp], ks);
            pipe_barrier(PIPE_V);
            set_flag(PIPE_V, PIPE_MTE2, PTO_EV(pp));  // vblk[pp] consumed
            TMULS(u, u, bt);                    // u = beta (v - S^T k)
            pipe_barrier(PIPE_V);
            TCOLEXPAND(W, u);                   // W[i, :] = u
            pipe_barrier(PIPE_V);
            TROWEXPANDMUL(W, W, kcol);          // W = k u^T
            pipe_barrier(PIPE_V);
            TADD(S[pp], S[pp], W);              // S = S + k u^T
            pipe_barrier(PIPE_V);
            TROWEXPANDMUL(W, S[pp], qcol);      // W[i, :] = q_i S[i, :]
            pipe_barrier(PIPE_V);
            wait_flag(PIPE_MTE3, PIPE_V, PTO_EV(pp));  // oblk[pp] stored
            pto_colsum(oblk[pp], W, coltmp);    // o = S^T q
            set_flag(PIPE_V, PIPE_MTE3, PTO_EV(pp));
            wait_flag(PIPE_V, PIPE_MTE3, PTO_EV(pp));
            TSTORE(gmS, S[pp]);
            TSTORE(gmo, oblk[pp]);
            set_flag(PIPE_MTE3, PIPE_MTE2, PTO_EV(pp));
            set_flag(PIPE_MTE3, PIPE_V, PTO_EV(pp));
        }
    }
    wait_flag(PIPE_MTE3, PIPE_MTE2, PTO_EV(0));
    wait_flag(PIPE_MTE3, PIPE_MTE2, PTO_EV(1));
    wait_flag(PIPE_V, PIPE_MTE2, PTO_EV(0));
    wait_flag(PIPE_V, PIPE_MTE2, PTO_EV(1));
    wait_flag(PIPE_MTE3, PIPE_V, PTO_EV(0));
    wait_flag(PIPE_MTE3, PIPE_V, PTO_EV(1));
    pipe_barrier(PIPE_ALL);
}

}  // namespace i2f::gdn

#endif
