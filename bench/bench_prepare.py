#!/usr/bin/env python
"""Benchmark the Spark prepare job against a single-process pandas encode-and-write.

    python bench/bench_prepare.py --spark-config conf/synth-25m.yaml --pandas 1000000 --pandas 5000000 \
        --encoders 500000

Spark: runs ``spark-submit jobs/prepare.py`` on the config's raw data (generate it first
with ``recsys data synth --config conf/synth-25m.yaml``) and samples the peak RSS of the
driver (in local mode the driver JVM also runs the executors' JVM side; the Python workers
are reported separately). pandas: reads the first N ratings of the same files with the
same parsers, encodes with the same FeatureEncoder, splits by the same rule and writes the
same block-encoded TFRecords (with the job's encoder), in one process. Encoders: the
TFRecord serialization alternatives on the first N prepared training examples, one core each,
each read back with tf.data and compared with its input. Prints Markdown rows for
docs/benchmarks.md.
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
    from recsys.prepare.tfrecords import encode_records

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
                for record in encode_records(cols, spec_feats, examples_per_record):
                    w.write(record)
        seconds = time.time() - started
        rss = proc.memory_info().rss / 2**20
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"| pandas, one process | {n:,} | {seconds:.0f} | {n / seconds:,.0f} | {rss:,.0f} (process) | - |")


def bench_encoders(config: str, n: int) -> None:
    """Serialization alternatives on the first ``n`` prepared training examples (one core)."""
    import json

    import numpy as np
    import tensorflow as tf

    from recsys.config import load_config
    from recsys.prepare.tfrecords import encode_records, parse_blocks, read_shards, serialize_block

    prepared = Path(load_config(config).paths.prepared)
    manifest = json.loads((prepared / "manifest.json").read_text())
    feats = manifest["features"]["features"]
    paths, have = [], 0
    for shard in manifest["splits"]["train"]["shards"]:
        paths.append(str(prepared / shard["path"]))
        have += shard["examples"]
        if have >= n:
            break
    cols = {k: v[:n] for k, v in read_shards(paths, feats).items()}
    n = len(cols["rating"])

    def protobuf_classes(per_record):
        return [serialize_block({k: v[s:s + per_record] for k, v in cols.items()}, feats) for s in range(0, n, per_record)]

    print("| encoder | examples per record | examples/s (one core) | bytes/example | read back by tf.data |")
    print("|---|---:|---:|---:|---|")
    for name, per_record, encode in (
            ("tf.train.Example classes", 1, lambda: protobuf_classes(1)),
            ("tf.train.Example classes", 256, lambda: protobuf_classes(256)),
            ("vectorized wire format (the job's)", 1, lambda: encode_records(cols, feats, 1)),
            ("vectorized wire format (the job's)", 64, lambda: encode_records(cols, feats, 64)),
            ("vectorized wire format (the job's)", 256, lambda: encode_records(cols, feats, 256)),
            ("vectorized wire format (the job's)", 1024, lambda: encode_records(cols, feats, 1024))):
        started = time.perf_counter()
        records = encode()
        seconds = time.perf_counter() - started
        back = {k: [] for k in cols}
        parse = tf.autograph.experimental.do_not_convert(lambda r: parse_blocks(r, feats))
        for batch in tf.data.Dataset.from_tensor_slices(records).batch(512).map(parse):
            for k, v in batch.items():
                back[k].append(v.numpy())
        same = all(np.array_equal(np.concatenate(back[k]), cols[k]) for k in cols)
        print(f"| {name} | {per_record} | {n / seconds:,.0f} | {sum(map(len, records)) / n:.1f} | "
              f"{'identical' if same else 'DIFFERENT'} |", flush=True)
        if not same:
            raise SystemExit(f"{name}, {per_record} per record: tf.data read back different values")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spark-config", default=None)
    parser.add_argument("--pandas", type=int, action="append", default=[])
    parser.add_argument("--pandas-raw", default="data/raw/synth-25m")
    parser.add_argument("--encoders", type=int, default=0,
                        help="also compare TFRecord encoders on this many prepared training examples")
    args = parser.parse_args()
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    print("| pipeline | ratings | wall s | ratings/s | peak RSS MiB | Python workers MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in args.pandas:
        bench_pandas(args.pandas_raw, n)
    if args.spark_config:
        bench_spark(args.spark_config)
    if args.encoders:
        bench_encoders(args.spark_config or "conf/synth-25m.yaml", args.encoders)


if __name__ == "__main__":
    main()
