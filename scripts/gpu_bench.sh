#!/usr/bin/env bash
# The prepared GPU run, for an NVIDIA machine without network access (the driver is
# scripts/gpu_bench.py; its docstring has every detail). Budget: 15 minutes of device time per
# session, machine start included; two commands of at most 360 s each on one warm machine:
#
#   scripts/gpu_bench.sh part1        # setup, tests on CUDA, op benchmarks        (run timeout_s=420)
#   scripts/gpu_bench.sh part2        # setup (cached if warm), e2e, decode counts (run timeout_s=420)
#   scripts/gpu_bench.sh --dry-run all  # the same stages on the CPU, tiny sizes, Triton interpreter
#
# Every stage has its own time cap and writes $OUT/<stage>.tar.gz, $OUT/summary.md (what ran, what
# was skipped and why, the tables so far), $OUT/status.json and $OUT/benchmarks.json as soon as it
# ends, so a command cut short still brings back the stages that finished.
#
# Wheels (prepared on a machine with network access, in the repo root; see benchmarks/README.md):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl fla-core==0.6.0 transformers==5.2.0 tokenizers==0.22.2
#   (transformers 5.2.0 requires tokenizers<=0.23.0; without a matching tokenizers wheel it is
#   skipped with that reason and the image's transformers is used. causal-conv1d has no binary
#   wheel on PyPI and its nvcc build does not fit a command: it is skipped unless a wheel built
#   beforehand is carried.)
# and name `.whl` in the device tool's `carry`, or point WHEELS at another folder.
#
# Environment: OUT, WHEELS, PYTHON (default python3), GPU_BENCH_RUN, GPU_BENCH_CAPS ("ops=200,..."),
# GPU_BENCH_BUDGET, GPU_BENCH_QUICK=1, GPU_BENCH_TESTS, GPU_BENCH_TEST_WORKERS, GPU_BENCH_OPS_ARGS,
# GPU_BENCH_E2E_ARGS, GPU_BENCH_COUNTS_ARGS, GPU_BENCH_DRY_RUN=1.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" scripts/gpu_bench.py "$@"
