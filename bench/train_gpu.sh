#!/usr/bin/env bash
# The GPU stages of the shipped-weights pipeline (README "Training"), one stage per device call.
# Inputs travel in .carry/ (ignored by git, named in the call's `carry`); results are written to $OUT in pieces of
# at most 15 MiB (the device returns 16 MiB per file): reassemble here with `bash bench/train_gpu.sh unpack DIR`.
#
#   codec     .carry/codecfeat (mamtra codec-features --dtype u8)        -> $OUT/codec/…
#   teacher   .carry/tokens.npz (mamtra tokenize)                          -> $OUT/teacher/…
#   students  .carry/tokens.npz + .carry/teacher (fp16 teacher)            -> $OUT/<run>/… for every student/ablation
#   unpack    (here) DIR: join *.part-?? pieces back into their files
set -uo pipefail
stage=${1:?stage: codec|teacher|students|unpack}
OUT=${OUT:-runs/gpu-out}
if [[ $stage == unpack ]]; then
  dir=${2:?unpack DIR}
  for first in $(find "$dir" -name '*.part-aa'); do
    base=${first%.part-aa}
    cat "$base".part-?? > "$base" && echo "joined $base"
  done
  exit 0
fi
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/card.txt"
MINUTES=${MINUTES:-7}
mamtra() { python3 -c "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))" "$@"; }
codec_cli() { python3 -m model.codec.cli "$@"; }

# fp16 copy of an LM run directory's weights (model.checkpoint format) into $OUT/NAME, split to fit the return.
export_lm() {
  local run=$1 name=$2
  python3 - "$run" "$OUT/$name" <<'EOF'
import sys, torch, json
from pathlib import Path
from model.checkpoint import load_checkpoint, save_checkpoint
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
model = load_checkpoint(src, device="cpu")
meta = json.loads((src / "config.json").read_text()).get("meta", {})
save_checkpoint(model, dst, dtype=torch.float16, meta=meta)
state = src / "train_state.pt"
if state.exists():
    history = torch.load(state, map_location="cpu", weights_only=False).get("history", [])
    (dst / "history.json").write_text(json.dumps(history, indent=1) + "\n")
EOF
  split_big "$OUT/$name"
}
split_big() {
  find "$1" -type f -size +15M | while read -r f; do split -b 15M "$f" "$f.part-" && rm "$f"; done
}

case $stage in
  codec)
    # Steps/s of the codec's training step per precision / cuDNN setting (60 steps minus 10 steps), a
    # profile of the slowest, then the real run with the fastest, its step count fitted to MINUTES.
    # PRECISION=fp32 STEPS=N skips the measurement (it measured fp32/TF32 fastest on H100: docs/BENCHMARKS.md).
    if [[ -z ${PRECISION:-} ]]; then
      python3 bench/codec_speed.py .carry/codecfeat "$OUT" 2>&1 | tee "$OUT/codec_speed.log"
      prec=$(python3 -c "import json; print(json.load(open('$OUT/codec_speed.json'))['best']['precision'])")
      rate=$(python3 -c "import json; print(json.load(open('$OUT/codec_speed.json'))['best']['steps_per_s'])")
    else
      prec=$PRECISION rate=0
    fi
    steps=${STEPS:-$(python3 -c "print(int($rate * 60 * ($MINUTES - 0.3) * 0.95))")}
    echo "codec: precision $prec, $rate steps/s -> $steps steps" | tee -a "$OUT/codec.log"
    codec_cli train-codec --features .carry/codecfeat --out runs/codec-gpu --steps "$steps" --batch 32 --device cuda \
      --save-every 100000 --max-minutes "$MINUTES" --precision "$prec" --no-progress 2>&1 | tee -a "$OUT/codec.log"
    rm -f runs/codec-gpu/train_state*
    mkdir -p "$OUT/codec" && cp -r runs/codec-gpu/. "$OUT/codec/" && split_big "$OUT/codec"
    ;;
  teacher)
    mamtra train --data .carry/tokens.npz --preset mini-transformer --out runs/teacher --steps "${STEPS:-6000}" \
      --batch 16 --max-len 2048 --lr 1e-3 --eval-every 500 --device cuda --max-minutes "$MINUTES" 2>&1 \
      | grep -v '%|' | tee "$OUT/teacher.log"
    export_lm runs/teacher teacher
    ;;
  students)
    # Each run is given a share of the call; RUNS picks which (name:args), STEPS the steps of each.
    IFS=';' read -ra runs <<< "${RUNS:?RUNS='name:distill args;…'}"
    for spec in "${runs[@]}"; do
      name=${spec%%:*}; args=${spec#*:}
      # shellcheck disable=SC2086
      mamtra distill --data .carry/tokens.npz --teacher .carry/teacher --out "runs/$name" --subset 0.02 \
        --steps "${STEPS:-1500}" --batch 16 --max-len 2048 --lr 1e-3 --eval-every 250 --device cuda \
        --max-minutes "$MINUTES" $args 2>&1 | grep -v '%|' | tee "$OUT/$name.log"
      [[ -f runs/$name/config.json ]] && export_lm "runs/$name" "$name"
    done
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
ls -lR "$OUT" | tail -40
