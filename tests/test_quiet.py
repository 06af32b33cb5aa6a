"""Quiet by default: a stage prints its progress lines and errors, nothing of Spark's or
TensorFlow's own chatter, unless --verbose (real Spark, real training)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import BIN, ENV, ROOT, train_cmd

pytestmark = pytest.mark.slow
JVM_BANNER = "WARNING: Using incubator modules"  # printed by the JVM itself before any logging starts


def _noise(stderr: str, progress: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith((progress, JVM_BANNER))]


def test_prepare_prints_progress_only(tmp_path):
    from recsys.datasets.synth import generate

    generate(tmp_path / "raw", 3_000, 60, 100, progress=False)
    env = dict(ENV, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("RECSYS_VERBOSE", None)
    proc = subprocess.run([os.path.join(BIN, "recsys"), "prepare", "--config", str(ROOT / "conf/default.yaml"),
                           "--set", f"paths.raw={tmp_path / 'raw'}", "--set", f"paths.prepared={tmp_path / 'prepared'}",
                           "--set", "prepare.shards.train=2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # spark-submit's PythonRunner merges the driver's stderr into its stdout: check both streams
    assert _noise(proc.stderr, "[prepare]") == [], proc.stderr[:3000]
    assert proc.stdout.splitlines()[0].startswith("[prepare] start"), proc.stdout[:2000]
    # progress lines, then the job's one-line summary ("prepared DIR: N rating rows read, ...")
    assert [ln for ln in _noise(proc.stdout, "[prepare]") if not ln.startswith("prepared ")] == [], proc.stdout[:3000]
    assert "[prepare] done" in proc.stdout and proc.stdout.splitlines()[-1].startswith("prepared ")


ALS_SCRIPT = """
import sys
from recsys.verbosity import set_verbose
set_verbose("--verbose" in sys.argv)
from recsys.spark import get_spark
spark = get_spark("quiet-test", "local[1]", "1g", 2)
from pyspark.ml.recommendation import ALS
df = spark.createDataFrame([(u, m, float((u * m) % 5 + 1)) for u in range(8) for m in range(8)], ["u", "m", "r"])
ALS(userCol="u", itemCol="m", ratingCol="r", rank=2, maxIter=2).fit(df).transform(df).count()
print("[test] done", file=sys.stderr)
spark.stop()
"""


def test_spark_als_baseline_is_quiet_and_verbose_on_request():
    """The evaluation's Spark ALS baseline: no log4j lines, no netlib BLAS load failures."""
    runs = {}
    for flag in ("", "--verbose"):
        env = dict(ENV)
        env.pop("RECSYS_VERBOSE", None)
        proc = subprocess.run([sys.executable, "-c", ALS_SCRIPT, *([flag] if flag else [])], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[flag] = proc.stderr
    assert _noise(runs[""], "[test]") == [], runs[""][:3000]
    assert 'Setting default log level to "WARN"' in runs["--verbose"]  # Spark's own defaults, as asked


def test_training_without_retrieval_loss_does_not_warn_about_gradients(train_data, tmp_path):
    """model.retrieval_weight=0 (the "rating loss only" model of docs/benchmarks.md) leaves the
    retrieval head without gradients; TensorFlow's warning about it is not repeated at every trace."""
    _, overrides = train_data
    logs = {}
    for flag in ((), ("--verbose",)):
        env = dict(ENV)
        env.pop("RECSYS_VERBOSE", None)
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
        cmd = train_cmd(overrides, 1, tmp_path / f"model{len(flag)}", "--set", "train.epochs=1",
                        "--set", "model.retrieval_weight=0", *flag)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs[flag] = proc.stderr
    assert _noise(logs[()], "[train]") == [], logs[()][:3000]
    assert "Gradients do not exist" in logs[("--verbose",)]
