#!/usr/bin/env python
"""Benchmark prepare on the ``tables`` format against the same data in ml-latest format.

    python bench/bench_tables.py --ratings 10000000

Generates ``--ratings`` synthetic ratings in ml-latest format (``recsys data synth``'s
generator), converts them to a ``tables`` input (tab-separated, other column names:
``UserID MovieID Rating Timestamp`` and ``Movieid Title Genres``), and runs
``spark-submit jobs/prepare.py`` on each, one after the other in the same run, with the same
prepare settings (conf/synth-25m.yaml's). Checks that both kept the same number of ratings and
wrote the same splits, and prints a Markdown table with the tables / ml-latest wall-time
ratio for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREPARE = """\
extends: {root}/conf/synth-25m.yaml
paths:
  raw: {raw}
  prepared: {prepared}
data:
  format: {fmt}
"""
TABLES = """\
  tables:
    ratings: {file: ratings.tsv, user_id: UserID, movie_id: MovieID, rating: Rating, timestamp: Timestamp}
    movies: {file: movies.tsv, movie_id: Movieid, title: Title, genres: Genres}
"""


def generate(work: Path, ratings: int, users: int, movies: int, seed: int) -> Path:
    """ml-latest files in work/ml-latest (reused when a previous run wrote the same size)."""
    from recsys.datasets.synth import generate as synth

    dest = work / "ml-latest"
    marker = dest / "done.json"
    want = {"ratings": ratings, "users": users, "movies": movies, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return dest
    started = time.time()
    synth(dest, ratings, users, movies, fmt="ml-latest", seed=seed, progress=False)
    marker.write_text(json.dumps(want))
    print(f"generated {ratings:,} ml-latest ratings in {time.time() - started:.0f}s", flush=True)
    return dest


def convert(src: Path, work: Path) -> Path:
    """The same ratings and movies as tab-separated tables with their own column names."""
    dest = work / "tables"
    dest.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(src / "ratings.csv", "rb") as fin, open(dest / "ratings.tsv", "wb") as fout:
        fin.readline()  # userId,movieId,rating,timestamp
        fout.write(b"UserID\tMovieID\tRating\tTimestamp\n")
        while chunk := fin.read(64 << 20):
            fout.write(chunk.replace(b",", b"\t"))  # numbers only: no quoting in ratings.csv
    with open(src / "movies.csv", encoding="utf-8", newline="") as fin:
        rows = list(csv.reader(fin))
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(["Movieid", "Title", "Genres"])
    writer.writerows(rows[1:])
    (dest / "movies.tsv").write_text(out.getvalue(), encoding="utf-8")
    print(f"converted to tables in {time.time() - started:.0f}s", flush=True)
    return dest


def run_prepare(config: Path) -> tuple[float, dict, list[str]]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    started = time.time()
    proc = subprocess.run([str(Path(sys.executable).parent / "spark-submit"), "jobs/prepare.py", "--config", str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.time() - started
    if proc.returncode:
        print(proc.stdout[-2000:], proc.stderr[-3000:])
        raise SystemExit(f"prepare failed for {config}")
    from recsys.config import load_config

    manifest = json.loads((Path(load_config(config).paths.prepared) / "manifest.json").read_text())
    stages = [line.strip() for line in (proc.stdout + "\n" + proc.stderr).splitlines() if "[prepare]" in line]
    return seconds, manifest, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratings", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=0, help="default: ratings / 156 (as conf/synth-25m.yaml)")
    parser.add_argument("--movies", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--work", default="data/bench-tables")
    args = parser.parse_args()
    work = (ROOT / args.work).resolve()
    users = args.users or max(1, args.ratings // 156)
    src = generate(work, args.ratings, users, args.movies, args.seed)
    tables = convert(src, work)
    results = {}
    for fmt, raw in (("ml-latest", src), ("tables", tables)):
        config = work / f"{fmt}.yaml"
        text = PREPARE.format(root=ROOT, raw=raw, prepared=work / f"prepared-{fmt}", fmt=fmt)
        config.write_text(text + (TABLES if fmt == "tables" else ""))
        seconds, manifest, stages = run_prepare(config)
        results[fmt] = (seconds, manifest)
        print(f"{fmt}: {seconds:.0f}s", *stages, sep="\n  ", flush=True)
    (a_s, a), (b_s, b) = results["ml-latest"], results["tables"]
    same = (a["accounting"]["ratings"]["rows_kept"] == b["accounting"]["ratings"]["rows_kept"]
            and {k: v["examples"] for k, v in a["splits"].items()} == {k: v["examples"] for k, v in b["splits"].items()})
    if not same:
        raise SystemExit("the two formats did not keep the same ratings and splits")
    n = a["accounting"]["ratings"]["rows_read"]
    print()
    print("| input | ratings | wall s | ratings/s |")
    print("|---|---:|---:|---:|")
    for fmt, (seconds, _) in results.items():
        print(f"| {fmt} | {n:,} | {seconds:.0f} | {n / seconds:,.0f} |")
    print(f"\ntables / ml-latest wall time: {b_s / a_s:.2f}x (target: at most 1.2x); "
          f"same ratings kept ({a['accounting']['ratings']['rows_kept']:,}) and splits in both")


if __name__ == "__main__":
    main()
