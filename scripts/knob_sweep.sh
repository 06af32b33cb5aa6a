#!/usr/bin/env bash
# Knob sweep: every line of KNOBS (KEY=VALUE ... overrides) runs once and must end either cleanly or
# with a one-line "error:" (an invalid combination), never with a traceback.
#   bash scripts/knob_sweep.sh [CONFIG] [KNOBS] [OUT]
# defaults: conf/ml-100k.yaml, scripts/knob_sweep.txt, /tmp/recsys-knob-sweep. A line whose first
# key is evaluate.* runs `recsys evaluate --fast` on the config's served index (run `make demo`
# first); any other line trains 2 epochs (one rank) into OUT/runN, then exports and indexes it.
# The prepared data must exist (spark-submit jobs/prepare.py --config CONFIG). Prints one line per
# run; exits 1 when any run left a traceback or failed without an "error:" line.
set -uo pipefail
cd "$(dirname "$0")/.."
config=${1:-conf/ml-100k.yaml}; knobs=${2:-scripts/knob_sweep.txt}; out=${3:-/tmp/recsys-knob-sweep}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} TF_USE_LEGACY_KERAS=1 SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON="$PWD/.venv/bin/python" PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$out"; i=0; bad=0
while IFS= read -r line; do
  line=${line%%#*}; [ -z "${line// }" ] && continue
  i=$((i + 1)); d="$out/run$i"; rm -rf "$d"; mkdir -p "$d"
  sets=(); for kv in $line; do sets+=(--set "$kv"); done
  if [[ $line == evaluate.* ]]; then
    python -m recsys.cli evaluate --config "$config" --fast --set "paths.report=$d/report" "${sets[@]}" > "$d/run.log" 2>&1
    status="evaluate=$?"
  else
    paths=(--set "paths.model=$d/model" --set "paths.vectors=$d/vectors" --set "paths.index=$d/index")
    { python train.py --config "$config" --set train.epochs=2 "${paths[@]}" "${sets[@]}" \
        && python jobs/export.py --config "$config" "${paths[@]}" "${sets[@]}" \
        && python jobs/build_index.py --config "$config" "${paths[@]}" "${sets[@]}"; } > "$d/run.log" 2>&1
    status="train+export+index=$?"
  fi
  verdict=ok
  if grep -q "Traceback" "$d/run.log"; then verdict=TRACEBACK; bad=1
  elif [[ $status != *=0 ]]; then
    if grep -q "^error: " "$d/run.log"; then verdict="refused: $(grep -m1 '^error: ' "$d/run.log" | cut -c1-160)"
    else verdict="FAILED without an error line"; bad=1; fi
  fi
  echo "run$i $status :: $line :: $verdict"
done < "$knobs"
exit $bad
