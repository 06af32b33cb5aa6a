#!/usr/bin/env python
"""Headline quality over training seeds: the model and the baselines as mean and std.

    python bench/bench_quality.py --config conf/ml-100k.yaml --seeds 1,2,3 --ranks 2 [--fast]
    python bench/bench_quality.py --config conf/ml-100k.yaml --repro-epochs 3   # reproducibility only

1. Seeds: for every seed S, ``horovodrun -np R python train.py --set train.seed=S`` (a plain
   process for R=1) into a scratch model directory beside ``paths.model``, then
   ``recsys.evaluation.evaluate`` with ``evaluate.seed=S`` (the seeded baselines: Surprise SVD,
   SVD++, Spark ALS) on the same prepared split. The prepared split itself is fixed (its own
   ``prepare.split.seed``). Prints, per recommender, the mean and sample standard deviation of
   RMSE, NDCG@10, recall@10 and the liked NDCG@10 over the seeds, and writes every per-seed
   figure to ``<paths.report>-seeds/seeds.json``.
2. Reproducibility (``--repro-epochs E``): two one-rank runs with the same seed and
   ``train.deterministic=true`` for E epochs; passes when the exported user and movie vectors
   and the validation history are identical.

The prepared data (``spark-submit jobs/prepare.py --config ...``) must exist.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADLINE = [("RMSE", "test", "rmse"), ("NDCG@10", "ranking", "ndcg@10"), ("R@10", "ranking", "recall@10"),
            ("NDCG@10 (liked)", "ranking", "ndcg@10_rel4")]


def train(config: str, model_dir: Path, seed: int, ranks: int, extra: list[str]) -> float:
    """Train one model into ``model_dir``; returns wall seconds."""
    sets = []
    for item in extra:
        sets += ["--set", item]
    sets += ["--set", f"train.seed={seed}", "--set", f"paths.model={model_dir}"]  # last: they win over --set
    cmd = [sys.executable, "train.py", "--config", config, *sets]
    if ranks > 1:
        cmd = [str(Path(sys.executable).parent / "horovodrun"), "-np", str(ranks), *cmd]  # the venv's, activated or not
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    t0 = time.time()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: training with seed {seed} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.time() - t0


def seeds_run(cfg, config: str, seeds: list[int], ranks: int, fast: bool, overrides: list[str] = ()) -> dict:
    from recsys.evaluation import evaluate, served_directory

    scratch = Path(cfg.paths.report + "-seeds")
    scratch.mkdir(parents=True, exist_ok=True)
    per_seed: dict[int, dict] = {}
    for seed in seeds:
        model_dir = Path(cfg.paths.model + f"-seed{seed}")
        secs = train(config, model_dir, seed, ranks, list(overrides))
        print(f"[bench] seed {seed}: trained on {ranks} rank(s) in {secs:.0f}s", file=sys.stderr, flush=True)
        ev = cfg.evaluate
        ev.seed = seed
        served = served_directory(model_dir, cfg, scratch / f"served-seed{seed}")  # exported and indexed as served
        # the served model is labelled by its kind
        metrics = evaluate(cfg.paths.prepared, {None: served}, scratch / f"report-seed{seed}",
                           include_slow=not fast, settings=ev)
        per_seed[seed] = {label: {name: r.get(section, {}).get(key) for name, section, key in HEADLINE}
                          | {"kind": r.get("kind")}
                          for label, r in metrics["results"].items() if "skipped" not in r}
        shutil.rmtree(model_dir, ignore_errors=True)
    summary = {}
    for label in per_seed[seeds[0]]:
        row = {"kind": per_seed[seeds[0]][label]["kind"]}
        for name, _, _ in HEADLINE:
            vals = [per_seed[s][label][name] for s in seeds if per_seed[s].get(label, {}).get(name) is not None]
            if vals:
                row[name] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                             "values": vals}
        summary[label] = row
    result = {"config": config, "seeds": seeds, "ranks": ranks, "fast": fast, "summary": summary, "per_seed": per_seed}
    (scratch / "seeds.json").write_text(json.dumps(result, indent=2))
    return result


def repro_run(cfg, config: str, epochs: int, seed: int) -> bool:
    from recsys.models import load_model

    runs = []
    for attempt in (1, 2):
        model_dir = Path(cfg.paths.model + f"-repro{attempt}")
        secs = train(config, model_dir, seed, 1, ["train.deterministic=true", f"train.epochs={epochs}"])
        artifact = load_model(model_dir)  # the saved best weights, as served
        runs.append(([v.numpy().copy() for v in artifact.model.variables],
                     [h.get("valid_selection") for h in artifact.info.get("history", [])]))
        print(f"[bench] reproducibility run {attempt}: {epochs} epochs on 1 rank in {secs:.0f}s, "
              f"validation {runs[-1][1]}", file=sys.stderr, flush=True)
        shutil.rmtree(model_dir, ignore_errors=True)
    (a, b) = runs
    same = all(np.array_equal(x, y) for x, y in zip(a[0], b[0])) and a[1] == b[1]
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a[0], b[0]))
    print(f"reproducible on one rank (seed {seed}, {epochs} epochs, train.deterministic=true): "
          f"{'yes, identical weights and history' if same else f'NO, max weight difference {diff:.3g}'}")
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", default="", help="comma-separated training seeds (at least 3 for a spread), e.g. 1,2,3")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for training and evaluation (repeatable), e.g. model.validation_metric=mix")
    ap.add_argument("--fast", action="store_true", help="skip the slow baselines (Surprise SVD++, Spark ALS)")
    ap.add_argument("--repro-epochs", type=int, default=0, help="> 0: check that a fixed-seed one-rank run repeats")
    args = ap.parse_args()

    from recsys.config import load_config

    cfg = load_config(args.config, args.overrides)
    if not (Path(cfg.paths.prepared) / "manifest.json").is_file():
        sys.exit(f"error: no prepared data in {cfg.paths.prepared}: run spark-submit jobs/prepare.py --config {args.config}")
    ok = True
    if args.repro_epochs:
        ok = repro_run(cfg, args.config, args.repro_epochs, cfg.train.seed)
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            sys.exit(f"error: --seeds {args.seeds!r}: expected comma-separated integers, e.g. 1,2,3")
        res = seeds_run(cfg, args.config, seeds, args.ranks, args.fast, args.overrides)
        print(f"\n{args.config} {' '.join(args.overrides)}: {len(seeds)} training seeds {seeds}, {args.ranks} rank(s); mean ± std (sample)\n")
        print("| recommender | kind | " + " | ".join(n for n, _, _ in HEADLINE) + " |")
        print("|---|---|" + "---:|" * len(HEADLINE))
        for label, row in res["summary"].items():
            cells = [f"{row[n]['mean']:.4f} ± {row[n]['std']:.4f}" if n in row else "-" for n, _, _ in HEADLINE]
            print(f"| {label} | {row['kind']} | " + " | ".join(cells) + " |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
