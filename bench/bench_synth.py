#!/usr/bin/env python
"""Benchmark `recsys data synth`: wall time and peak memory (RSS) for N ratings.

    python bench/bench_synth.py --ratings 25000000 [--ratings 100000000]

Each size runs in its own process; peak RSS is sampled every 0.2 s (psutil, process and
children). Prints one Markdown table row per size for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import psutil


def run(ratings: int, users: int, movies: int, dest: str) -> tuple[float, float, float]:
    cmd = [sys.executable, "-m", "recsys.cli", "data", "synth", "--ratings", str(ratings), "--users", str(users),
           "--movies", str(movies), "--format", "ml-1m", "--seed", "25", "--dest", dest]
    started = time.time()
    proc = psutil.Popen(cmd, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.time() - started
    if proc.returncode:
        raise SystemExit(f"synth failed with status {proc.returncode}: {' '.join(cmd)}")
    size = sum(os.path.getsize(os.path.join(dest, f)) for f in os.listdir(dest))
    return seconds, peak / 2**20, size / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratings", type=int, action="append", required=True)
    parser.add_argument("--keep", default=None, help="keep the files of the last size in this directory")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    print("| ratings | users | movies | wall s | ratings/s | peak RSS MiB | files MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.ratings:
        users, movies = max(1000, n // 156), max(2000, min(n // 400, 60000))
        dest = args.keep if (args.keep and n == args.ratings[-1]) else tempfile.mkdtemp(prefix="synth-bench-")
        try:
            seconds, peak, size = run(n, users, movies, dest)
        finally:
            if dest != args.keep:
                shutil.rmtree(dest, ignore_errors=True)
        print(f"| {n:,} | {users:,} | {movies:,} | {seconds:.1f} | {n / seconds:,.0f} | {peak:,.0f} | {size:,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
