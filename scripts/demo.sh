#!/usr/bin/env bash
# The whole pipeline on MovieLens-100K, stage by stage (make demo). Each stage prints what it
# wrote and where; a failing stage stops the demo with its own error message.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-conf/ml-100k.yaml}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} TF_USE_LEGACY_KERAS=1 SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON="$PWD/.venv/bin/python"
BIN="$PWD/.venv/bin"
step() { printf '\n==> %s\n' "$*"; }

step "1. fetch MovieLens-100K into data/raw/ml-100k"
"$BIN/recsys" data fetch ml-100k
