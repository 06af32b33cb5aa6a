"""Quiet by default: progress lines and errors only, everything else with ``--verbose``.

Every entry point (``recsys prepare/evaluate``, ``jobs/*.py``, ``train.py``) takes ``--verbose``
and calls :func:`set_verbose`; the choice travels to child processes (spark-submit, Horovod
ranks, Spark's Python workers) in the environment variable ``RECSYS_VERBOSE``. Quiet means:

* Spark's JVM logs errors only (:data:`LOG4J_QUIET`), so its INFO start-up lines and the
  ``netlib`` BLAS fallback warnings of the ALS baseline are not printed;
* TensorFlow's C++ log shows errors only (``TF_CPP_MIN_LOG_LEVEL=2`` unless already set), and
  its Python warnings (e.g. "Gradients do not exist" for the retrieval head of a model trained
  with ``model.retrieval_weight=0``) are dropped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

ENV = "RECSYS_VERBOSE"
LOG4J_QUIET = Path(__file__).with_name("log4j2-quiet.properties")


def verbose() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or verbose()


_FILTER = _ErrorsOnly()


def set_verbose(flag: bool) -> None:
    """Record the choice for this process and its children; quiet the Python-side loggers."""
    if flag:
        os.environ[ENV] = "1"
    elif ENV not in os.environ:
        os.environ[ENV] = "0"
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "py4j"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def spark_java_options() -> str:
    """JVM options for a Spark driver started here: errors-only logging unless verbose, and no
    attempt to load a native BLAS/LAPACK that is not installed (netlib's JNI loader would print
    ``dlopen(libblas.so.3) failed`` to stderr itself; the Java implementation runs either way)."""
    import ctypes.util

    options = [] if verbose() else [f"-Dlog4j2.configurationFile=file:{LOG4J_QUIET}"]
    for lib in ("blas", "lapack"):
        if ctypes.util.find_library(lib) is None:
            options.append(f"-Ddev.ludovic.netlib.{lib}.allowNative=false")
    return " ".join(options)
