#!/usr/bin/env bash
# One device call: install carried wheels, GPU tests, then the LM benchmarks into $OUT (or ./bench-results).
# Usage on the GPU machine, from the repo root: bash bench/run_gpu.sh [tests|bench|all]
set -uo pipefail
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
what=${1:-all}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/card.txt"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -p no:cacheprovider -m gpu -s -q tests/model tests/service/engine/test_runner_gpu.py 2>&1 | grep -v Warning | tee "$OUT/gpu_tests.log"
fi
if [[ $what == bench || $what == all ]]; then
  for b in memory decode longform; do
    python3 -c "from service.cli import main; import sys; sys.exit(main(['bench', '$b', '--out', '$OUT']))" \
      2>&1 | grep -v '%|' | tee -a "$OUT/bench.log"
  done
fi
