#!/usr/bin/env bash
# Set up .venv/ if needed, then run the test suite (Triton kernels under TRITON_INTERPRET=1 on the
# CPU, the lowering gate for Ascend910_9362, everything else through the PyTorch paths).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
status=0
"$VENV/bin/pytest" -n "${PYTEST_WORKERS:-2}" "$@" || status=$?
# pytest exits 5 when it collected no tests: that is a failure of the suite, not a pass.
if [ "$status" -eq 5 ]; then echo "[test] no tests were collected"; fi
exit "$status"
