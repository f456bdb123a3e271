"""Which device a tensor lives on, which Triton is installed, and how many programs to launch.

Everything else asks this module instead of probing torch_npu / triton itself, so that the rules
for "can the Triton backend run here?" live in one place.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import os

import torch

#: Programs a persistent grid gets under the Triton interpreter: small, but more than one, so
#: that the task loops inside kernels are exercised by the CPU tests.
INTERPRETER_PROGRAMS = 3


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: kernels run on the CPU through Triton's numpy interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: The one command that repairs a mixed NVIDIA-triton / triton-ascend install (see `triton_install_problem`).
TRITON_REPAIR = "pip uninstall -y triton triton-ascend && pip install --no-deps triton-ascend==3.2.0"


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def triton_install_problem() -> str | None:
    """One sentence on what is wrong with the installed `triton/` folder and what to run, or None.

    NVIDIA's `triton` and `triton-ascend` both install the package `triton`: on x86-64,
    `pip install torch` pulls NVIDIA's triton, and triton-ascend installed beside it overwrites
    some of the same files and leaves the rest, so `pip check` is content and `import triton` fails
    (`cannot import name 'Language' from 'triton.backends.compiler'`). Found from the installed
    distributions' metadata and the backend folders on disk, without importing triton.
    """
    nvidia, ascend = _dist_version("triton"), _dist_version("triton-ascend")
    backends: set[str] = set()
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            folder = os.path.join(root, "backends")
            if os.path.isdir(folder):
                backends |= {d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
                             and not d.startswith("__")}
    if (nvidia and ascend) or ("ascend" in backends and backends & {"nvidia", "amd"}):
        found = ", ".join(x for x in (f"triton {nvidia}" if nvidia else "", f"triton-ascend {ascend}" if ascend else "")
                          if x) or "files of both"
        return (f"NVIDIA triton and triton-ascend are installed into the same `triton/` folder ({found}; on x86-64 "
                f"`pip install torch` pulls NVIDIA triton), so `import triton` breaks: run `{TRITON_REPAIR}`")
    return None


#: Hugging Face `kernels` releases that break `import transformers.models.qwen3_5_moe.modeling_qwen3_5_moe`,
#: as (transformers releases, kernels releases that break them, kernels to install when the installed
#: transformers declares no range). Measured by that import with each pair installed (torch 2.13 CPU):
#: transformers 5.2.0, 5.3.0, 5.5.4, 5.8.1, 5.10.4, 5.11.0 and 5.12.1 fail with kernels 0.15.1 and later
#: (`ValueError: Either a revision or a version must be specified.` from transformers'
#: integrations/hub_kernels.py, which builds its kernel mapping without a revision) and import with
#: kernels 0.14.1 and earlier or none; transformers 5.13.0 and later (5.13.1, 5.14.1, 5.15.1, 5.24.0,
#: 5.25.0 measured) import with every kernels from 0.10.4 to 0.19.1, skipping one outside the range
#: they declare, and 5.25.0 without kernels too (although pip requires kernels>=0.19.1,<0.20 there).
KERNELS_BREAKS = (("<5.13", ">=0.15", "kernels<0.15"),)


def _declared_kernels_requirement() -> str | None:
    """The `kernels` range the installed transformers declares for its `kernels` extra, e.g. 'kernels<0.11,>=0.10.2'."""
    from packaging.requirements import Requirement

    for text in importlib.metadata.requires("transformers") or ():
        requirement = Requirement(text)
        if requirement.name == "kernels" and (requirement.marker is None or requirement.marker.evaluate({"extra": "kernels"})):
            return f"kernels{requirement.specifier}"
    return None


def _hub_kernels_import_error() -> str | None:
    """What importing transformers' `kernels` integration raises (one line), or None when it imports.

    The Qwen3.5 modeling imports it first thing, so this is the failure a user would hit there."""
    try:
        importlib.import_module("transformers.integrations.hub_kernels")
    except Exception as exc:  # noqa: BLE001  (any failure is the answer)
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    return None


@functools.lru_cache(maxsize=None)
def kernels_install_problem() -> str | None:
    """One sentence when the installed transformers cannot import its Qwen3.5 modeling because of the
    installed Hugging Face `kernels` release (see `KERNELS_BREAKS`), naming both versions and what to run; or None.

    Decided by the versions' metadata first (nothing is imported for a pair the table does not name) and,
    for a pair it names, by importing transformers' `kernels` integration. Never raises.
    """
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        transformers_version, kernels_version = _dist_version("transformers"), _dist_version("kernels")
        if transformers_version is None or kernels_version is None:
            return None
        for transformers_range, breaking, fallback in KERNELS_BREAKS:
            if (Version(transformers_version) in SpecifierSet(transformers_range)
                    and Version(kernels_version) in SpecifierSet(breaking)):
                break
        else:
            return None
        error = _hub_kernels_import_error()
        if error is None:
            return None
        requirement = _declared_kernels_requirement() or fallback
        return (f"transformers {transformers_version} cannot import its Qwen3.5 modeling with kernels {kernels_version} "
                f"installed ({error}): run `pip uninstall -y kernels` (transformers {transformers_version} runs "
                f"without it) or `pip install \"{requirement}\"`")
    except Exception:  # noqa: BLE001  (a check must never be the thing that breaks)
        return None


@functools.lru_cache(maxsize=None)
def triton_flavour() -> str | None:
    """'ascend' for triton-ascend, 'nvidia' for upstream Triton, None when Triton is absent or broken
    (a mixed NVIDIA / Ascend install, see `triton_install_problem`)."""
    if importlib.util.find_spec("triton") is None or triton_install_problem() is not None:
        return None
    try:
        ascend = importlib.util.find_spec("triton.backends.ascend") is not None  # imports triton itself
    except Exception:  # noqa: BLE001  (a triton/ folder that cannot be imported: no usable Triton)
        return None
    return "ascend" if ascend else "nvidia"


_NPU_PROBLEM: list[str] = []


@functools.lru_cache(maxsize=None)
def npu_available() -> bool:
    """True when torch_npu loads and sees an NPU. A torch_npu that cannot load (installed without
    CANN, or CANN's `set_env.sh` not sourced) gives False; the cause is kept for `npu_problem()`."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)

        return bool(torch.npu.is_available())  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001  (any failure of a half-installed torch_npu)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        _NPU_PROBLEM[:] = [
            f"torch_npu is installed but cannot load ({type(exc).__name__}: {first}); install CANN and "
            "`source /usr/local/Ascend/ascend-toolkit/set_env.sh`, or `pip uninstall torch_npu` to run without an NPU"
        ]
        return False


def npu_problem() -> str | None:
    """Why torch_npu is installed but unusable (one sentence), or None."""
    npu_available()
    return _NPU_PROBLEM[0] if _NPU_PROBLEM else None


def environment_problems() -> list[str]:
    """Every known broken-install state, one sentence each naming the cause and what to run."""
    return [p for p in (triton_install_problem(), kernels_install_problem(), npu_problem()) if p]


def triton_usable(device: torch.device) -> bool:
    """Can a Triton kernel be launched on tensors of this device?"""
    flavour = triton_flavour()
    if flavour is None:
        return False
    if interpreting():
        return device.type == "cpu"
    if device.type == "npu":
        return flavour == "ascend"
    if device.type == "cuda":
        return flavour == "nvidia"
    return False


def auto_backends(device: torch.device) -> tuple[str, ...]:
    """The order `backend="auto"` tries backends in, for tensors on `device`.

    On the CPU the Triton interpreter is a correctness tool, not a fast path, so auto never
    chooses it there; tests ask for backend="triton" explicitly.
    """
    if device.type != "cpu" and triton_usable(device):
        return ("triton", "torch", "reference")
    return ("torch", "reference")


@functools.lru_cache(maxsize=None)
def _core_counts(device_type: str, index: int) -> tuple[int, int]:
    if device_type == "npu":
        from triton.runtime import driver

        props = driver.active.utils.get_device_properties(index)
        return int(props["num_aicore"]), int(props["num_vectorcore"])
    if device_type == "cuda":
        sms = torch.cuda.get_device_properties(index).multi_processor_count
        return sms, sms
    return INTERPRETER_PROGRAMS, INTERPRETER_PROGRAMS


def cube_cores(device: torch.device) -> int:
    """Programs for a persistent grid of a kernel that uses tl.dot (AI cores on Ascend, SMs on CUDA)."""
    return _core_counts(device.type, device.index or 0)[0]


def vector_cores(device: torch.device) -> int:
    """Programs for a persistent grid of a vector-only kernel (2 per AI core on Ascend A2/A3)."""
    return _core_counts(device.type, device.index or 0)[1]


def persistent_grid(device: torch.device, num_tasks: int, *, cube: bool) -> int:
    """Grid size for a kernel with an in-kernel task loop: never more programs than tasks."""
    cores = cube_cores(device) if cube else vector_cores(device)
    return max(1, min(cores, num_tasks))


def device_guard(tensor: torch.Tensor):
    """Make `tensor`'s device current while launching (device_map="auto" spreads layers over devices).
    A no-op on the CPU and inside torch.compile (a compiled graph runs on its inputs' devices)."""
    dev = tensor.device
    if dev.type not in ("cuda", "npu") or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    if dev.type == "cuda":
        return torch.cuda.device(dev)
    return torch.npu.device(dev)  # type: ignore[attr-defined]


def describe() -> dict:
    """A summary for `interns2-fast info`."""
    info = {
        "torch": torch.__version__,
        "triton_flavour": triton_flavour(),
        "triton_interpreter": interpreting(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "npu_devices": torch.npu.device_count() if npu_available() else 0,  # type: ignore[attr-defined]
    }
    if triton_flavour() is not None:
        import triton

        info["triton"] = triton.__version__
    info["problems"] = environment_problems()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    info["kernels"] = _dist_version("kernels")  # Hugging Face's package, which transformers imports
    return info
