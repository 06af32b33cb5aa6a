#!/usr/bin/env python
"""Training throughput against the batch size, grouped retrieval loss beside the one-group loss.

    python bench/bench_retrieval_groups.py --config conf/ml-100k.yaml --batch 1024 --batch 4096 --batch 16384
    python bench/bench_retrieval_groups.py --config conf/ml-100k.yaml --quality "" \
        --quality "model.retrieval_group_size=512" --quality "model.retrieval_group_size=1073741824;model.unique_towers=false"

1. Throughput (``--batch``, repeatable): for every batch size, one plain ``python train.py``
   process (one rank) per variant, run one after the other so that they share the machine's
   load: the default model (``model.retrieval_group_size`` from the config: the in-batch softmax
   over groups of G examples; towers once per unique id), the same with one group covering the
   batch and towers per example (G above the batch, ``model.unique_towers=false``: the [B, B]
   in-batch softmax, as the model was before either), the default with one group only, with
   towers per example only, and with the losses read on the host after every step
   (``train.finite_check_steps=1``). Examples/s are rank 0's per-epoch figures averaged over the
   epochs after the first (the first includes tracing); ``--epochs`` epochs per run.
2. Quality (``--quality``, repeatable: ``;``-separated ``KEY=VALUE`` settings, "" for the
   defaults): one run to early stopping each, at the config's batch size; prints the epochs, the
   best validation RMSE and the validation NDCG@10 of the kept model over every user with
   validation ratings (training movies excluded).

Prints Markdown rows for docs/benchmarks.md. The prepared data must exist.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ONE_GROUP = 1 << 30  # a group size above any batch: the in-batch softmax over the whole batch


def run_train(config: str, sets: list[str], model_dir: Path) -> None:
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", config, *[a for s in sets for a in ("--set", s)],
           "--set", f"paths.model={model_dir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"training ({' '.join(sets)}) failed:\n{proc.stderr[-3000:]}")


def steady_rate(config: str, sets: list[str], epochs: int) -> float:
    """Mean examples/s of the epochs after the first."""
    import json

    with tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
        run_train(config, [f"train.epochs={epochs}", "train.early_stopping_patience=1000", *sets], Path(tmp) / "m")
        history = json.loads((Path(tmp) / "m" / "history.json").read_text())
    steady = history[1:] or history
    return sum(h["examples_per_s"] for h in steady) / len(steady)


def validation_ndcg(cfg, model_dir: Path) -> float:
    """NDCG@10 of the saved model over every user with validation ratings (training movies excluded)."""
    from recsys.models import load_model
    from recsys.training import ValidationCatalog

    model = load_model(model_dir).model
    total, n = ValidationCatalog(Path(cfg.paths.prepared), 1 << 30, 0).ndcg_sum(model, 0, 1)
    return total / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/ml-100k.yaml")
    parser.add_argument("--batch", type=int, action="append", default=[], help="batch sizes (repeatable)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per throughput run")
    parser.add_argument("--quality", action="append", default=[], metavar="KEY=VALUE;...",
                        help="settings trained to early stopping for quality (repeatable; \"\" for the defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    from recsys.config import load_config

    cfg = load_config(args.config, args.overrides)
    group = cfg.model.retrieval_group_size
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} at the start; config {args.config}; "
          f"one rank; default model.retrieval_group_size {group}", flush=True)
    if args.batch:
        variants = [(f"default (groups of {group}, unique towers)", []),
                    ("one B x B group, towers per example", [f"model.retrieval_group_size={ONE_GROUP}",
                                                             "model.unique_towers=false"]),
                    ("one B x B group", [f"model.retrieval_group_size={ONE_GROUP}"]),
                    ("towers per example", ["model.unique_towers=false"]),
                    ("losses read every step", ["train.finite_check_steps=1"])]
        print("| batch | " + " | ".join(label for label, _ in variants) + " | default vs the second |")
        print("|---" * (len(variants) + 2) + "|")
        for batch in args.batch:
            rates = [steady_rate(args.config, [*args.overrides, f"train.batch_size={batch}", *sets], args.epochs)
                     for _, sets in variants]
            print(f"| {batch:,} | " + " | ".join(f"{r:,.0f}" for r in rates) + f" | {rates[0] / rates[1]:.2f}x |",
                  flush=True)
    if args.quality:
        import json

        print("| settings | batch | epochs (best) | best valid RMSE | valid NDCG@10 | seconds |")
        print("|---|---|---|---|---|---|")
        for settings in args.quality:
            sets = [s for s in settings.split(";") if s]
            with tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
                t0 = time.time()
                run_train(args.config, [*args.overrides, *sets], Path(tmp) / "m")
                seconds = time.time() - t0
                info = json.loads((Path(tmp) / "m" / "model.json").read_text())
                best = min(info["history"], key=lambda h: h["valid_selection"])
                ndcg = validation_ndcg(cfg, Path(tmp) / "m")
            print(f"| {'; '.join(f'`{s}`' for s in sets) or 'defaults'} | {cfg.train.batch_size:,} | {info['epochs_run']} ({best['epoch']}) | "
                  f"{best['valid_rmse']:.4f} | {ndcg:.4f} | {seconds:.0f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
