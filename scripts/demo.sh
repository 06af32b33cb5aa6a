#!/usr/bin/env bash
# The whole pipeline on MovieLens-100K, stage by stage (make demo). Each stage prints what it
# wrote and where; a failing stage stops the demo with its own error message.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-conf/ml-100k.yaml}
RANKS=${RANKS:-2}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} TF_USE_LEGACY_KERAS=1 SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON="$PWD/.venv/bin/python"
export PATH="$PWD/.venv/bin:$PATH"   # spark-submit, horovodrun and python from the venv
step() { printf '\n==> %s\n' "$*"; }

step "1/6 fetch MovieLens-100K (data/raw/ml-100k)"
recsys data fetch ml-100k

step "2/6 Spark prepare: spark-submit jobs/prepare.py --config $CONFIG"
spark-submit jobs/prepare.py --config "$CONFIG" 2> >(grep --line-buffered -E '^\[prepare\]|^error' >&2)

step "3/6 Horovod training: horovodrun -np $RANKS python train.py --config $CONFIG"
horovodrun -np "$RANKS" python train.py --config "$CONFIG" 2>&1 | grep --line-buffered -E '\[train\]|error' | sed -u -E 's/^\[[0-9]+\]<std(err|out)>://'

step "4/6 export vectors and build FAISS indexes"
python jobs/export.py --config "$CONFIG"
python jobs/build_index.py --config "$CONFIG"

step "5/6 evaluation against the baselines on the same split (runs/ml-100k/report)"
recsys evaluate --config "$CONFIG" --fast 2> >(grep --line-buffered -E '^\[evaluate\]|^error' >&2)

step "6/6 recommendations from the FAISS index (ranked; predicted rating in its own column)"
recsys recommend --config "$CONFIG" --user 42 -k 10
recsys similar --config "$CONFIG" --movie 1 -k 10

step "next: recommendations as a service (HTTP API + web page)"
INDEX=$(python -c 'import sys; from recsys.config import load_config; print(load_config(sys.argv[1]).paths.index)' "$CONFIG")
cat <<EOF
Start the server on the index just built:
    .venv/bin/recsys serve --index $INDEX          (or: make serve)
then open the page:  http://127.0.0.1:8000/
the API docs:        http://127.0.0.1:8000/docs      metrics: http://127.0.0.1:8000/metrics
for example:         curl 'http://127.0.0.1:8000/api/users/42/recommendations?k=10'
EOF
