#!/usr/bin/env bash
# The prepared GPU run: on an NVIDIA GPU machine WITHOUT network access, install what the image lacks
# from wheels carried in the working tree, run the test suite on CUDA (compiled Triton, no interpreter)
# and the benchmark suites in bf16 at full Intern-S2 sizes against the public alternatives (fla,
# causal-conv1d, transformers' grouped_mm), and write tables, JSON and the plot under $OUT.
#
#   scripts/gpu_bench.sh [all|tests|ops|e2e|counts|decode] ...   (default: all = tests ops e2e counts decode)
#
# Stages run in the order given, after a one-time setup per machine; a failing stage does not stop
# the next. Every stage works in $GPU_BENCH_RUN (default /tmp/interns2_gpu_run, kept while the
# machine is), and every invocation ends by packing all stages run so far into $OUT:
# results.md (tables), benchmarks.json (pytest-benchmark format, all suites), speedup.png,
# gpu_bench.log and run.tar.gz (every log, JSON and table) — five files, within what the device
# tool brings back. One device command may run 10 minutes and a session has 15 minutes of device
# time, so split the run over two commands on the same warm machine:
#   scripts/gpu_bench.sh tests ops        # ~5-8 min on an H100
#   scripts/gpu_bench.sh e2e counts       # ~4-6 min
#   scripts/gpu_bench.sh decode           # static decode: graph replay vs eager step vs generate(), B = 1, 8
#
# Preparing the wheels (on a machine WITH network access, in the repo root; see benchmarks/README.md):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#       fla-core==0.6.0
#   # fla-core (1.1 MB, pure Python; needs einops, torch>=2.7, triton>=3.3 — all in the GPU image)
#   # holds fla.ops (chunk / fused_recurrent gated delta rule) and fla.modules (FusedRMSNormGated):
#   # all that the op benchmarks and transformers' fast path import. flash-linear-attention (fla.models,
#   # fla.layers) is not needed, and it requires transformers>=5.6.2.
#   # causal-conv1d ships no PyPI wheel (its sdist downloads one from GitHub or compiles with nvcc):
#   # build it once on a GPU machine with the same torch/CUDA and carry it back, or skip it:
#   #   pip wheel --no-deps --no-build-isolation causal-conv1d==1.7.0 -w .whl   (nvcc, ~10 min)
#   # optional: transformers==5.2.0 (what Intern-S2-Preview pins; the image has a newer 5.x)
#   python3 -m pip download --no-deps -d .whl transformers==5.2.0
# and carry `.whl` with the run (the device tool's `carry`), or point WHEELS at another folder.
#
# Environment:
#   OUT            output folder (the device machine sets it; default .benchmarks/gpu-<stamp>)
#   WHEELS         folder of carried wheels (default .whl)
#   PYTHON         interpreter that has torch + CUDA (default python3)
#   GPU_BENCH_QUICK=1      the quick case lists (a smoke run of the script itself)
#   GPU_BENCH_TESTS        test paths for the `tests` stage (default tests/ops)
#   GPU_BENCH_FAST_PATH=1  also run e2e with fla / causal-conv1d importable (transformers' fast path
#                          as the reference) — the default e2e reference is the pure-PyTorch fallback
#   GPU_BENCH_RUN  working folder (default /tmp/interns2_gpu_run)
#   STAGE_TIMEOUT  seconds per stage (default: tests 180, ops 330, e2e 300, counts 150)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/.benchmarks/gpu-$(date -u +%Y%m%d-%H%M%S)}"
RUN="${GPU_BENCH_RUN:-/tmp/interns2_gpu_run}"
WHEELS="${WHEELS:-.whl}"
PY="${PYTHON:-python3}"
SITE=/tmp/interns2_site        # carried packages the whole run needs
ALT_SITE=/tmp/interns2_alt     # the public alternatives: importable only where a stage asks for them
mkdir -p "$RUN" "$OUT"
status=0
log() { echo "[gpu_bench $(date -u +%H:%M:%S)] $*" | tee -a "$RUN/gpu_bench.log"; }
fail() { log "FAILED: $*"; [ "$status" -ne 0 ] || status=1; }

