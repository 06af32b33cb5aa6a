"""Starting Spark the way every job here needs it: Java checked, quiet, reproducible."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from recsys.errors import RecsysError

MIN_JAVA = 17


def java_version() -> int | None:
    """Major version of the ``java`` Spark would use (JAVA_HOME first), or None if absent."""
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def check_java() -> int:
    """Raise a clear error unless Java 17+ is available; return its major version."""
    version = java_version()
    if version is None:
        raise RecsysError(
            "Java was not found, and Spark 4 (the prepare job) needs Java 17 or newer. "
            "On Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless (or set JAVA_HOME)."
        )
    if version < MIN_JAVA:
        raise RecsysError(
            f"Java {version} found, but Spark 4 (the prepare job) needs Java {MIN_JAVA} or newer. "
            "On Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless, then set JAVA_HOME."
        )
    return version


def get_spark(app_name: str, master: str, driver_memory: str, shuffle_partitions: int):
    """A SparkSession; ``master`` is used only when spark-submit did not set one.

    So ``spark-submit --master yarn jobs/prepare.py`` runs on YARN unchanged, and a plain
    ``python jobs/prepare.py`` (or the tests) runs in local mode from the config.
    """
    check_java()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    from recsys.verbosity import spark_java_options, verbose

    conf = SparkConf()  # before the gateway is touched: the config's master applies as it always did
    if "PYSPARK_GATEWAY_PORT" in os.environ and not verbose():
        _quiet_running_jvm()  # under spark-submit the driver JVM exists already: lower its log level now
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ and spark_java_options() and not conf.contains("spark.driver.extraJavaOptions"):
        builder = builder.config("spark.driver.extraJavaOptions", spark_java_options())  # a JVM started here
    if not conf.contains("spark.master"):
        builder = builder.master(master)
    if not conf.contains("spark.driver.memory"):
        builder = builder.config("spark.driver.memory", driver_memory)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "20000")
        .config("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", "3")
        .config("spark.executorEnv.CUDA_VISIBLE_DEVICES", "")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _quiet_running_jvm() -> None:
    """Set every log4j logger of the spark-submit JVM to ERROR before the SparkContext logs."""
    from pyspark import SparkContext

    SparkContext._ensure_initialized()  # connects to the spark-submit gateway; launches nothing
    jvm = SparkContext._jvm
    jvm.org.apache.logging.log4j.core.config.Configurator.setAllLevels("", jvm.org.apache.logging.log4j.Level.ERROR)


ALS_CHECKPOINT_INTERVAL = 5  # iterations between lineage checkpoints of an ALS fit


def als_factors(frame, n_users: int, n_movies: int, master: str, driver_memory: str, **als_params):
    """Fit Spark MLlib ALS on a pandas ``frame`` of (user row, movie row, value) columns named by
    ``als_params`` (``userCol``, ``itemCol``, ``ratingCol``, with ``rank`` and the other ALS params).

    Returns ``(U [n_users, rank], V [n_movies, rank], has_u [n_users], has_m [n_movies])``: the
    factors (zeros for an id without any) and which rows were fitted.

    ALS's RDD lineage grows with every iteration; serialised, a long one overflows the JVM stack
    (java.lang.StackOverflowError). Spark cuts it every ``checkpointInterval`` iterations, but
    only with a checkpoint directory: ``spark.checkpoint.dir`` if configured, else in local mode
    a temporary one removed after the fit (on a cluster, set ``spark.checkpoint.dir`` to shared
    storage).
    """
    import tempfile

    import numpy as np
    from pyspark.ml.recommendation import ALS

    spark = get_spark("recsys-evaluate-als", master, driver_memory, 4)
    sc = spark.sparkContext
    with tempfile.TemporaryDirectory(prefix="recsys-als-checkpoints-") as scratch:
        if sc.master.startswith("local") and not sc.getConf().contains("spark.checkpoint.dir"):
            sc.setCheckpointDir(scratch)  # a fresh one per fit: the last one is gone with its fit
        model = ALS(checkpointInterval=ALS_CHECKPOINT_INTERVAL, **als_params).fit(spark.createDataFrame(frame))
        rank = als_params["rank"]
        U, V = np.zeros((n_users, rank)), np.zeros((n_movies, rank))
        has_u, has_m = np.zeros(n_users, bool), np.zeros(n_movies, bool)
        for factors, has, rows in ((U, has_u, model.userFactors.collect()), (V, has_m, model.itemFactors.collect())):
            for r in rows:
                factors[r.id] = r.features
                has[r.id] = True
    return U, V, has_u, has_m
