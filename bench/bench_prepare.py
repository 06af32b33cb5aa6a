#!/usr/bin/env python
"""Benchmark the Spark prepare job against a single-process pandas encode-and-write.

    python bench/bench_prepare.py --spark-config conf/synth-25m.yaml --pandas 1000000 --pandas 5000000

Spark: runs ``spark-submit jobs/prepare.py`` on the config's raw data (generate it first
with ``recsys data synth --config conf/synth-25m.yaml``) and samples the peak RSS of the
driver (in local mode the driver JVM also runs the executors' JVM side; the Python workers
are reported separately). pandas: reads the first N ratings of the same files with the
same parsers, encodes with the same FeatureEncoder, splits by the same rule and writes the
same block-encoded TFRecords, in one process. Prints Markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sample(proc: psutil.Popen) -> tuple[float, float, float]:
    peak_jvm = peak_py = 0
    while proc.poll() is None:
        jvm = py = 0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                rss = p.memory_info().rss
                if "java" in p.name():
                    jvm += rss
                else:
                    py += rss
        except psutil.Error:
            pass
        peak_jvm, peak_py = max(peak_jvm, jvm), max(peak_py, py)
        time.sleep(0.5)
    return peak_jvm / 2**20, peak_py / 2**20, 0.0


def bench_spark(config: str) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    started = time.time()
    proc = psutil.Popen([str(Path(sys.executable).parent / "spark-submit"), "jobs/prepare.py", "--config", config],
                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jvm, py, _ = _sample(proc)
    seconds = time.time() - started
    out = proc.stdout.read()
    if proc.returncode:
        print(out[-3000:])
        raise SystemExit("spark prepare failed")
    lines = [l for l in out.splitlines() if l.startswith(("[prepare]", "prepared"))]
    print("\n".join(lines))
    import json

    from recsys.config import load_config

    manifest = json.loads((Path(load_config(config).paths.prepared) / "manifest.json").read_text())
    n = manifest["accounting"]["ratings"]["rows_read"]
    print(f"| Spark local[2] ({config}) | {n:,} | {seconds:.0f} | {n / seconds:,.0f} | {jvm:,.0f} (driver JVM) | {py:,.0f} |")


def bench_pandas(raw: str, n: int, examples_per_record: int = 256) -> None:
    """The same encode-and-write in one process (the peer a small team might write instead)."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from recsys.config import load_config
    from recsys.datasets.formats import FORMATS, decode_line
    from recsys.features import FeatureEncoder, build_vocabularies
    from recsys.prepare.tfrecords import serialize_block

    proc = psutil.Process()
    started = time.time()
    spec = FORMATS["ml-1m"]
    rows = []
    with open(Path(raw) / "ratings.dat", "rb") as fh:
        for i, raw_line in enumerate(fh):
            if i >= n:
                break
            rows.append(spec.parsers["ratings"](decode_line(raw_line)))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    users = [dict(zip(["user_id", "gender", "age", "occupation", "zip"], spec.parsers["users"](decode_line(l))))
             for l in open(Path(raw) / "users.dat", "rb")]
    movies = [dict(zip(["movie_id", "title", "genres", "year"], spec.parsers["movies"](decode_line(l))))
              for l in open(Path(raw) / "movies.dat", "rb")]
    ratings = ratings.drop_duplicates(["user_id", "movie_id"], keep="last")
    rng = np.random.default_rng(42)
    test = rng.random(len(ratings)) < 0.2
    train = ratings[~test]
    settings = load_config(ROOT / "conf/default.yaml").prepare.features.__dict__
    vocabs = build_vocabularies(users, movies, settings, train.user_id.unique(), train.movie_id.unique())
    enc = FeatureEncoder.from_settings(vocabs, settings)
    u = pd.DataFrame([enc.user(r["user_id"], r["gender"], r["age"], r["occupation"], r["zip"]) for r in users])
    u["raw"] = [r["user_id"] for r in users]
    m = pd.DataFrame([enc.movie(r["movie_id"], r["title"], r["genres"], r["year"]) for r in movies])
    m["raw"] = [r["movie_id"] for r in movies]
    spec_feats = enc.spec().to_json()["features"]
    out = tempfile.mkdtemp(prefix="pandas-prepare-")
    try:
        for name, part in (("train", train), ("test", ratings[test])):
            df = part.merge(u, left_on="user_id", right_on="raw", suffixes=("_raw", "")).merge(
                m, left_on="movie_id_raw" if "movie_id_raw" in part else "movie_id", right_on="raw", suffixes=("_raw", ""))
            cols = {}
            for f in spec_feats:
                col = df[f["name"]]
                cols[f["name"]] = np.stack(col.to_numpy()) if f["shape"] else col.to_numpy()
            with tf.io.TFRecordWriter(os.path.join(out, f"{name}.tfrecord")) as w:
                for s in range(0, len(df), examples_per_record):
                    w.write(serialize_block({k: v[s:s + examples_per_record] for k, v in cols.items()}, spec_feats))
        seconds = time.time() - started
        rss = proc.memory_info().rss / 2**20
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"| pandas, one process | {n:,} | {seconds:.0f} | {n / seconds:,.0f} | {rss:,.0f} (process) | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spark-config", default=None)
    parser.add_argument("--pandas", type=int, action="append", default=[])
    parser.add_argument("--pandas-raw", default="data/raw/synth-25m")
    args = parser.parse_args()
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    print("| pipeline | ratings | wall s | ratings/s | peak RSS MiB | Python workers MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in args.pandas:
        bench_pandas(args.pandas_raw, n)
    if args.spark_config:
        bench_spark(args.spark_config)


if __name__ == "__main__":
    main()
