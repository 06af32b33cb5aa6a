#!/usr/bin/env bash
# Run the test suite in .venv. Extra arguments go to pytest (e.g. -m "not slow").
# pytest's exit status 5 (no tests collected) is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} TF_USE_LEGACY_KERAS=1 SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON="$PWD/.venv/bin/python"
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[test] ERROR: pytest collected no tests (exit 5); failing on purpose" >&2
  exit 1
fi
exit "$rc"
