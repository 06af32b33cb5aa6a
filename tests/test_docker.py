"""The container images (docker/) cannot be built here: check offline that they take every pin
from requirements.txt, that everything they copy and run exists, and that they run as non-root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cpu": ROOT / "docker/Dockerfile.cpu", "gpu": ROOT / "docker/Dockerfile.gpu"}
VENV = Path(sys.executable).parent.parent


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = re.sub(r"^#(nodeps|build) ", "", line.strip())
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_images_take_their_pins_from_requirements(kind):
    steps = _instructions(DOCKERFILES[kind])
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    # no package is pinned (or installed) by the Dockerfile itself
    assert not re.search(r"pip3? install", runs), "install Python packages through scripts/setup_env.sh"
    assert not re.search(r"[A-Za-z0-9_.\-\[\]]+==\d", runs), "a version pin in a Dockerfile"
    assert "bash scripts/setup_env.sh" in runs
    assert ("RECSYS_GPU=1" in runs) == (kind == "gpu")
    copied = [arg.split()[0] for op, arg in steps if op == "COPY" and "--from" not in arg]
    assert "requirements.txt" in copied


def test_gpu_image_installs_the_pinned_tensorflow_version_with_cuda(tmp_path):
    # run setup_env.sh's own substitution on the pin file
    script = (ROOT / "scripts/setup_env.sh").read_text()
    sed = re.search(r"sed -i '([^']+)' \"\$PLAIN\"", script).group(1)
    plain = tmp_path / "req.txt"
    plain.write_text((ROOT / "requirements.txt").read_text())
    subprocess.run(["sed", "-i", sed, str(plain)], check=True)
    lines = plain.read_text().splitlines()
    assert f"tensorflow[and-cuda]=={_pins()['tensorflow-cpu']}" in lines
    assert not any(line.startswith("tensorflow-cpu") for line in lines)
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in script and r"\[X\] NCCL" in script


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_everything_the_image_copies_and_runs_exists(kind):
    steps = _instructions(DOCKERFILES[kind])
    for op, arg in steps:
        if op == "COPY" and "--from" not in arg:
            for src in arg.split()[:-1]:
                assert (ROOT / src).exists(), f"{kind}: COPY {src}: not in the repository"
    entry = next(arg for op, arg in steps if op == "ENTRYPOINT")
    script = re.search(r"/opt/recsys/(\S+?)\"", entry).group(1)
    assert (ROOT / script).is_file() and (ROOT / script).stat().st_mode & 0o111, f"{script} not executable"
    # the runtime stage has what the manifests start: sshd for Horovod workers, java for Spark
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    runtime = " ".join(arg for op, arg in steps[last_from:] if op == "RUN")
    for package in ("openjdk-17-jre-headless", "openssh-server", "tini"):
        assert package in runtime, f"{kind}: runtime stage lacks {package}"
    env = " ".join(arg for op, arg in steps if op == "ENV")
    # the image's venv is laid out as ours: SPARK_HOME is the pyspark package
    spark_home = re.search(r"SPARK_HOME=(\S+)", env).group(1).replace("/opt/venv", str(VENV))
    assert (Path(spark_home) / "bin/spark-submit").is_file()
    assert "TF_USE_LEGACY_KERAS=1" in env


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_images_run_as_non_root(kind):
    steps = _instructions(DOCKERFILES[kind])
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any("useradd --uid 1000" in arg for op, arg in steps if op == "RUN")


def test_spark_entrypoint_starts_what_spark_on_kubernetes_expects():
    entry = (ROOT / "docker/entrypoint.sh").read_text()
    out = subprocess.run(["bash", "-n", str(ROOT / "docker/entrypoint.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    backend = re.search(r"(org\.apache\.spark\.\S+KubernetesExecutorBackend)", entry).group(1)
    jars = list((VENV / "lib/python3.11/site-packages/pyspark/jars").glob("spark-kubernetes_*.jar"))
    assert jars, "pyspark ships no spark-kubernetes jar"
    with zipfile.ZipFile(jars[0]) as jar:
        assert backend.replace(".", "/") + ".class" in jar.namelist()
    # anything else is executed as given
    out = subprocess.run(["bash", str(ROOT / "docker/entrypoint.sh"), "echo", "hello"], capture_output=True, text=True)
    assert out.stdout.strip() == "hello"


def _setup_block(pattern: str) -> str:
    """A block of scripts/setup_env.sh (found by ``pattern``), to run on its own in bash."""
    match = re.search(pattern, (ROOT / "scripts/setup_env.sh").read_text(), re.S | re.M)
    assert match, f"scripts/setup_env.sh: no block matching {pattern!r}"
    return match.group(0)


def _bash(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    prelude = "set -euo pipefail\ndie() { printf 'ERROR: %s\\n' \"$*\" >&2; exit 1; }\n"
    return subprocess.run([shutil.which("bash"), "-c", prelude + code], capture_output=True, text=True, timeout=30,
                          env=env if env is not None else {"PATH": "/usr/bin:/bin"})


def test_gpu_image_builds_horovod_with_nccl(tmp_path):
    """The GPU image's build stage is a CUDA devel image (nvcc, and libnccl-dev's nccl.h and
    libnccl_static.a) that runs setup_env.sh with RECSYS_GPU=1; its runtime stage is the same
    CUDA/cuDNN release. setup_env.sh's GPU branch hands Horovod's build NCCL GPU operations,
    static NCCL and kernels up to compute capability 9.0 (H100/H200), stops with a clear error
    when nvcc or nccl.h is missing, and fails the set-up unless --check-build lists NCCL."""
    steps = _instructions(DOCKERFILES["gpu"])
    args = dict(arg.split("=", 1) for op, arg in steps if op == "ARG" and "=" in arg)
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    images = [args[re.fullmatch(r"\$\{(\w+)\}", steps[i][1].split()[0]).group(1)] for i in stages]
    build, runtime = images[0], images[-1]
    assert re.search(r"nvidia/cuda:[\d.]+-cudnn-devel-", build), build
    assert runtime == build.replace("-devel-", "-runtime-"), (build, runtime)
    build_runs = " ".join(arg for op, arg in steps[stages[0]:stages[1]] if op == "RUN")
    assert "RECSYS_GPU=1" in build_runs and "bash scripts/setup_env.sh" in build_runs

    # the Horovod build environment, as each branch of the script sets it
    branch = _setup_block(r'^if \[ "\$GPU" = 1 \]; then\n  # NCCL.*?^fi$')
    ops = {}
    for gpu in ("1", "0"):
        out = _bash(f"GPU={gpu}; WHEEL_CACHE=/cache; TF_VERSION=2.18.1\n{branch}\nprintf '%s\\n' \"${{GPU_OPS[@]}}\"")
        assert out.returncode == 0, out.stderr
        ops[gpu] = out.stdout.split()
    assert ops["0"] == ["-u", "HOROVOD_GPU_OPERATIONS"]  # CPU: this machine's nvcc is never picked up
    gpu_env = dict(item.split("=", 1) for item in ops["1"])
    assert gpu_env["HOROVOD_GPU_OPERATIONS"] == "NCCL" and gpu_env["HOROVOD_NCCL_LINK"] == "STATIC"
    capabilities = [int(c) for c in gpu_env["HOROVOD_BUILD_CUDA_CC_LIST"].split(",")]
    assert {70, 80, 90} <= set(capabilities)
    script = (ROOT / "scripts/setup_env.sh").read_text()
    assert re.search(r'env "\$\{GPU_OPS\[@\]\}" HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1', script)
    assert re.search(r"if \[ \"\$GPU\" = 1 \]; then\n\s+echo \"\$CHECK\" \| grep -q '\\\[X\\\] NCCL' \|\| .*die", script)

    # the prerequisite checks, run on their own: no nvcc, then nvcc without nccl.h, then both
    checks = _setup_block(r'^    if \[ "\$GPU" = 1 \]; then  # what the NCCL build needs.*?^    fi$')
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    env = {"PATH": str(tmp_path / "empty"), "HOROVOD_CUDA_HOME": str(cuda), "HOROVOD_NCCL_INCLUDE": str(tmp_path)}
    out = _bash(f"GPU=1\n{checks}", env)
    assert out.returncode == 1 and "nvcc not found" in out.stderr, out.stderr
    nvcc = cuda / "bin/nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    out = _bash(f"GPU=1\n{checks}", env)
    if not Path("/usr/include/nccl.h").exists():
        assert out.returncode == 1 and "nccl.h not found" in out.stderr and "libnccl-dev" in out.stderr, out.stderr
    (tmp_path / "nccl.h").write_text("#define NCCL_MAJOR 2\n")
    out = _bash(f"GPU=1\n{checks}\necho checked", env)
    assert out.returncode == 0 and out.stdout.strip() == "checked", out.stderr
