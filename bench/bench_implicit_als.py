#!/usr/bin/env python
"""The report's Spark implicit-ALS baseline over several ``evaluate.seed`` values: mean and std.

    python bench/bench_implicit_als.py --config conf/ml-100k.yaml --seeds 1,2,3

For every seed S: the same recommender ``recsys evaluate`` runs (``Tuned`` Spark MLlib ALS with
``implicitPrefs=True``, its grid from ``evaluate.implicit_als``, chosen on validation NDCG@10,
refitted on train + validation) with ``evaluate.seed=S``, scored on the test split by
``evaluate_recommender``. Spark ALS starts from random factors, so the seed moves both the grid
point chosen and the test figure; ``bench_quality.py --fast`` leaves this baseline out, and this
gives it the same mean ± sample std over seeds as the model. The prepared data must exist.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated evaluate seeds, e.g. 1,2,3")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from recsys.config import load_config
    from recsys.evaluation import evaluate_recommender, load_data
    from recsys.topk_baselines import ImplicitAls, topk_baselines

    cfg = load_config(args.config, args.overrides)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_data(cfg.paths.prepared)
    values = []
    for seed in seeds:
        cfg.evaluate.seed = seed
        rec = next(r for r in topk_baselines(cfg.evaluate, include_slow=True) if r.label == ImplicitAls.label)
        t0 = time.time()
        row = evaluate_recommender(rec, data, cfg.evaluate)
        if "skipped" in row:
            sys.exit(f"{ImplicitAls.label}: skipped: {row['skipped']}")
        values.append(row["ranking"]["ndcg@10"])
        print(f"[bench] seed {seed}: chosen {row['tuning']['chosen']}, test NDCG@10 {values[-1]:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    spread = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    print(f"{args.config}: {ImplicitAls.label} over evaluate seeds {seeds}: NDCG@10 {np.mean(values):.4f}{spread} "
          f"(per seed {' / '.join(f'{v:.4f}' for v in values)})")


if __name__ == "__main__":
    main()
