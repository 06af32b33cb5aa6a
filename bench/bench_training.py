#!/usr/bin/env python
"""Benchmark Horovod training throughput against the input pipeline alone, side by side.

    python bench/bench_training.py --config conf/ml-100k.yaml --ranks 1 --ranks 2 --epochs 4

1. Input pipeline alone: the training ``tf.data`` pipeline (interleaved shard reads, record
   shuffle, batch, parse after batching, prefetch) of one rank, with the model taken away:
   examples/s over ``--pipeline-steps`` batches, threads as one rank of N would get.
2. Training: ``horovodrun -np N python train.py`` for each N (a plain process for N=1), for
   ``--epochs`` epochs, in a scratch model directory. Examples/s are rank 0's per-epoch
   figures (every rank runs the same steps) averaged over the epochs after the first (the first
   includes tf.function tracing), in total and per rank.
3. Time to the RMSE target: wall time until the validation RMSE first reaches ``--target``
   in the N-rank run (training seconds summed over epochs).

Prints Markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pipeline_rate(cfg, steps: int, threads: int) -> float:
    """Examples/s of one rank's input pipeline with nothing consuming it."""
    from recsys.prepare.job import load_manifest
    from recsys.training import make_dataset, shard_files_for_rank

    prepared = Path(cfg.paths.prepared)
    manifest = load_manifest(prepared)
    epr = manifest["examples_per_record"]
    files, by_record = shard_files_for_rank(manifest["splits"]["train"]["shards"], prepared, 0, 1)
    ds = make_dataset(files, manifest["features"]["features"], max(1, cfg.train.batch_size // epr),
                      shuffle_buffer=cfg.train.shuffle_buffer_records, seed=0, repeat=True, threads=threads)
    it = iter(ds)
    for _ in range(5):  # warm-up: file open, first shuffle fill
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        _, y = next(it)
        n += int(y.shape[0])
    return n / (time.perf_counter() - t0)


def training_run(config: str, ranks: int, epochs: int, overrides: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        sets = [f"paths.model={tmp}/model", f"train.epochs={epochs}", "train.early_stopping_patience=1000", *overrides]
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", config, *[a for s in sets for a in ("--set", s)]]
        if ranks > 1:
            cmd = [str(Path(sys.executable).parent / "horovodrun"), "-np", str(ranks), *cmd]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"training with {ranks} rank(s) failed:\n{proc.stderr[-3000:]}")
        return json.loads((Path(tmp) / "model" / "history.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/ml-100k.yaml")
    parser.add_argument("--ranks", type=int, action="append", help="Horovod sizes to run (repeatable; default 1 and 2)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pipeline-steps", type=int, default=300)
    parser.add_argument("--target", type=float, default=0.91, help="validation RMSE target for time-to-target")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    from recsys.config import load_config

    cfg = load_config(args.config, args.overrides)
    cores = os.cpu_count() or 2
    print(f"machine: {cores} cores; config {args.config}; batch {cfg.train.batch_size} examples per rank", flush=True)
    print("| what | ranks | examples/s (total) | examples/s per rank | vs. training |")
    print("|---|---|---|---|---|")
    results = {}
    for ranks in args.ranks or [1, 2]:
        history = training_run(args.config, ranks, args.epochs, args.overrides)
        steady = history[1:] or history
        total = sum(h["examples_per_s"] for h in steady) / len(steady)
        results[ranks] = (total, history)
        print(f"| training (Horovod, Gloo) | {ranks} | {total:,.0f} | {total / ranks:,.0f} | 1.0x |", flush=True)
    for ranks, (total, history) in results.items():
        threads = max(1, cores // ranks)
        rate = pipeline_rate(cfg, args.pipeline_steps, threads)
        print(f"| input pipeline alone, one rank's share ({threads} threads) | {ranks} | {rate:,.0f} | {rate:,.0f} | "
              f"{rate / (total / ranks):.1f}x one rank's training |", flush=True)
    for ranks, (_, history) in results.items():
        spent, reached = 0.0, None
        for h in history:
            spent += h["seconds"]
            if h["valid_rmse"] <= args.target:
                reached = (h["epoch"], spent)
                break
        best = min(h["valid_rmse"] for h in history)
        print(f"time to validation RMSE <= {args.target} with {ranks} rank(s): "
              + (f"epoch {reached[0]}, {reached[1]:.1f} s" if reached else f"not reached in {len(history)} epochs "
                 f"(best {best:.4f})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
