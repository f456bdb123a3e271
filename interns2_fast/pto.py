"""backend="pto": the PTO tile-library kernels of csrc/ (CANN's PTO-ISA), loaded lazily.

Two builds of the same kernel sources (see csrc/build.py):
  * CPU tensors -> the CPU-simulator extension `_pto_sim` (clang++ >= 15, -D__CPU_SIM): proves the
    kernels' arithmetic, fp32 only (the simulator's bf16 is fp16 with this toolchain).
  * NPU tensors -> libi2f_pto_npu.so (CANN's bisheng, dav-c220-vec) through ctypes on torch_npu's
    current stream. Never built nor run by this project: unverified on hardware.
`auto` never picks this backend (interns2_fast.device.auto_backends does not list it): no NPU
timing of it exists.

    python -m interns2_fast.pto build [--force] [--if-available] [--npu]
    python -m interns2_fast.pto info
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

_ROOT = Path(__file__).resolve().parent.parent
_BUILD_SCRIPT = _ROOT / "csrc" / "build.py"


@functools.lru_cache(maxsize=None)
def _builder() -> ModuleType | None:
    """csrc/build.py as a module (None when this install has no csrc/, e.g. a wheel)."""
    if not _BUILD_SCRIPT.is_file():
        return None
    spec = importlib.util.spec_from_file_location("interns2_fast_pto_build", _BUILD_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


_HOW_TO_BUILD = ("build it with `python -m interns2_fast.pto build` (needs clang++ >= 15, e.g. "
                 "`apt-get install -y clang-16`, and PTO-ISA's headers via PTO_ISA_HOME)")


def _sim_path() -> Path | None:
    b = _builder()
    return None if b is None else b.sim_module_path()


@functools.lru_cache(maxsize=None)
def _load_sim() -> ModuleType:
    path = _sim_path()
    if path is None:
        raise RuntimeError("backend 'pto': this install has no csrc/ (install from a source checkout)")
    if not path.is_file():
        raise RuntimeError(f"backend 'pto': the PTO simulator extension is not built ({path} missing); {_HOW_TO_BUILD}")
    spec = importlib.util.spec_from_file_location("_pto_sim", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def sim_available() -> bool:
    """True when the CPU-simulator extension is built and imports."""
    try:
        _load_sim()
    except (RuntimeError, ImportError, OSError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def _load_npu() -> ctypes.CDLL:
    b = _builder()
    path = None if b is None else b.npu_library_path()
    if path is None or not path.is_file():
        raise RuntimeError(
            "backend 'pto' on an NPU: libi2f_pto_npu.so is not built; on a machine with CANN run "
            "`python -m interns2_fast.pto build --npu` (that path is unverified on hardware)"
        )
    lib = ctypes.CDLL(str(path))
    p, i32, u32, f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_uint32, ctypes.c_float
    lib.i2f_gdn_decode_launch.argtypes = [p, u32] + [p] * 9 + [i32, i32, i32, f32, i32]
    lib.i2f_gdn_decode_launch.restype = ctypes.c_int
    lib.i2f_norm_gated_launch.argtypes = [p, u32, p, p, p, p, i32, f32]
    lib.i2f_norm_gated_launch.restype = ctypes.c_int
    return lib


def state() -> str:
    """One line for `interns2-fast info`."""
    b = _builder()
    if b is None:
        return "no csrc/ in this install"
    info = b.read_info()
    path = b.sim_module_path()
    if path.is_file() and sim_available():
        sim = info.get("sim", {})
        cpu = (f"cpu-sim built ({Path(sim.get('compiler', '?')).name}, {sim.get('seconds', '?')} s build, fp32; "
               "backend='pto' on CPU tensors)")
    else:
        try:
            b.find_pto_isa_home()
            b.find_clang()
            cpu = "cpu-sim not built (`python -m interns2_fast.pto build`)"
        except b.Unavailable as exc:
            cpu = f"cpu-sim not buildable here ({exc})"
    npu = "npu built, unverified on hardware" if b.npu_library_path().is_file() else "npu unbuilt, unverified on hardware"
    return f"{cpu}; {npu}; auto never selects it"


# --- the ops ------------------------------------------------------------------------------------


def _need(op: str, cond: bool, what: str) -> None:
    if not cond:
        raise NotImplementedError(f"{op}[pto]: {what}")


def decode_problem(q, v, cu_seqlens, **tensors) -> str | None:
    """Why the PTO decode kernel cannot take these arguments (None: it can) — its capability predicate."""
    T, K, Hv, V = q.shape[1], q.shape[3], v.shape[2], v.shape[3]
    checks = [(cu_seqlens is None, "cu_seqlens is not supported (decode batches are dense [B, 1])"),
              (T == 1, f"one token per sequence (T == 1), got T = {T}"),
              (K == 128 and V == 128, f"compiled for K = V = 128 (Intern-S2), got K = {K}, V = {V}"),
              (Hv <= 64, f"at most 64 value heads, got {Hv}")]
    checks += [(t.dtype == torch.float32, f"{n} must be float32 (the kernels are fp32), got {t.dtype}")
               for n, t in dict(q=q, v=v, **tensors).items() if isinstance(t, torch.Tensor)]
    return next((what for ok, what in checks if not ok), None)


def norm_problem(x, gate, weight, **_) -> str | None:
    """Why the PTO gated-norm kernel cannot take these arguments (None: it can)."""
    checks = [(x.shape[-1] == 128, f"compiled for rows of N = 128 (the value head dim), got {x.shape[-1]}")]
    checks += [(t.dtype == torch.float32, f"{n} must be float32 (the kernels are fp32), got {t.dtype}")
               for n, t in (("x", x), ("gate", gate), ("weight", weight))]
    return next((what for ok, what in checks if not ok), None)


def device_problem(device: torch.device) -> str | None:
    """Why the PTO kernels cannot run on `device` here (None: they can)."""
    if device.type == "cpu":
        return None if sim_available() else f"the PTO simulator extension is not built; {_HOW_TO_BUILD}"
    if device.type == "npu":
        try:
            _load_npu()
        except Exception as exc:  # noqa: BLE001
            return str(exc)
        return None
    return f"runs on CPU tensors (simulator) or NPU tensors, got a {device.type} tensor"


def _device_kind(op: str, t: torch.Tensor) -> str:
    if t.device.type == "cpu":
        return "cpu"
    if t.device.type == "npu":
        return "npu"
    raise NotImplementedError(f"{op}[pto]: runs on CPU tensors (simulator) or NPU tensors, got {t.device}")


def _npu_stream_and_cores(t: torch.Tensor):
    """(aclrtStream of torch_npu's current stream as a ctypes parameter, vector-core count)."""
    from . import device as _device

    stream = torch.npu.current_stream(t.device)._as_parameter_  # type: ignore[attr-defined]
    try:
        cores = _device.vector_cores(t.device)  # asks triton-ascend's driver
    except Exception:  # noqa: BLE001  (no triton-ascend: Ascend910_9362's vector-core count)
        cores = SIM_CORES
    return stream, cores


#: Virtual vector cores the simulator runs the kernel body over (Ascend910_9362 has 40).
SIM_CORES = 40


def fused_recurrent_gated_delta_rule_with_gating(
    q, k, v, a, b, A_log, dt_bias, *, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, inplace_final_state=False, cu_seqlens=None,
):
    """The decode step (T = 1) with gating and q/k L2 norm fused; see interns2_fast.ops (validated there)."""
    op = "fused_recurrent_gated_delta_rule_with_gating"
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    kind = _device_kind(op, q)
    _need(op, cu_seqlens is None, "cu_seqlens is not supported (decode batches are dense [B, 1])")
    _need(op, T == 1, f"one token per sequence (T == 1), got T = {T}")
    _need(op, K == 128 and V == 128, f"compiled for K = V = 128 (Intern-S2), got K = {K}, V = {V}")
    _need(op, Hv <= 64, f"at most 64 value heads, got {Hv}")
    for name, t in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b), ("A_log", A_log), ("dt_bias", dt_bias)):
        _need(op, t.dtype == torch.float32, f"{name} must be float32 (the kernels are fp32), got {t.dtype}")
    scale = K**-0.5 if scale is None else float(scale)
    if initial_state is None:
        S = torch.zeros(B, Hv, K, V, dtype=torch.float32, device=q.device)
    elif inplace_final_state:
        S = initial_state  # contiguous, checked by the op
    else:
        S = initial_state.contiguous().clone()
    o = torch.empty(B, 1, Hv, V, dtype=torch.float32, device=q.device)
    ins = [x.contiguous() for x in (q, k, v, a, b, A_log, dt_bias)]
    if B > 0:
        ptrs = [x.data_ptr() for x in ins] + [S.data_ptr(), o.data_ptr()]
        if kind == "cpu":
            _load_sim().gdn_decode(*ptrs, B, Hk, Hv, scale, bool(use_qk_l2norm_in_kernel), SIM_CORES)
        else:
            stream, cores = _npu_stream_and_cores(q)
            _load_npu().i2f_gdn_decode_launch(stream, min(cores, B * Hv), *ptrs, B, Hk, Hv, scale,
                                              int(bool(use_qk_l2norm_in_kernel)))
    return o, (S if (output_final_state or inplace_final_state) else None)


