"""The Ascend lowering gate: compile each kernel's production configuration for a real chip.

For each `LoweringConfig` declared by a kernel module (`LOWERING_CONFIGS`), triton-ascend
compiles TTIR -> Linalg (`.ttadapter`), then `bishengir-compile` (from the ascendnpu-ir wheel)
runs the whole BiShengIR pipeline for the target: HFusion, HIVM, memory planning (where a
Unified-Buffer overflow is a compile error) and sync insertion. Only CANN's machine-code step
(`hivmc`) is missing on a machine without CANN; a run that reaches it counts as "lowered". Where
hivmc is on PATH the same command finishes with a binary ("compiled").
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Iterable

DEFAULT_TARGET = "Ascend910_9362"
#: the chips CI lowers for: Ascend910_9362 (A3, what the reported set-up runs) and Ascend910B3 (A2);
#: any other `bishengir-compile --target` name works too
CI_TARGETS = ("Ascend910_9362", "Ascend910B3")
UB_OVERFLOW = re.compile(r"ub overflow, requires (\d+) bits while (\d+) bits available")


@dataclasses.dataclass
class LoweringResult:
    name: str
    status: str  # "lowered" (stopped only for want of hivmc), "compiled" (binary written), "failed"
    error: str | None = None
    ub_required_bits: int | None = None
    ub_available_bits: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("lowered", "compiled")


def bishengir_compile() -> str:
    """Path of bishengir-compile: on PATH, or inside the ascendnpu-ir wheel."""
    found = shutil.which("bishengir-compile")
    if found:
        return found
    import importlib.util

    spec = importlib.util.find_spec("ascendnpuir")
    if spec is not None and spec.submodule_search_locations:
        candidate = os.path.join(list(spec.submodule_search_locations)[0], "bin", "bishengir-compile")
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError("bishengir-compile not found: pip install ascendnpu-ir==1.2.0")


def collect(modules: Iterable[str] | None = None) -> list:
    """Every declared production configuration: `LOWERING_CONFIGS` of each module named (full
    import paths), by default of every kernel module in interns2_fast.kernels that exists."""
    from interns2_fast import kernels

    if modules is None:
        modules = [f"interns2_fast.kernels.{name}" for name in kernels.KERNEL_MODULES]
        optional = True
    else:
        optional = False
    configs = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if optional and exc.name == name:
                continue  # a kernel module not written yet
            raise
        configs.extend(getattr(mod, "LOWERING_CONFIGS", ()))
    return configs


def _jit_function(kernel):
    """Unwrap heuristics / autotune wrappers down to the JITFunction that ASTSource needs."""
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def _first_error(text: str) -> str:
    for line in text.splitlines():
        low = line.lower()
        if ("error" in low or "overflow" in low) and "hivmc" not in low:
            return line.strip()[:400]
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:400] if lines else "unknown error"


def lower(config, target: str = DEFAULT_TARGET, keep_dir: str | None = None) -> LoweringResult:
    """Lower one configuration for `target`; never raises for a compile failure."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("lowering needs compiled Triton: unset TRITON_INTERPRET (kernels were built for the interpreter)")
    start = time.perf_counter()
    workdir = keep_dir or tempfile.mkdtemp(prefix="interns2_fast_lower_")
    cache_dir = os.path.join(workdir, "triton_cache")
    os.makedirs(cache_dir, exist_ok=True)
    result = LoweringResult(config.name, "failed")
    previous = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        src = ASTSource(fn=_jit_function(config.kernel), signature=dict(config.signature),
                        constants=dict(config.constants))
        try:
            # triton-ascend prints cache paths to stdout; keep stdout clean for --json.
            with contextlib.redirect_stdout(io.StringIO()):
                triton.compile(src, target=GPUTarget("npu", target, 0))
        except Exception as exc:  # triton-ascend raises at its last stage without ASCEND_HOME_PATH
            compile_error = f"{type(exc).__name__}: {exc}"
        else:
            compile_error = None
        adapters = glob.glob(os.path.join(cache_dir, "**", "*.ttadapter"), recursive=True)
        if not adapters:
            result.error = _first_error(compile_error or "triton produced no .ttadapter")
            return result
        temps = os.path.join(workdir, "bishengir")
        os.makedirs(temps, exist_ok=True)
        proc = subprocess.run(
            [bishengir_compile(), adapters[0], f"--target={target}", "--enable-hfusion-compile=true",
             "--enable-hivm-compile=true", "--enable-triton-kernel-compile=true", f"--save-temps={temps}",
             "-o", os.path.join(workdir, "kernel.o")],
            capture_output=True, text=True, timeout=600,
        )
        text = proc.stdout + proc.stderr
        overflow = UB_OVERFLOW.search(text)
        if overflow:
            result.ub_required_bits, result.ub_available_bits = map(int, overflow.groups())
            result.error = overflow.group(0)
        elif proc.returncode == 0:
            result.status = "compiled"
        elif "hivmc" in text and os.path.exists(os.path.join(temps, "module.hivm.opt.mlir")):
            result.status = "lowered"
        else:
            result.error = _first_error(text)
        return result
    except Exception as exc:
        result.error = _first_error(f"{type(exc).__name__}: {exc}")
        return result
    finally:
        if previous is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = previous
        result.seconds = time.perf_counter() - start
        if keep_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def lower_all(configs=None, target: str = DEFAULT_TARGET, progress=None) -> list[LoweringResult]:
    configs = collect() if configs is None else configs
    results = []
    for cfg in configs:
        results.append(lower(cfg, target))
        if progress is not None:
            progress(results[-1])
    return results
