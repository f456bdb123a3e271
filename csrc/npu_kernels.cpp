// Ascend A2/A3 entry points of the PTO kernels, and their host launchers (a C ABI for ctypes).
//
// UNVERIFIED: this file has never been compiled by this project (no CANN here) nor run on an NPU.
// csrc/build.py --npu compiles it with CANN's bisheng for dav-c220-vec when ASCEND_HOME_PATH is
// set; interns2_fast/pto.py loads the result with ctypes and launches on torch_npu's current stream.
// The kernel bodies are the same headers the CPU simulator runs (gdn_decode.hpp, norm_gated.hpp);
// only the entry points below are NPU-specific.
#include <cstdint>

#if defined(__CCE_AICORE__) && defined(__DAV_C220_VEC__)
#include "gdn_decode.hpp"
#include "norm_gated.hpp"
#define I2F_DEVICE_PASS 1
#endif

#define I2F_GM __gm__ uint8_t *

extern "C" __global__ __aicore__ void i2f_gdn_decode_kernel(I2F_GM q, I2F_GM k, I2F_GM v, I2F_GM a, I2F_GM b,
                                                              I2F_GM A_log, I2F_GM dt_bias, I2F_GM state, I2F_GM o,
                                                              int32_t B, int32_t Hk, int32_t Hv, float scale,
                                                              int32_t l2norm)
{
#ifdef I2F_DEVICE_PASS
    using F = __gm__ float *;
    const i2f::gdn::Args args{(F)q, (F)k, (F)v, (F)a, (F)b, (F)A_log, (F)dt_bias, (F)state, (F)o,
                              B, Hk, Hv, scale, l2norm};
    i2f::gdn::gdn_decode_body(args, static_cast<int32_t>(get_block_idx()), static_cast<int32_t>(get_block_num()));
#endif
}

extern "C" __global__ __aicore__ void i2f_norm_gated_kernel(I2F_GM x, I2F_GM gate, I2F_GM weight, I2F_GM out,
                                                             int32_t M, float eps)
{
#ifdef I2F_DEVICE_PASS
    using F = __gm__ float *;
    const i2f::norm::Args args{(F)x, (F)gate, (F)weight, (F)out, M, eps};
    i2f::norm::norm_gated_body(args, static_cast<int32_t>(get_block_idx()), static_cast<int32_t>(get_block_num()));
#endif
}

// Host side: enqueue on `stream` (torch_npu's current stream, an aclrtStream) over `cores` vector cores.
extern "C" int i2f_gdn_decode_launch(void *stream, uint32_t cores, void *q, void *k, void *v, void *a, void *b,
                                     void *A_log, void *dt_bias, void *state, void *o, int32_t B, int32_t Hk,
                                     int32_t Hv, float scale, int32_t l2norm)
{
    i2f_gdn_decode_kernel<<<cores, nullptr, stream>>>((I2F_GM)q, (I2F_GM)k, (I2F_GM)v, (I2F_GM)a, (I2F_GM)b,
                                                      (I2F_GM)A_log, (I2F_GM)dt_bias, (I2F_GM)state, (I2F_GM)o, B,
                                                      Hk, Hv, scale, l2norm);
    return 0;
}

extern "C" int i2f_norm_gated_launch(void *stream, uint32_t cores, void *x, void *gate, void *weight, void *out,
                                     int32_t M, float eps)
{
    i2f_norm_gated_kernel<<<cores, nullptr, stream>>>((I2F_GM)x, (I2F_GM)gate, (I2F_GM)weight, (I2F_GM)out, M, eps);
    return 0;
}
