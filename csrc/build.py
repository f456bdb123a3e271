"""Build the PTO kernels of csrc/: the CPU-simulator extension, and the NPU library when CANN is present.

    python csrc/build.py [--force] [--if-available] [--npu] [--quiet]
    python -m interns2_fast.pto build ...          (the same)

CPU simulator: one clang++ (>= 15) compile of bind_cpu.cpp against PTO-ISA's headers with
-D__CPU_SIM, giving the pybind11 module `_pto_sim` in the build directory (default
<repo>/build/pto, gitignored; INTERNS2_PTO_BUILD_DIR overrides). Headers come from PTO_ISA_HOME,
else ../shared/third_party/pto-isa relative to the repo root (or to the main checkout, for a git
worktree). The compiler is $CXX when it is clang >= 15, else the newest clang++-NN on PATH.

NPU (Ascend A2/A3, dav-c220-vec): with ASCEND_HOME_PATH set and CANN's bisheng found, npu_kernels.cpp
compiles into libi2f_pto_npu.so (a ctypes launcher on torch_npu's current stream). This path has
never been compiled or run on hardware by this project: it is unverified.

Standard library only (setup.sh and CI call it before anything else is importable). Exit status: 0
built or up to date (or, with --if-available, skipped for want of a compiler or headers), 1 failed,
2 not available.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

CSRC = Path(__file__).resolve().parent
ROOT = CSRC.parent
SIM_SOURCES = ("bind_cpu.cpp", "pto_compat.hpp", "gdn_decode.hpp", "gdn_decode_ub.hpp", "norm_gated.hpp",
               "norm_gated_ub.hpp")
NPU_SOURCES = ("npu_kernels.cpp", "pto_compat.hpp", "gdn_decode.hpp", "gdn_decode_ub.hpp", "norm_gated.hpp",
               "norm_gated_ub.hpp")
SIM_MODULE = "_pto_sim"
NPU_LIBRARY = "libi2f_pto_npu.so"
MIN_CLANG = 15
INFO_FILE = "build-info.json"


class Unavailable(RuntimeError):
    """A prerequisite (compiler, headers, CANN) is missing: nothing was attempted."""


def build_dir() -> Path:
    return Path(os.environ.get("INTERNS2_PTO_BUILD_DIR") or ROOT / "build" / "pto")


def sim_module_path() -> Path:
    return build_dir() / (SIM_MODULE + sysconfig.get_config_var("EXT_SUFFIX"))


def npu_library_path() -> Path:
    return build_dir() / NPU_LIBRARY


def _main_checkout() -> Path | None:
    """The main checkout of a git worktree (where ../shared sits beside it), if this is one."""
    try:
        common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-common-dir"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if common.returncode != 0:
        return None
    path = Path(common.stdout.strip())
    if not path.is_absolute():
        path = (ROOT / path).resolve()
    return path.parent if path.name == ".git" else None


def find_pto_isa_home() -> Path:
    """PTO-ISA's root (the folder holding include/pto/pto-inst.hpp)."""
    env = os.environ.get("PTO_ISA_HOME")
    if env:
        home = Path(env)
        if not (home / "include" / "pto" / "pto-inst.hpp").is_file():
            raise Unavailable(f"PTO_ISA_HOME={env} has no include/pto/pto-inst.hpp")
        return home.resolve()
    candidates = [ROOT.parent / "shared" / "third_party" / "pto-isa"]
    main = _main_checkout()
    if main is not None:
        candidates.append(main.parent / "shared" / "third_party" / "pto-isa")
    for home in candidates:
        if (home / "include" / "pto" / "pto-inst.hpp").is_file():
            return home.resolve()
    raise Unavailable("PTO-ISA headers not found: set PTO_ISA_HOME (tried "
                      + ", ".join(str(c) for c in candidates) + ")")


def _clang_major(cxx: str) -> int | None:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"clang version (\d+)", out)
    return int(m.group(1)) if m else None


def find_clang() -> tuple[str, int]:
    """(compiler, major version) of a clang++ >= 15: $CXX if it is one, else the newest clang++-NN."""
    env = os.environ.get("CXX")
    if env:
        major = _clang_major(env)
        if major is not None and major >= MIN_CLANG:
            return env, major
    names = [f"clang++-{v}" for v in range(25, MIN_CLANG - 1, -1)] + ["clang++"]
    for name in names:
        path = shutil.which(name)
        if path:
            major = _clang_major(path)
            if major is not None and major >= MIN_CLANG:
                return path, major
    raise Unavailable(f"no clang++ >= {MIN_CLANG} found (GCC cannot build PTO-ISA's simulator); "
                      "install one, e.g. `apt-get install -y clang-16`, or set CXX")


def _digest(files, *extra: str) -> str:
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:16]


