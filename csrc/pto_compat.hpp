// Copyright: interns2_fast authors. Builds against CANN's PTO tile library (CANN Open Software
// License Agreement 2.0; see $PTO_ISA_HOME/LICENSE).
//
// The one place where the CPU simulator (-D__CPU_SIM) and the Ascend A2/A3 build (bisheng,
// dav-c220-vec, include/pto/npu/a2a3) differ. Each kernel source includes this header and is
// otherwise identical on both targets. The differences, and why:
//
//  1. Core index / count. On the NPU every vector core runs the kernel entry with `block_idx` and
//     `block_num` set by the launch. The simulator has no cores: the host wrapper calls the kernel
//     body once per virtual core (same index/count arguments), so the body takes them as arguments.
//  2. Pipe flags and masks. `set_flag`/`wait_flag` are empty macros in the simulator's stub and
//     only EVENT_ID0 is declared; `set_mask_norm`/`set_vector_mask` do not exist there. The
//     kernels use the PTO_EV(n) event ids and pto_init_vector_mask() from here.
//  3. TCOLSUM. The simulator implements TCOLSUM(dst, src); A2/A3 implements only
//     TCOLSUM(dst, src, tmp, isBinary) (a binary-tree sum through a tmp tile). pto_colsum() takes
//     the tmp tile on both and drops it on the simulator.
//  4. TRESHAPE. On A2/A3 it re-points the destination tile at the source's UB address (a view);
//     on the simulator it copies the bytes. Kernels take a reshaped view only after the source is
//     final and never write the source while the view is live, so both readings agree.
//  5. Tile storage. On A2/A3 a tile is a UB address (TASSIGN); in the simulator it owns an array
//     and TASSIGN is a no-op, so the simulator does NOT check the UB plan (addresses, overlap,
//     the 192 KB limit). The plan is checked by tests/csrc/test_ub_plan.py instead.
#ifndef INTERNS2_FAST_PTO_COMPAT_HPP
#define INTERNS2_FAST_PTO_COMPAT_HPP

#include <stdint.h>
#include <stddef.h>
#include <pto/pto-inst.hpp>

#ifdef __CPU_SIM
#define PTO_EV(n) (static_cast<event_t>(n))
#else
#define PTO_EV(n) (static_cast<event_t>(EVENT_ID0 + (n)))
#endif

namespace i2f {

// The Unified Buffer of an A2/A3 vector core, and the scratch PTO's own instructions use at
// TMP_UB_OFFSET (TROWEXPAND* with a column-vector operand broadcasts it there through vbrcb).
constexpr uint32_t UB_BYTES = 192 * 1024;
constexpr uint32_t UB_PTO_SCRATCH_OFFSET = pto::TMP_UB_OFFSET;
constexpr uint32_t UB_PTO_SCRATCH_BYTES = pto::TMP_UB_SIZE;
static_assert(UB_PTO_SCRATCH_OFFSET + UB_PTO_SCRATCH_BYTES == UB_BYTES, "PTO scratch expected at the top of UB");

AICORE inline void pto_init_vector_mask()
{
#ifndef __CPU_SIM
    set_mask_norm();
    set_vector_mask(-1, -1);
#endif
}

// Scalar reads of a Vec tile (GetValue) need the vector pipe to have finished writing it.
AICORE inline void pto_wait_vector_for_scalar()
{
    set_flag(PIPE_V, PIPE_S, PTO_EV(3));
    wait_flag(PIPE_V, PIPE_S, PTO_EV(3));
}

AICORE inline void pto_wait_mte2_for_vector(int ev)
{
    set_flag(PIPE_MTE2, PIPE_V, PTO_EV(ev));
    wait_flag(PIPE_MTE2, PIPE_V, PTO_EV(ev));
}

template <typename Dst, typename Src, typename Tmp>
AICORE inline void pto_colsum(Dst &dst, Src &src, Tmp &tmp)
{
#ifdef __CPU_SIM
    (void)tmp;
    pto::TCOLSUM(dst, src);
#else
    pto::TCOLSUM(dst, src, tmp, true);
#endif
}

// Place a tile at its UB plan slot. Slots are (offset, bytes) pairs from a kernel's *_ub.hpp; the
// tile type must fill the slot exactly, so the plan and the tile shapes cannot drift apart.
template <uint32_t Offset, uint32_t Bytes, typename TileT>
AICORE inline void pto_place(TileT &tile)
{
    static_assert(sizeof(typename TileT::DType) * TileT::Numel == Bytes, "tile does not match its UB plan slot");
    static_assert(Offset % 32 == 0 && Offset + Bytes <= UB_PTO_SCRATCH_OFFSET, "UB plan slot out of bounds");
    pto::TASSIGN(tile, Offset);
}

}  // namespace i2f

#endif
