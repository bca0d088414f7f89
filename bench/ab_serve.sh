#!/usr/bin/env bash
# The serve benchmark on several trees one after another in one device call (A/B of a change: only rows of one
# call are comparable). Trees: label=dir, e.g. a `git archive REV model service bench` unpacked under .carry/.
# Carry .whl .carry/serve_whl .carry/hifigan_pkg and the trees; results in $OUT/LABEL/serve.json.
# A tree may carry server settings: label=dir@VAR=value,VAR=value (e.g. "hold0=.@MAMTRA_PREFILL_HOLD_STEPS=0"),
# and options of its own for `mamtra bench serve` after a +, appended to the shared ones (the last of a repeated option
# wins): label=dir[@VAR=value,…][+--option=value,…] (e.g. "p64=.+--max-streams=64").
# A variant that writes no serve.json (a crash, or its 280 s run out) says so and keeps the tail of its server log
# ($OUT/LABEL/server_tail.txt); the logs of variants that ran are dropped (the device returns at most 8 files).
# Usage: bash bench/ab_serve.sh "old=.carry/old new=." -- [mamtra bench serve options]
set -uo pipefail
R=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl .carry/serve_whl/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1
trees=$1; shift; shift
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for spec in $trees; do
  label=${spec%%=*}; rest=${spec#*=}
  opts=(); [[ $rest == *+* ]] && IFS=, read -ra opts <<< "${rest#*+}"; rest=${rest%%+*}
  where=${rest%%@*}; dir=$(cd $where && pwd)
  envs=(); [[ $rest == *@* ]] && IFS=, read -ra envs <<< "${rest#*@}"
  mkdir -p $OUT/$label
  (cd $dir && env "${envs[@]}" PYTHONPATH=/tmp/site:$dir:$R/.carry/hifigan_pkg timeout 280 python3 -c "import sys; from service.cli import main; sys.exit(main(['bench', 'serve', '--out', '$OUT/$label', *sys.argv[1:]]))" "$@" "${opts[@]}" 2>&1 | grep -v '%|' | grep -E "^mamtra|^transformer|largest|first audio|engine loop|players that buffer|urgent lane|first-chunk lane|prefill steps|chunks joined|audio played|late chunk|process CPU|garbage collections" | awk '!seen[$0]++' | sed "s/^/$label /"; exit ${PIPESTATUS[0]})
  status=$?
  if [[ ! -f $OUT/$label/serve.json ]]; then
    echo "$label: no serve.json (exit status $status; 124: the 280 s ran out); its server log's tail: $OUT/$label/server_tail.txt"
    log=$(ls -t $OUT/$label/*.log 2>/dev/null | head -1)
    [[ -n $log ]] && tail -n 120 "$log" > $OUT/$label/server_tail.txt
  fi
  rm -f $OUT/$label/*.png $OUT/$label/*.log
done
