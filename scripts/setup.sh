#!/usr/bin/env bash
# Create .venv/ at the repo root (if needed) and install interns2-fast with its test extra.
#   INTERNS2_TRANSFORMERS  the transformers requirement (default "transformers==5.2.0", what
#                          Intern-S2-Preview's remote code pins; "transformers" = the newest release)
# Sourced by demo.sh and test.sh; safe to run again (a stamp skips what is installed already).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TRANSFORMERS_REQ="${INTERNS2_TRANSFORMERS:-transformers==5.2.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
STAMP="$VENV/.interns2_fast_installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ]; then
  echo "[setup] installing torch 2.13.0 (CPU wheel) and interns2-fast[test]"
  "${PIP[@]}" install torch==2.13.0
  "${PIP[@]}" install -e "$ROOT[test]" "$TRANSFORMERS_REQ"
  touch "$STAMP"
fi
# Make the installed transformers match the request (CI switches between 5.2.0 and the newest).
if [ "$TRANSFORMERS_REQ" = "transformers" ]; then
  "${PIP[@]}" install --upgrade transformers
else
  "${PIP[@]}" install "$TRANSFORMERS_REQ"
fi
"$VENV/bin/python" -c "import transformers, torch; print(f'[setup] torch {torch.__version__}, transformers {transformers.__version__}')"
# The PTO kernels of csrc/ on PTO-ISA's CPU simulator (backend="pto"), when clang++ >= 15 and the
# PTO-ISA headers are found; skipped with a note otherwise. Up to date -> instant.
"$VENV/bin/python" "$ROOT/csrc/build.py" --if-available || echo "[setup] WARNING: the csrc/ PTO build failed (backend='pto' unavailable)"