def rms_norm_gated(x, gate, weight, eps=1e-6):
    """weight * rmsnorm(x) * silu(gate) over the last axis (N = 128), fp32; see interns2_fast.ops."""
    op = "rms_norm_gated"
    kind = _device_kind(op, x)
    N = x.shape[-1]
    _need(op, N == 128, f"compiled for rows of N = 128 (the value head dim), got {N}")
    for name, t in (("x", x), ("gate", gate), ("weight", weight)):
        _need(op, t.dtype == torch.float32, f"{name} must be float32 (the kernels are fp32), got {t.dtype}")
    xs, gs, w = x.reshape(-1, N).contiguous(), gate.reshape(-1, N).contiguous(), weight.contiguous()
    out = torch.empty_like(xs)
    M = xs.shape[0]
    if M > 0:
        ptrs = (xs.data_ptr(), gs.data_ptr(), w.data_ptr(), out.data_ptr())
        if kind == "cpu":
            _load_sim().rms_norm_gated(*ptrs, M, float(eps), SIM_CORES)
        else:
            stream, cores = _npu_stream_and_cores(x)
            _load_npu().i2f_norm_gated_launch(stream, min(cores, (M + 31) // 32), *ptrs, M, float(eps))
    return out.view(x.shape)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("build", "info"):
        print(__doc__.strip().splitlines()[-2].strip() + "\n" + __doc__.strip().splitlines()[-1].strip(),
              file=sys.stderr)
        return 2
    if argv[0] == "info":
        print(f"pto: {state()}")
        return 0
    b = _builder()
    if b is None:
        print("[pto] this install has no csrc/ (install from a source checkout)", file=sys.stderr)
        return 2
    return b.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
