#!/usr/bin/env bash
# Create .venv with the pinned stack (requirements.txt) and Horovod built against it.
# Idempotent: a second run with unchanged pins takes seconds. The Horovod wheel is cached
# outside the repo in $RECSYS_WHEEL_CACHE (default ~/.cache/recsys/wheels), keyed by the
# TensorFlow version it was built against.
# RECSYS_GPU=1 (the GPU image, docker/Dockerfile.gpu) installs tensorflow[and-cuda] at the
# pinned TensorFlow version instead of tensorflow-cpu and builds Horovod with NCCL.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
WHEEL_CACHE=${RECSYS_WHEEL_CACHE:-$HOME/.cache/recsys/wheels}
GPU=${RECSYS_GPU:-0}
say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# ---- prerequisites, each with what to install when missing
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
  || die "Python 3.11 is required (TensorFlow 2.18 + Horovod 0.28.1 are pinned for it); found: $("$PYTHON" --version 2>&1). Install python3.11 and python3.11-venv, or set PYTHON=/path/to/python3.11."
if ! command -v java >/dev/null 2>&1; then
  die "Java 17 or newer is required by Spark 4 (the prepare job) and was not found. On Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless ; or set JAVA_HOME."
fi
JAVA_MAJOR=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ "${JAVA_MAJOR:-0}" -ge 17 ] || die "Java 17 or newer is required by Spark 4; found Java ${JAVA_MAJOR:-unknown} ($(command -v java)). On Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"
command -v g++ >/dev/null 2>&1 || die "g++ is required to build Horovod. On Debian/Ubuntu: sudo apt-get install -y g++ python3.11-dev"

STAMP_KEY=$(cat requirements.txt setup.py scripts/setup_env.sh | sha256sum | cut -c1-16)
STAMP="$VENV/.recsys-setup-$STAMP_KEY"
if [ -f "$STAMP" ] && "$VENV/bin/python" -c 'import horovod.tensorflow' >/dev/null 2>&1; then
  say "environment $VENV is up to date (pins unchanged)"
  exit 0
fi

# ---- virtual environment and pinned packages
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV ($("$PYTHON" --version))"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# pip on some machines warns about configured index folders that do not exist: keep the log readable
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v -e 'is ignored: it is neither a file nor a directory' >&2); }
quiet_pip install -q --upgrade pip wheel "setuptools<76"
PLAIN=$(mktemp); trap 'rm -f "$PLAIN"' EXIT
grep -Ev '^\s*(#|$)' requirements.txt > "$PLAIN"
if [ "$GPU" = 1 ]; then
  # same TensorFlow version, CUDA build (pulls the CUDA/cuDNN/NCCL wheels)
  sed -i 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' "$PLAIN"
fi
say "installing the pinned stack from requirements.txt (the first run downloads about 800 MB of wheels)"
quiet_pip install -q -r "$PLAIN"
NODEPS=$(sed -n 's/^#nodeps //p' requirements.txt)
[ -z "$NODEPS" ] || quiet_pip install -q --no-deps $NODEPS

# ---- Horovod, built once against the installed TensorFlow and cached
HVD_PIN=$(sed -n 's/^#build \(horovod==.*\)$/\1/p' requirements.txt)
HVD_VERSION=${HVD_PIN#horovod==}
TF_VERSION=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))' 2>/dev/null \
  || "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tensorflow"))')
if [ "$GPU" = 1 ]; then
  # NCCL allreduce between GPUs. NCCL is linked statically (libnccl_static.a from libnccl-dev, in
  # the CUDA devel image), so Horovod's NCCL never clashes with the one TensorFlow's wheels load;
  # CUDA kernels for compute capability 7.0 (V100) to 9.0 (H100/H200) only, not every one nvcc knows.
  CACHE_DIR="$WHEEL_CACHE/tf-$TF_VERSION-py311-nccl"
  GPU_OPS=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=STATIC
           "HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-70,75,80,86,89,90}")
else
  CACHE_DIR="$WHEEL_CACHE/tf-$TF_VERSION-py311"; GPU_OPS=(-u HOROVOD_GPU_OPERATIONS)
