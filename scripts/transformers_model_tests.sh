#!/usr/bin/env bash
# transformers' own model tests for qwen3_5, qwen3_5_moe and qwen3_next (transformers 5.2.0's test
# files, ../shared/third_party/transformers-tests-5.2.0), run twice: unpatched, then with every model
# patched by interns2_fast.patch (scripts/transformers_tests/patch_plugin.py). The outcomes are compared
# test by test (scripts/transformers_tests/compare.py); exits non-zero on a test that fails only when
# patched (the known ones are listed in compare.py's KNOWN_PATCHED_ONLY_FAILURES).
#
# Environment:
#   TFTESTS_VENV     the venv to run in (default .venv-tftests; it must hold transformers 5.2.0 and the
#                    tests' extra dependencies, TFTESTS_EXTRA below)
#   TFTESTS_SETUP    1: create / update that venv first (scripts/setup.sh), as .ci/run does
#   TFTESTS_SRC      the test files (default ../shared/third_party/transformers-tests-5.2.0)
#   TFTESTS_OUT      where the copy and the results go (default out/transformers-tests)
#   TFTESTS_FAMILIES default "qwen3_5 qwen3_5_moe qwen3_next"
#   PYTEST_WORKERS   pytest-xdist workers per pass (default 2)
#   TFTESTS_TIMEOUT  per-test timeout in seconds (default 300)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${TFTESTS_VENV:-$ROOT/.venv-tftests}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
SRC="${TFTESTS_SRC:-$ROOT/../shared/third_party/transformers-tests-5.2.0}"
OUT="${TFTESTS_OUT:-$ROOT/out/transformers-tests}"
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
read -r -a FAMILIES <<< "${TFTESTS_FAMILIES:-qwen3_5 qwen3_5_moe qwen3_next}"
WORKERS="${PYTEST_WORKERS:-2}"

# The tests' extra dependencies. pyarrow (for datasets) pinned: the package keeps numpy<2
# (triton-ascend's interpreter), and pyarrow 26 requires NumPy 2 (24.0.0 is what datasets 5.2 allows
# and imports with numpy 1.26).
TFTESTS_EXTRA="parameterized pytest-timeout datasets httpx pyarrow==24.0.0"
if [ "${TFTESTS_SETUP:-0}" = 1 ]; then
  INTERNS2_VENV="$VENV" INTERNS2_TRANSFORMERS=transformers==5.2.0 INTERNS2_EXTRA="$TFTESTS_EXTRA" \
    bash scripts/setup.sh || exit 1
fi
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "[tftests] no venv at $VENV (TFTESTS_SETUP=1 creates it)"; exit 1; }
[ -d "$SRC/tests/models" ] || { echo "[tftests] no test files at $SRC"; exit 1; }
TF_VERSION="$("$PY" -c 'import transformers; print(transformers.__version__)')"
[ "$TF_VERSION" = "5.2.0" ] || echo "[tftests] WARNING: the test files are 5.2.0's, the venv has transformers $TF_VERSION"

# A writable copy whose src/transformers is the installed package (the tests read it; the root
# conftest puts <copy>/src on sys.path).
COPY="$OUT/tests-copy"
rm -rf "$OUT"
mkdir -p "$OUT/results"
cp -r "$SRC" "$COPY"
chmod -R u+w "$COPY"
mkdir -p "$COPY/src"
ln -s "$("$PY" -c 'import os, transformers; print(os.path.dirname(transformers.__file__))')" "$COPY/src/transformers"
# An ini file makes the copy pytest's rootdir (else pytest would look upwards and take this repo's
# pytest.ini and conftest boundary); the copy's root conftest.py then applies, as in transformers.
printf '[pytest]\n# written by scripts/transformers_model_tests.sh\n' > "$COPY/pytest.ini"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export TORCH_DEVICE_BACKEND_AUTOLOAD="${TORCH_DEVICE_BACKEND_AUTOLOAD:-0}"
export PYTHONPATH="$ROOT/scripts/transformers_tests${PYTHONPATH:+:$PYTHONPATH}"
XDIST=()
[ "$WORKERS" -gt 0 ] 2>/dev/null && XDIST=(-n "$WORKERS")

# One pytest run per pass over the three families' files (one start-up, and xdist balances the lot).
FILES=()
for fam in "${FAMILIES[@]}"; do FILES+=("tests/models/$fam/test_modeling_$fam.py"); done
start=$SECONDS
for mode in unpatched patched; do
  t0=$SECONDS
  patch=0; [ "$mode" = patched ] && patch=1
  (cd "$COPY" && INTERNS2_TFTESTS_PATCH=$patch INTERNS2_TFTESTS_STATS="$OUT/results/stats-$mode" \
    "$PY" -m pytest "${FILES[@]}" -p patch_plugin -p no:cacheprovider "${XDIST[@]}" \
    --timeout="${TFTESTS_TIMEOUT:-300}" -q -o junit_family=xunit2 --durations=10 \
    --junitxml="$OUT/results/$mode.xml" > "$OUT/results/$mode.log" 2>&1)
  rc=$?
  echo "[tftests] $mode pass: pytest exit $rc, $((SECONDS - t0)) s ($(tail -1 "$OUT/results/$mode.log"))"
done
echo "[tftests] both passes: $((SECONDS - start)) s"
"$PY" "$ROOT/scripts/transformers_tests/compare.py" "$OUT/results" "${FAMILIES[@]}"
status=$?
[ "$status" = 0 ] || echo "[tftests] FAILED (logs: $OUT/results/)"
exit $status