def read_info() -> dict:
    try:
        return json.loads((build_dir() / INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_info(key: str, record: dict) -> None:
    info = read_info()
    info[key] = record
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def sim_command(cxx: str, home: Path, output: Path) -> list[str]:
    import pybind11  # the test extra installs it; imported late so --help works without it

    return [
        cxx, "-std=c++20", "-O2", "-fPIC", "-shared", "-fvisibility=hidden",
        "-D__CPU_SIM", "-DPTO_CPU_MAX_THREADS=1",  # one thread per op: the caller owns the cores
        "-include", "stdint.h", "-include", "stddef.h",  # PTO-ISA's headers are not self-contained
        "-Wno-pass-failed",
        "-I", str(home / "include"), "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"],
        str(CSRC / "bind_cpu.cpp"), "-o", str(output),
    ]


@contextlib.contextmanager
def _locked():
    """One build at a time per build directory (pytest-xdist workers may all ask for it)."""
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compile(cmd: list[str], output: Path, what: str) -> float:
    """Run `cmd` (which writes `output`) into a temporary name, then move it in place atomically."""
    tmp = output.with_name(output.name + f".tmp{os.getpid()}")
    cmd = [str(tmp) if c == str(output) else c for c in cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}):\n{proc.stderr[-6000:]}")
    os.replace(tmp, output)
    return seconds


def build_sim(force: bool = False, quiet: bool = False) -> dict:
    """Build (or find up to date) the simulator extension; returns its build record."""
    with _locked():
        return _build_sim(force, quiet)


def _build_sim(force: bool, quiet: bool) -> dict:
    home = find_pto_isa_home()
    cxx, major = find_clang()
    output = sim_module_path()
    import pybind11

    digest = _digest(SIM_SOURCES, cxx, str(home), sys.version, pybind11.__version__)
    previous = read_info().get("sim", {})
    if not force and output.is_file() and previous.get("digest") == digest:
        if not quiet:
            print(f"[pto] {output.name} is up to date (built in {previous.get('seconds')} s)")
        return previous
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = sim_command(cxx, home, output)
    if not quiet:
        print(f"[pto] building {output} with {Path(cxx).name} (clang {major}) against {home}")
    seconds = _compile(cmd, output, "PTO simulator build")
    record = {"target": "cpu-sim", "digest": digest, "compiler": cxx, "clang_major": major,
              "pto_isa_home": str(home), "seconds": seconds, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "output": str(output)}
    _write_info("sim", record)
    if not quiet:
        print(f"[pto] built {output.name} in {seconds} s")
    return record


def find_bisheng() -> tuple[Path, Path]:
    """(ASCEND_HOME_PATH, bisheng) for the NPU build."""
    ascend = os.environ.get("ASCEND_HOME_PATH")
    if not ascend:
        raise Unavailable("ASCEND_HOME_PATH is not set (no CANN toolkit): the NPU library cannot be built here")
    home = Path(ascend)
    for cand in (home / "compiler" / "ccec_compiler" / "bin" / "bisheng", home / "bin" / "bisheng"):
        if cand.is_file():
            return home, cand
    found = shutil.which("bisheng")
    if found:
        return home, Path(found)
    raise Unavailable(f"CANN's bisheng not found under {home} or on PATH")


def npu_command(bisheng: Path, ascend: Path, pto_home: Path, output: Path) -> list[str]:
    """bisheng for the A2/A3 vector cores (the flags of PTO-ISA's own torch/ctypes demo), the pinned
    PTO-ISA first on the include path (CANN 8.5's copy lacks instructions these kernels use, e.g.
    TCOLEXPANDMUL). Unverified on hardware."""
    return [
        str(bisheng), "-fPIC", "-shared", "-xcce", "--cce-aicore-arch=dav-c220-vec", "-O2", "-std=c++17",
        "-I", str(pto_home / "include"), "-I", str(ascend / "include"),
        str(CSRC / "npu_kernels.cpp"), "-o", str(output),
    ]


def build_npu(force: bool = False, quiet: bool = False) -> dict:
    with _locked():
        return _build_npu(force, quiet)


def _build_npu(force: bool, quiet: bool) -> dict:
    ascend, bisheng = find_bisheng()
    pto_home = find_pto_isa_home()
    output = npu_library_path()
    digest = _digest(NPU_SOURCES, str(bisheng), str(pto_home))
    previous = read_info().get("npu", {})
    if not force and output.is_file() and previous.get("digest") == digest:
        return previous
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = npu_command(bisheng, ascend, pto_home, output)
    seconds = _compile(cmd, output, "PTO NPU build")
    record = {"target": "dav-c220-vec", "digest": digest, "compiler": str(bisheng), "pto_isa_home": str(pto_home),
              "seconds": seconds, "output": str(output), "verified_on_hardware": False}
    _write_info("npu", record)
    if not quiet:
        print(f"[pto] built {output.name} for dav-c220-vec in {seconds} s (unverified on hardware)")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="interns2_fast.pto build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--if-available", action="store_true",
                        help="exit 0 (with a note) when no compiler / headers are found")
    parser.add_argument("--npu", action="store_true", help="also build the NPU library (needs CANN)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        build_sim(force=args.force, quiet=args.quiet)
    except Unavailable as exc:
        print(f"[pto] simulator extension not built: {exc}", file=sys.stderr)
        return 0 if args.if_available else 2
    except RuntimeError as exc:
        print(f"[pto] {exc}", file=sys.stderr)
        return 1
    if args.npu:
        try:
            build_npu(force=args.force, quiet=args.quiet)
        except Unavailable as exc:
            print(f"[pto] NPU library not built: {exc}", file=sys.stderr)
            return 0 if args.if_available else 2
        except RuntimeError as exc:
            print(f"[pto] {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