fi
have_hvd() { "$VENV/bin/python" - "$HVD_VERSION" <<'PY' >/dev/null 2>&1
import sys, importlib.metadata as m
assert m.version("horovod") == sys.argv[1]
import horovod.tensorflow  # noqa: F401  (fails if built against another TF)
PY
}
if ! have_hvd; then
  WHEEL=$(ls "$CACHE_DIR"/horovod-"$HVD_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$WHEEL" ]; then
    if [ "$GPU" = 1 ]; then  # what the NCCL build needs, each with what to install when missing
      CUDA_HOME_DIR=${HOROVOD_CUDA_HOME:-/usr/local/cuda}
      command -v nvcc >/dev/null 2>&1 || [ -x "$CUDA_HOME_DIR/bin/nvcc" ] \
        || die "RECSYS_GPU=1: nvcc not found (on PATH or in $CUDA_HOME_DIR/bin): build in a CUDA devel image (nvidia/cuda:*-devel) or set HOROVOD_CUDA_HOME"
      NCCL_DIRS="${HOROVOD_NCCL_INCLUDE:-} ${HOROVOD_NCCL_HOME:+$HOROVOD_NCCL_HOME/include} /usr/include $CUDA_HOME_DIR/include"
      NCCL_FOUND=""
      for d in $NCCL_DIRS; do [ -f "$d/nccl.h" ] && NCCL_FOUND=$d; done
      [ -n "$NCCL_FOUND" ] \
        || die "RECSYS_GPU=1: nccl.h not found in$(printf ' %s' $NCCL_DIRS): install libnccl-dev (in the nvidia/cuda devel images) or set HOROVOD_NCCL_HOME"
    fi
    say "building Horovod $HVD_VERSION against TensorFlow $TF_VERSION with Gloo$([ "$GPU" = 1 ] && echo ' and NCCL') (about 4 minutes on 2 cores, once; cached in $CACHE_DIR)"
    mkdir -p "$CACHE_DIR"
    BUILD_LOG="$CACHE_DIR/build.log"
    # Gloo controller and CPU ops, no MPI/PyTorch/MXNet. CMAKE_POLICY_VERSION_MINIMUM lets a
    # CMake 4 accept Horovod's bundled gloo; HOROVOD_GPU_OPERATIONS is NCCL for the GPU
    # image and unset otherwise (this machine's nvcc would be picked up otherwise).
    if ! env "${GPU_OPS[@]}" HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 \
        HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO \
        CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" PATH="$PWD/$VENV/bin:$PATH" \
        "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary horovod "$HVD_PIN" -w "$CACHE_DIR" > "$BUILD_LOG" 2>&1; then
      tail -30 "$BUILD_LOG" >&2
      die "Horovod build failed; full log: $BUILD_LOG"
    fi
    WHEEL=$(ls "$CACHE_DIR"/horovod-"$HVD_VERSION"-*.whl | head -1)
  else
    say "installing cached Horovod wheel $WHEEL"
  fi
  quiet_pip install -q --no-deps "$WHEEL"
fi

# ---- the project itself
quiet_pip install -q --no-deps --no-build-isolation -e .

# ---- checks
CHECK=$("$VENV/bin/horovodrun" --check-build 2>&1)
echo "$CHECK" | grep -q '\[X\] TensorFlow' || { echo "$CHECK" >&2; die "horovodrun --check-build does not list TensorFlow"; }
echo "$CHECK" | grep -q '\[X\] Gloo' || { echo "$CHECK" >&2; die "horovodrun --check-build does not list Gloo"; }
if [ "$GPU" = 1 ]; then
  echo "$CHECK" | grep -q '\[X\] NCCL' || { echo "$CHECK" >&2; die "horovodrun --check-build does not list NCCL (GPU build)"; }
fi
rm -f "$VENV"/.recsys-setup-*
touch "$STAMP"
say "ready: $VENV (TensorFlow $TF_VERSION, Horovod $HVD_VERSION with Gloo, Java $JAVA_MAJOR)"
