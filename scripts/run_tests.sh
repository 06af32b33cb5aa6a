#!/usr/bin/env bash
# Run the test suite in .venv. Extra arguments go to pytest (e.g. -m "not slow").
# pytest's exit status 5 (no tests collected) is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} TF_USE_LEGACY_KERAS=1 SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON="$PWD/.venv/bin/python"
# The web page's test drives a real headless browser: install Debian's chromium and
# chromium-driver when they are missing and we may (root with apt-get); otherwise that one
# test skips and says why. RECSYS_INSTALL_BROWSER=0 never installs.
if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } \
    && [ "${RECSYS_INSTALL_BROWSER:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium and chromium-driver with apt-get (for tests/test_service.py's browser test)" >&2
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; } \
    > /tmp/recsys-apt-browser.log 2>&1 \
    || echo "[test] could not install chromium (log: /tmp/recsys-apt-browser.log); the browser test will skip" >&2
fi
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[test] ERROR: pytest collected no tests (exit 5); failing on purpose" >&2
  exit 1
fi
exit "$rc"
