#!/usr/bin/env python
"""Whether implicit-ALS steps on a trained model's exported vectors lift its top-k quality.

    python bench/bench_vector_refinement.py --config conf/ml-100k.yaml --vectors runs/ml-100k/vectors

Three post-training refinements of a factorised model's rank vectors (``jobs/export.py`` output),
each against the served vectors as they are, and a calibration:

- **fold-in**: the user's served rank vector plus beta times the implicit-ALS user step over the
  movies' rank vectors (Hu et al., ICDM 2008: weight 1 on each movie of the user's history, w0 on
  every catalog movie, ridge lambda), rescaled to the served vector's norm: recsys/foldin.py, the
  export option ``export.foldin_weight`` (measure it on vectors exported without it);
- **ALS over the tower**: alternating implicit-ALS sweeps over users and movies, each row's ridge
  pulling toward its (rescaled) tower vector instead of toward zero, as collaborative topic
  regression (Wang and Blei, KDD 2011) pulls toward a content vector; rows without training
  ratings keep the tower vector;
- **ALS alone** (calibration): the same sweeps from a small random start with the ridge toward
  zero: plain implicit ALS in the same code, so the tower's worth as a prior can be read off.

Every grid point is fitted on the training split (validation movies excluded from each history)
and scored on validation NDCG@10; the best point is refitted with train + validation histories and
scored on test with the report's metric code (``ranking_metrics``, the same exclusions). The grids
are small and fixed (see ``GRIDS``); each point costs a few seconds on ML-100K. Needs the prepared
data and exported vectors of the same prepared data.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (name, grid): every combination is one validation fit
GRIDS = {
    "fold-in": {"w0": [1.0, 3.0, 10.0], "lam": [0.1, 1.0], "beta": [0.25, 0.5, 1.0]},
    "ALS over the tower": {"w0": [0.3, 0.5, 1.0], "lam": [6.0, 10.0, 15.0], "sweeps": [4, 8]},
    "ALS alone": {"dim": [32, 64], "w0": [0.3, 1.0], "lam": [3.0, 10.0], "sweeps": [8]},
}


def als(V, X, prior_u, prior_v, w0, lam, sweeps):
    """Alternating implicit-ALS sweeps from movie factors ``V`` (users, then movies), each row's
    ridge pulling toward its row of ``prior_u`` / ``prior_v``."""
    from recsys.foldin import als_rows

    Xt = X.T.tocsr()
    for _ in range(sweeps):
        U = als_rows(V, X, prior_u, w0, lam)
        V = als_rows(U, Xt, prior_v, w0, lam)
    return U, V


def main(argv=None) -> int:
    from _split import load_split
    from recsys.errors import RecsysError
    from recsys.evaluation import Recommender, ranking_metrics
    from recsys.export import load_vectors
    from recsys.foldin import fold_in

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--vectors", required=True, help="jobs/export.py output of a factorised model")
    args = ap.parse_args(argv)
    cfg, data, view = load_split(args.config, "refinements are chosen on validation")
    try:
        vec = load_vectors(Path(args.vectors) / "vectors" if (Path(args.vectors) / "vectors").is_dir() else args.vectors)
    except RecsysError as err:
        sys.exit(f"error: {err}")
    if vec["info"].get("foldin"):
        sys.exit(f"error: {args.vectors} was exported with export.foldin_weight > 0: its user rank vectors are "
                 f"already folded in; export the model with export.foldin_weight=0 to measure from the tower")
    if not vec["info"].get("factorised", True):
        sys.exit(f"error: {args.vectors} holds a model scored by pairs: it has no rank vectors to refine")
    rows = {}
    for table, frame, key in (("users", data.users, "user_id"), ("movies", data.movies, "movie_id")):
        index = {v: i for i, v in enumerate(vec[table]["ids"].tolist())}
        missing = [v for v in frame[key].tolist() if v not in index]
        if missing:
            sys.exit(f"error: {args.vectors} lacks {len(missing)} {table} of {cfg.paths.prepared} (e.g. {key} "
                     f"{missing[0]}): export the model trained on this prepared data")
        rows[table] = vec[table]["rank"][[index[v] for v in frame[key].tolist()]].astype(np.float64)
    U0, V0 = rows["users"], rows["movies"]

    class Dot(Recommender):
        def __init__(self, U, V):
            self.U, self.V = U, V

        def scores(self, users):
            return self.U[users] @ self.V.T

    def ndcg(UV, d) -> float:
        return ranking_metrics(Dot(*UV), d, ks=(10,), block=cfg.evaluate.block_users)[0]["ndcg@10"]

    # the tower's scores are logits at temperature T: rescale so a mean training pair scores about 1
    pairs = (U0[view.train.u.to_numpy()] * V0[view.train.m.to_numpy()]).sum(1)
    scale = 1.0 / np.sqrt(max(abs(float(pairs.mean())), 1e-6))
    rng = np.random.default_rng(0)

    def fit(method, p, X):
        if method == "fold-in":
            return fold_in(U0, V0, X, p["beta"], p["w0"], p["lam"]), V0
        if method == "ALS over the tower":
            return als(V0 * scale, X, U0 * scale, V0 * scale, p["w0"], p["lam"], p["sweeps"])
        # plain implicit ALS: a small random start (users' drawn first, then overwritten by the first
        # sweep), the ridge toward zero
        start_u, start_v = rng.normal(0, 0.1, (len(U0), p["dim"])), rng.normal(0, 0.1, (len(V0), p["dim"]))
        return als(start_v, X, np.zeros_like(start_u), np.zeros_like(start_v), p["w0"], p["lam"], p["sweeps"])

    print(f"{cfg.paths.prepared}, vectors {args.vectors} ({U0.shape[1]} rank dimensions): NDCG@10")
    print("| method | chosen on validation | validation | test |\n|---|---|---:|---:|")
    print(f"| served vectors | - | {ndcg((U0, V0), view):.4f} | {ndcg((U0, V0), data):.4f} |", flush=True)
    for method, grid in GRIDS.items():
        t0, best = time.time(), None
        for values in itertools.product(*grid.values()):
            p = dict(zip(grid, values))
            score = ndcg(fit(method, p, view.seen.tocsr()), view)
            if best is None or score > best[0]:
                best = (score, p)
        test = ndcg(fit(method, best[1], data.seen.tocsr()), data)
        chosen = ", ".join(f"{k} {v:g}" for k, v in best[1].items())
        print(f"| {method} | {chosen} | {best[0]:.4f} | {test:.4f} |  ({time.time() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
