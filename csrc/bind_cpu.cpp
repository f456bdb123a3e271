// pybind11 module over the PTO kernels built for the CPU simulator (-D__CPU_SIM).
//
// The kernels take raw fp32 buffers; interns2_fast/pto.py validates the tensors (fp32, contiguous,
// CPU, shapes) and passes their data pointers, so this module needs no libtorch. The simulator has
// no cores: each call runs the kernel body once per virtual vector core, in order, with the same
// (core index, core count) a launch on an Ascend A2/A3 chip would give (default 40, the vector-core
// count of an Ascend910_9362), so the work split is exercised as on the chip.
#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/pybind11.h>

#include "gdn_decode.hpp"
#include "norm_gated.hpp"

namespace py = pybind11;

namespace {

float *ptr(std::uintptr_t p) { return reinterpret_cast<float *>(p); }

void gdn_decode(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t a, std::uintptr_t b,
                std::uintptr_t A_log, std::uintptr_t dt_bias, std::uintptr_t state, std::uintptr_t o, int32_t B,
                int32_t Hk, int32_t Hv, float scale, bool l2norm, int32_t cores)
{
    if (B < 0 || Hk <= 0 || Hv <= 0 || Hv % Hk != 0 || Hv > i2f::gdn::HV_MAX || cores <= 0) {
        throw std::invalid_argument("gdn_decode: need B >= 0, Hk > 0, Hv a multiple of Hk and at most " +
                                    std::to_string(i2f::gdn::HV_MAX) + ", cores > 0");
    }
    i2f::gdn::Args args{ptr(q), ptr(k), ptr(v), ptr(a), ptr(b), ptr(A_log), ptr(dt_bias), ptr(state), ptr(o),
                        B, Hk, Hv, scale, l2norm ? 1 : 0};
    py::gil_scoped_release nogil;
    for (int32_t blk = 0; blk < cores; ++blk) {
        i2f::gdn::gdn_decode_body(args, blk, cores);
    }
}

void rms_norm_gated(std::uintptr_t x, std::uintptr_t gate, std::uintptr_t weight, std::uintptr_t out, int32_t M,
                    float eps, int32_t cores)
{
    if (M < 0 || cores <= 0) {
        throw std::invalid_argument("rms_norm_gated: need M >= 0 and cores > 0");
    }
    i2f::norm::Args args{ptr(x), ptr(gate), ptr(weight), ptr(out), M, eps};
    py::gil_scoped_release nogil;
    for (int32_t blk = 0; blk < cores; ++blk) {
        i2f::norm::norm_gated_body(args, blk, cores);
    }
}

}  // namespace

PYBIND11_MODULE(_pto_sim, m)
{
    m.doc() = "interns2_fast PTO kernels on CANN PTO-ISA's CPU simulator (fp32)";
    m.attr("K") = i2f::gdn::K;
    m.attr("V") = i2f::gdn::V;
    m.attr("HV_MAX") = i2f::gdn::HV_MAX;
    m.attr("NORM_N") = i2f::norm::N;
    m.attr("TARGET") = "cpu-sim";
    m.def("gdn_decode", &gdn_decode, "GDN decode step with gating + q/k L2 norm; state updated in place",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("a"), py::arg("b"), py::arg("A_log"),
          py::arg("dt_bias"), py::arg("state"), py::arg("o"), py::arg("B"), py::arg("Hk"), py::arg("Hv"),
          py::arg("scale"), py::arg("l2norm"), py::arg("cores"));
    m.def("rms_norm_gated", &rms_norm_gated, "gated RMSNorm over rows of N", py::arg("x"), py::arg("gate"),
          py::arg("weight"), py::arg("out"), py::arg("M"), py::arg("eps"), py::arg("cores"));
}
