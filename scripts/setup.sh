#!/usr/bin/env bash
# Create a venv (if needed) and install interns2-fast with its test extra. Environment:
#   INTERNS2_VENV          the venv folder (default .venv/ at the repo root; `.venv-*/` is gitignored)
#   INTERNS2_TORCH         the torch requirement (default "torch==2.13.0": a CPU wheel on the CI machine;
#                          "torch==2.9.0" is the users' stack, on x86-64 a CUDA build from PyPI that pulls
#                          NVIDIA's triton)
#   INTERNS2_TRANSFORMERS  the transformers requirement (default "transformers==5.2.0", what
#                          Intern-S2-Preview's remote code pins; "transformers" = the newest release)
#   INTERNS2_EXTRA         more requirements, space-separated, resolved with the package (e.g.
#                          "accelerate==1.13.0")
# Sourced by demo.sh and test.sh; safe to run again (a stamp skips what is installed already).
#
# Order matters on x86-64: torch's wheel there depends on NVIDIA's `triton`, and triton-ascend (the
# test extra) installs the same `triton/` package over it, leaving a folder that `import triton`
# rejects while `pip check` is content. So torch goes first, then the package, and then any NVIDIA
# triton is removed and triton-ascend reinstalled alone; the result is verified (import triton,
# flavour "ascend"). `pip check` then reports "torch requires triton, which is not installed": torch
# only needs NVIDIA triton for torch.compile on CUDA, which this environment never uses.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INTERNS2_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
TORCH_REQ="${INTERNS2_TORCH:-torch==2.13.0}"
TRANSFORMERS_REQ="${INTERNS2_TRANSFORMERS:-transformers==5.2.0}"
read -r -a EXTRA_REQS <<< "${INTERNS2_EXTRA:-}"
TRITON_ASCEND_REQ="triton-ascend==3.2.0"  # keep equal to setup.py's test extra

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
STAMP="$VENV/.interns2_fast_installed"
WANT="$TORCH_REQ | ${EXTRA_REQS[*]:-}"
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing $TORCH_REQ, then interns2-fast[test] ${EXTRA_REQS[*]:-}"
  "${PIP[@]}" install "$TORCH_REQ"
  "${PIP[@]}" install -e "$ROOT[test]" "$TRANSFORMERS_REQ" ${EXTRA_REQS[@]+"${EXTRA_REQS[@]}"}
  echo "$WANT" > "$STAMP"
fi
# Make the installed transformers match the request (CI switches between versions in one venv).
if [ "$TRANSFORMERS_REQ" = "transformers" ]; then
  "${PIP[@]}" install --upgrade transformers
else
  "${PIP[@]}" install "$TRANSFORMERS_REQ"
fi
# Hugging Face's `kernels` stays when transformers changes: one pulled by transformers 5.25 (which
# requires it) breaks the Qwen3.5 modeling import of transformers < 5.13, which does not need it, so it
# goes (device.KERNELS_BREAKS holds the measured pairs; the check imports nothing for a good pair).
if "$VENV/bin/python" -m pip show -q kernels > /dev/null 2>&1 && ! TORCH_DEVICE_BACKEND_AUTOLOAD=0 "$VENV/bin/python" -W ignore -c \
    'import sys; from interns2_fast import device; sys.exit(1 if device.kernels_install_problem() else 0)'; then
  echo "[setup] removing kernels $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kernels"))'), which this transformers cannot import its Qwen3.5 modeling with"
  "${PIP[@]}" uninstall -y kernels
fi
# NVIDIA triton (pulled by x86 torch) and triton-ascend share `triton/`: keep triton-ascend alone.
if "$VENV/bin/python" -m pip show -q triton > /dev/null 2>&1; then
  echo "[setup] removing NVIDIA triton (a dependency of $TORCH_REQ here) and reinstalling $TRITON_ASCEND_REQ alone"
  "${PIP[@]}" uninstall -y triton triton-ascend
  "${PIP[@]}" install --no-deps "$TRITON_ASCEND_REQ"
fi
TORCH_DEVICE_BACKEND_AUTOLOAD="${TORCH_DEVICE_BACKEND_AUTOLOAD:-0}" "$VENV/bin/python" - <<'PY'
import torch, transformers, triton
from interns2_fast import device
for problem in (device.triton_install_problem(), device.kernels_install_problem()):
    assert problem is None, problem
assert device.triton_flavour() == "ascend", f"triton flavour {device.triton_flavour()!r}, expected 'ascend'"
import transformers.models.qwen3_5_moe.modeling_qwen3_5_moe  # what a mismatched kernels breaks
print(f"[setup] torch {torch.__version__}, transformers {transformers.__version__}, "
      f"triton-ascend {triton.__version__} (import triton works)")
PY
# The PTO kernels of csrc/ on PTO-ISA's CPU simulator (backend="pto"), when clang++ >= 15 and the
# PTO-ISA headers are found; skipped with a note otherwise. Up to date -> instant.
"$VENV/bin/python" "$ROOT/csrc/build.py" --if-available || echo "[setup] WARNING: the csrc/ PTO build failed (backend='pto' unavailable)"
