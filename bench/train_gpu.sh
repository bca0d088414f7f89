#!/usr/bin/env bash
# The GPU stages of the shipped-weights pipeline (README "Training"), one stage per device call.
# Inputs travel in .carry/ (ignored by git, named in the call's `carry`); results come back as one tar in 15 MiB
# pieces (the device returns 8 files of 16 MiB, and about 60 MiB in all: two fp16 students per call at most):
# `bash bench/train_gpu.sh unpack FILES_AT DEST` restores them.
#
#   codec     .carry/codecfeat (mamtra codec-features --dtype u8)        -> $OUT/codec/…
#   teacher   .carry/tokens.npz (mamtra tokenize)                          -> $OUT/teacher/…
#   students  .carry/tokens.npz + .carry/teacher (fp16 teacher)            -> $OUT/<run>/… for every student/ablation
#   search    the same inputs: layer ranking + searched vs evenly spaced    -> $OUT/search.json, $OUT/{searched,…}/
#   unpack    (here) FILES_AT DEST: join the pieces and untar them
set -uo pipefail
stage=${1:?stage: codec|teacher|students|search|unpack}
OUT=${OUT:-runs/gpu-out}
if [[ $stage == unpack ]]; then  # unpack FILES_AT DEST: join the returned pieces and untar them
  src=${2:?unpack FILES_AT DEST} dest=${3:?unpack FILES_AT DEST}
  mkdir -p "$dest" && cat "$src"/result.tar.part-?? | tar -C "$dest" -xf -
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

# fp16 copy of an LM run directory's weights (model.checkpoint format) into $OUT/NAME.
export_lm() {
  local run=$1 name=$2
  python3 - "$run" "$OUT/$name" <<'EOF'
import sys, torch, json
from pathlib import Path
from model.checkpoint import load_checkpoint, save_checkpoint
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
best = src / "best"  # the lowest held-out CE (model.train.loop), else the last step
weights = best if (best / "config.json").exists() else src
model = load_checkpoint(weights, device="cpu")
meta = json.loads((weights / "config.json").read_text()).get("meta", {})
save_checkpoint(model, dst, dtype=torch.float16, meta=meta)
state = src / "train_state.pt"
if state.exists():
    history = torch.load(state, map_location="cpu", weights_only=False).get("history", [])
    (dst / "history.json").write_text(json.dumps(history, indent=1) + "\n")
EOF
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
    mkdir -p "$OUT/codec" && cp -r runs/codec-gpu/. "$OUT/codec/"
    ;;
  teacher)
    mamtra train --data .carry/tokens.npz --preset mini-transformer --out runs/teacher --steps "${STEPS:-6000}" \
      --batch 16 --max-len 2048 --lr 1e-3 --eval-every 500 --device cuda --max-minutes "$MINUTES" 2>&1 \
      | tr '\r' '\n' | grep -v '%|' | tee "$OUT/teacher.log"
    export_lm runs/teacher teacher
    ;;
  students)
    # Each run is given a share of the call; RUNS picks which (name:args), STEPS the steps of each.
    IFS=';' read -ra runs <<< "${RUNS:?RUNS='name:distill args;…'}"
    for spec in "${runs[@]}"; do
      name=${spec%%:*}; args=${spec#*:}
      # shellcheck disable=SC2086
      mamtra distill --data .carry/tokens.npz --teacher .carry/teacher --out "runs/$name" --subset 0.02 \
        --steps "${STEPS:-500}" --batch 16 --max-len 2048 --lr 1e-3 --eval-every 100 --device cuda \
        --max-minutes "$MINUTES" $args 2>&1 | tr '\r' '\n' | grep -v '%|' | tee "$OUT/$name.log"
      [[ -f runs/$name/config.json ]] && export_lm "runs/$name" "$name"
    done
    ;;
  search)
    # Placement search at N_ATTENTION attention layers: rank layers (each alone made Mamba, SEARCH_STEPS distillation
    # steps of its Mamba layer, held-out CE), then distil the searched layout and the evenly spaced one alike.
    mamtra distill --data .carry/tokens.npz --teacher .carry/teacher --subset 0.02 --search-layout \
      --attention "${N_ATTENTION:-2}" --search-steps "${SEARCH_STEPS:-80}" --batch 16 --max-len 2048 --device cuda \
      --out runs/search 2>&1 | tr '\r' '\n' | grep -v '%|' | tee "$OUT/search.log"
    python3 - "$OUT/search.log" "$OUT/search.json" <<'EOF2'
import json, sys
text = open(sys.argv[1]).read()
doc = json.loads(text[text.rindex('{\n "teacher_eval_ce"'):])
open(sys.argv[2], "w").write(json.dumps(doc, indent=1))
EOF2
    for kind in ${SEARCH_RUNS-searched evenly_spaced}; do  # SEARCH_RUNS='' ranks only
      layout=$(python3 -c "import json; print(json.load(open('$OUT/search.json'))['${kind}_layout'])")
      mamtra distill --data .carry/tokens.npz --teacher .carry/teacher --out "runs/$kind" --subset 0.02 \
        --layout "$layout" --steps "${STEPS:-500}" --batch 16 --max-len 2048 --lr 1e-3 --eval-every 100 \
        --device cuda --max-minutes "$MINUTES" 2>&1 | tr '\r' '\n' | grep -v '%|' | tee "$OUT/$kind.log"
      [[ -f runs/$kind/config.json ]] && export_lm "runs/$kind" "$kind"
    done
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
# The device returns at most 8 files of 16 MiB: everything goes back as one tar in 15 MiB pieces.
ls -lR "$OUT" | tail -40
tar -C "$OUT" -cf /tmp/result.tar . && find "$OUT" -mindepth 1 -delete && split -b 15M /tmp/result.tar "$OUT/result.tar.part-"
ls -l "$OUT"
