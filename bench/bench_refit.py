#!/usr/bin/env python
"""What the refit on train + validation is worth to EASE, the report's closed-form top-k baseline.

    python bench/bench_refit.py --config conf/ml-100k.yaml [--lambdas 200,500]

The report tunes each top-k baseline on the validation split and refits the chosen point on
train + validation; the model trains on the training split alone (validation only stops it).
This prints, per EASE lambda, test NDCG@10 of the fit on train + validation (the report's) and
of the fit on train alone, both ranked by ``ranking_metrics`` (the report's metric code) with the
same exclusions (every train + validation movie of the user). The fit on train alone also scores
each user from the training movies only (EASE's score is the user's row of X times B), so the
difference is both the larger item-item fit and the longer user profiles. Needs the prepared data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from _split import load_split
    from recsys.evaluation import Data, ranking_metrics
    from recsys.topk_baselines import Ease

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--lambdas", default="200,500", help="comma-separated EASE regularisations")
    args = ap.parse_args(argv)
    try:
        lambdas = [float(v) for v in args.lambdas.split(",")]
    except ValueError:
        ap.error(f"--lambdas: {args.lambdas!r} is not a comma-separated list of numbers")
    cfg, data, view = load_split(args.config, "train and train + validation are the same")
    reason = Ease(lambdas[0], cfg.evaluate.ease.max_items).unavailable(data)
    if reason:
        sys.exit(f"error: EASE cannot run on {cfg.paths.prepared}: {reason}")
    train_only = Data(data.users, data.movies, view.train, data.test, {}, data.rating_min, data.rating_max)
    print(f"{cfg.paths.prepared}: {len(view.train):,} training and {len(data.valid):,} validation ratings; "
          f"test NDCG@10 of EASE")
    print("| lambda | train + validation (the report) | train alone | difference |\n|---:|---:|---:|---:|")
    for lam in lambdas:
        t0 = time.time()
        full, part = (ranking_metrics(Ease(lam, cfg.evaluate.ease.max_items).fit(d), data, ks=(10,),
                                      block=cfg.evaluate.block_users)[0]["ndcg@10"] for d in (data, train_only))
        print(f"| {lam:g} | {full:.4f} | {part:.4f} | {full - part:+.4f} |  ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