base_path() { echo "$SITE${PYTHONPATH:+:$PYTHONPATH}"; }
alt_path() { echo "$ALT_SITE:$SITE${PYTHONPATH:+:$PYTHONPATH}"; }

timeout_for() {  # stage -> seconds
  if [ -n "${STAGE_TIMEOUT:-}" ]; then echo "$STAGE_TIMEOUT"; return; fi
  case "$1" in tests) echo 180 ;; ops) echo 330 ;; e2e) echo 300 ;; decode) echo 300 ;; *) echo 150 ;; esac
}

ensure_setup() {
  [ -f "$RUN/.setup-done" ] && return 0
  stage_setup && touch "$RUN/.setup-done"
}

stage_setup() {
  log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
  nvidia-smi > "$RUN/nvidia-smi.txt" 2>&1 || fail "nvidia-smi"
  mkdir -p "$SITE" "$ALT_SITE"
  if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    local alt=() base=()
    for w in "$WHEELS"/*.whl; do
      case "$(basename "$w")" in
        fla_core-*|flash_linear_attention-*|causal_conv1d-*) alt+=("$w") ;;
        *) base+=("$w") ;;
      esac
    done
    if [ ${#base[@]} -gt 0 ]; then
      log "installing ${#base[@]} carried wheel(s) into $SITE: ${base[*]##*/}"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${base[@]}" \
        || fail "pip install (base wheels)"
    fi
    if [ ${#alt[@]} -gt 0 ]; then
      log "installing ${#alt[@]} alternative(s) into $ALT_SITE: ${alt[*]##*/}"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$ALT_SITE" "${alt[@]}" \
        || fail "pip install (alternatives)"
    fi
  else
    log "no wheels in $WHEELS: the public alternatives (fla, causal-conv1d) will be skipped"
  fi
  # interns2_fast itself, editable, without touching the network or the image's packages.
  if ! PYTHONPATH="$(base_path)" "$PY" -c "import interns2_fast.kernels" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$ROOT" >> "$RUN/pip.log" 2>&1 \
      || fail "pip install -e . (see pip.log)"
  fi
  PYTHONPATH="$(alt_path)" "$PY" - <<'PY' 2>&1 | tee -a "$RUN/gpu_bench.log"
import importlib, json
import torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
for mod in ("triton", "transformers", "fla", "causal_conv1d", "interns2_fast", "pytest_benchmark", "matplotlib"):
    try:
        m = importlib.import_module(mod)
        info[mod] = getattr(m, "__version__", "present")
    except Exception as exc:  # noqa: BLE001
        info[mod] = f"missing ({type(exc).__name__})"
print(json.dumps(info, indent=1))
PY
  PYTHONPATH="$(base_path)" "$PY" -m interns2_fast.cli info > "$RUN/info.txt" 2>&1 || fail "interns2-fast info"
}

stage_tests() {
  # The CPU suite, on CUDA: tensors default to the GPU, Triton kernels compile (no interpreter).
  local paths=${GPU_BENCH_TESTS:-tests/ops}
  log "tests on CUDA: $paths"
  TRITON_INTERPRET=0 PYTHONPATH="$ROOT/benchmarks:$(alt_path)" timeout "$(timeout_for tests)" \
    "$PY" -m pytest $paths -p cuda_default_device -p no:xdist -q -ra --junitxml="$RUN/tests-cuda.xml" \
    > "$RUN/tests-cuda.log" 2>&1
  local rc=$?
  tail -n 30 "$RUN/tests-cuda.log" | tee -a "$RUN/gpu_bench.log"
  [ $rc -eq 0 ] || fail "tests on CUDA (exit $rc; see tests-cuda.log)"
}

bench_suite() {  # suite, out-subfolder, pythonpath
  local quick=()
  [ "${GPU_BENCH_QUICK:-0}" = "1" ] && quick=(--quick)
  log "bench --suite $1 ${quick[*]} -> $RUN/$2"
  env -u TRITON_INTERPRET INTERNS2_BENCH_DEVICE=cuda INTERNS2_BENCH_DTYPE=bfloat16 PYTHONPATH="$3" \
    timeout "$(timeout_for "$1")" "$PY" -m interns2_fast.cli bench --suite "$1" "${quick[@]}" --out "$RUN/$2" \
    ${4:+--counts-args "$4"} > "$RUN/$2.log" 2>&1
  local rc=$?
  tail -n 60 "$RUN/$2.log" | tee -a "$RUN/gpu_bench.log" >/dev/null
  [ $rc -eq 0 ] || fail "bench --suite $1 (exit $rc; see $2.log)"
}

stage_ops() { bench_suite ops ops "$(alt_path)"; }

stage_e2e() {
  # Reference = the transformers fallback stack (fla / causal-conv1d NOT importable).
  bench_suite e2e e2e "$(base_path)"
  if [ "${GPU_BENCH_FAST_PATH:-0}" = "1" ]; then
    bench_suite e2e e2e-fastpath "$(alt_path)"
  fi
}

stage_counts() {
  bench_suite counts counts "$(base_path)" "--model full --dtype bfloat16 --device cuda"
}

stage_decode() {
  # generate() per token: transformers' loop (reference, patched) vs the static step (eager, CUDA graph)
  log "decode loop: full-width 4 layers, bf16, B = 1, 8 -> $RUN/decode.json"
  env -u TRITON_INTERPRET PYTHONPATH="$(base_path)" timeout "$(timeout_for decode)" \
    "$PY" "$ROOT/benchmarks/decode_loop.py" --model full-width --device cuda --dtype bfloat16 --batch 1 8 \
    --prompt 64 --new-tokens 33 --variants reference patched static-eager static --json "$RUN/decode.json" \
    > "$RUN/decode.log" 2>&1
  local rc=$?
  tail -n 20 "$RUN/decode.log" | tee -a "$RUN/gpu_bench.log"
  [ $rc -eq 0 ] || fail "decode loop (exit $rc; see decode.log)"
}

stage_pack() {
  # The device tool returns at most 8 files: the summary files, plus everything else in one archive.
  PYTHONPATH="$(base_path)" "$PY" - "$RUN" "$OUT" <<'PY'
import json, pathlib, sys
from interns2_fast import bench
run, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
jsons = sorted(run.glob("*/benchmarks.json"))
rows = bench.make_rows(bench.load_benchmarks(jsons))
bench.merge_benchmark_json(jsons, out / "benchmarks.json")  # statistics kept, per-round data in run.tar.gz
env = json.loads(next(run.glob("*/env.json")).read_text()) if list(run.glob("*/env.json")) else {}
title = f"interns2_fast GPU run — {env.get('cuda_device', '?')}, {env.get('date', '')[:10]}"
parts = [f"# {title}\n", f"torch {env.get('torch')}, transformers {env.get('transformers')}, "
         f"triton {env.get('triton')}; speedup = reference median / median.\n"]
if rows:
    parts.append(bench.markdown_table(rows))
    bench.plot_speedup(rows, out / "speedup.png", title=title)
for counts in sorted(run.glob("*/counts.md")):
    parts.append(counts.read_text())
tests = run / "tests-cuda.log"
if tests.exists():
    tail = [l for l in tests.read_text().splitlines() if l.strip()][-1:]
    parts.append("Tests on CUDA: " + (tail[0] if tail else "no output"))
(out / "results.md").write_text("\n\n".join(parts) + "\n")
print((out / "results.md").read_text())
PY
  [ $? -eq 0 ] || fail "pack"
  tar -czf "$OUT/run.tar.gz" -C "$(dirname "$RUN")" "$(basename "$RUN")" \
    && log "wrote $OUT/{results.md,benchmarks.json,speedup.png,gpu_bench.log,run.tar.gz}"
  cp "$RUN/gpu_bench.log" "$OUT/gpu_bench.log" 2>/dev/null || true
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
for s in "${stages[@]}"; do
  case "$s" in all|setup|tests|ops|e2e|counts|decode|pack) ;; *) echo "unknown stage $s (all|tests|ops|e2e|counts|decode)"; exit 2 ;; esac
done
ensure_setup || fail "setup"
for s in "${stages[@]}"; do
  case "$s" in
    all) stage_tests; stage_ops; stage_e2e; stage_counts; stage_decode ;;
    tests|ops|e2e|counts|decode) "stage_$s" ;;
  esac
done
stage_pack
exit $status
