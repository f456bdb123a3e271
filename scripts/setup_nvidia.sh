#!/usr/bin/env bash
# Create a second environment with NVIDIA's triton (not triton-ascend) for running the kernel tests
# under NVIDIA triton's interpreter: the kernels must work with both (see kernels/__init__.py).
#   INTERNS2_NVIDIA_TRITON  the triton requirement (default "triton==3.9.0")
#   INTERNS2_NVIDIA_VENV    where the environment goes (default .venv-nvidia at the repo root)
# triton and triton-ascend both install the module `triton`: never put them in one environment.
# torch is the CPU wheel, which has no triton dependency. numpy: triton 3.6's interpreter turns a
# program id into a loop bound with int() of a 1-element array, which numpy 2 refuses ("only
# 0-dimensional arrays can be converted to Python scalars"), as triton-ascend 3.2's does; 3.9's
# works with numpy 2. Releases before 3.9 get numpy<2 (3.7 and 3.8 were not tried with numpy 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRITON_REQ="${INTERNS2_NVIDIA_TRITON:-triton==3.9.0}"
VENV="${INTERNS2_NVIDIA_VENV:-$ROOT/.venv-nvidia}"
case "$TRITON_REQ" in
  triton==3.[0-8].*|triton==2.*) NUMPY_REQ="numpy<2" ;;
  *) NUMPY_REQ="numpy" ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-nvidia] creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
STAMP="$VENV/.interns2_fast_nvidia_installed"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$TRITON_REQ" ] || [ "$ROOT/setup.py" -nt "$STAMP" ]; then
  echo "[setup-nvidia] installing torch 2.13.0 (CPU wheel), $TRITON_REQ, $NUMPY_REQ"
  "${PIP[@]}" install torch==2.13.0
  "${PIP[@]}" install "$TRITON_REQ" "$NUMPY_REQ" "transformers==5.2.0" pytest pytest-xdist hypothesis accelerate rich tqdm
  # the package itself without its extras (the test extra would bring triton-ascend)
  "${PIP[@]}" install --no-deps -e "$ROOT"
  echo "$TRITON_REQ" > "$STAMP"
fi
"$VENV/bin/python" - <<'PY'
import importlib.util, numpy, torch, triton
assert importlib.util.find_spec("triton.backends.ascend") is None, "triton-ascend found in the NVIDIA environment"
print(f"[setup-nvidia] torch {torch.__version__}, NVIDIA triton {triton.__version__}, numpy {numpy.__version__}")
PY
