#!/usr/bin/env bash
# The main job: set up .venv/ if needed, then run the demo on the built-in scaled-down Intern-S2.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
exec "$VENV/bin/interns2-fast" demo "$@"
