#!/usr/bin/env python
"""Benchmark `recsys evaluate` at scale: wall time and peak memory of each recommender's evaluation.

    python bench/bench_evaluate.py --users 160000 --movies 60000 --ratings 25000000 \
        --recommenders model,model-index,bias,popularity

Builds a synthetic :class:`recsys.evaluation.Data` in memory (power-law user activity and movie
popularity, ratings from a low-rank model plus noise, a random 10% of the pairs as the test
split), then runs :func:`recsys.evaluation.evaluate_recommender` (fit, streamed rating metrics,
blocked top-k metrics for every user with test ratings over the full catalog, beyond-accuracy
metrics) for each recommender, each in its own forked process so that its peak RSS (which
includes the data it shares with the parent) is its own:

* ``model``: a factor model (the generator's factors plus noise, float32) ranked from its dense
  block scores (``Recommender.top_k``);
* ``model-index``: the same factors ranked the way ``recsys evaluate`` ranks a served model,
  through an exact FAISS inner-product index with the seen movies excluded
  (``recsys.indexing.VectorIndex.search_excluding``, as ``ServedModel.top_k``);
* ``bias``, ``popularity``, ``global-mean``: the cheap baselines of recsys.evaluation.

Prints a Markdown table for docs/benchmarks.md with the dense users x movies float64 matrix
each evaluation would otherwise hold, for scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.evaluation import Bias, Data, GlobalMean, Popularity, Recommender, block_rows, evaluate_recommender  # noqa: E402


def synthetic_data(n_users: int, n_movies: int, n_ratings: int, dim: int, test_fraction: float, seed: int):
    """(Data, user factors, movie factors): about ``n_ratings`` distinct pairs (duplicates drawn
    are dropped), ratings on a 0.5-5 half-star scale from ``3.5 + <u, m> + noise``."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_users)  # power-law-ish ratings per user
    popularity = 1.0 / (np.arange(n_movies) + 10.0) ** 0.9
    popularity = rng.permutation(popularity / popularity.sum())
    u = rng.choice(n_users, size=n_ratings, p=activity / activity.sum()).astype(np.int64)
    m = rng.choice(n_movies, size=n_ratings, p=popularity).astype(np.int64)
    key = np.unique(u * n_movies + m)
    key = key[rng.permutation(len(key))]
    u, m = key // n_movies, key % n_movies
    U = rng.normal(0, 0.35, (n_users, dim)).astype(np.float32)
    V = rng.normal(0, 0.35, (n_movies, dim)).astype(np.float32)
    r = np.empty(len(u))
    for s in range(0, len(u), 1 << 22):
        dot = np.einsum("ij,ij->i", U[u[s:s + (1 << 22)]], V[m[s:s + (1 << 22)]])
        r[s:s + (1 << 22)] = 3.5 + dot + rng.normal(0, 0.8, len(dot))
    r = np.clip(np.round(r * 2) / 2, 0.5, 5.0)
    n_test = int(len(u) * test_fraction)
    frame = lambda sl: pd.DataFrame({"u": u[sl], "m": m[sl], "rating": r[sl]})  # noqa: E731
    genres = np.array(["Action", "Comedy", "Drama", "Action|Comedy", "Drama|Romance", "Sci-Fi|Action", ""])
    movies = pd.DataFrame({"movie_id": np.arange(n_movies) + 1, "genres": genres[np.arange(n_movies) % len(genres)],
                           "year": 1950 + np.arange(n_movies) % 70})
    data = Data(pd.DataFrame({"user_id": np.arange(n_users) + 1}), movies, frame(slice(n_test, None)),
                frame(slice(0, n_test)), {}, 0.5, 5.0)
    noise = lambda a: (a + rng.normal(0, 0.2, a.shape)).astype(np.float32)  # noqa: E731
    # ranking vectors carry a log-popularity column, as the served [m, m_r, prior] / [u, u_r, 1] do
    log_pop = np.log(np.bincount(data.train.m, minlength=n_movies) + 1.0).astype(np.float32)
    return data, np.hstack([noise(U), np.ones((n_users, 1), np.float32)]), np.hstack([noise(V), log_pop[:, None]])


class FactorModel(Recommender):
    """``3.5 + <u, m>`` from fixed float32 factors (the last column, a popularity prior, is for
    ranking only); ranked from dense block scores."""

    label, kind = "factor model (dense block scores)", "model"

    def __init__(self, U: np.ndarray, V: np.ndarray):
        self.U, self.V = U, V

    def predict(self, u, m):
        return 3.5 + np.einsum("ij,ij->i", self.U[u, :-1], self.V[m, :-1]).astype(np.float64)

    def scores(self, users):
        return self.U[users] @ self.V.T


class IndexedFactorModel(FactorModel):
    """The same factors ranked through an exact FAISS index with exclusions, as ServedModel ranks."""

    label = "factor model (FAISS flat index, as served)"

    def fit(self, data):
        import faiss

        from recsys.indexing import VectorIndex

        flat = faiss.IndexFlatIP(self.V.shape[1])
        flat.add(np.ascontiguousarray(self.V))
        self.index = VectorIndex(flat, "flat", {}, 1.0)
        return self

    def top_k(self, users, k, seen):
        seen = seen.tocsr()
        exclude = [seen.indices[seen.indptr[i]:seen.indptr[i + 1]] for i in range(len(users))]
        return np.stack(self.index.search_excluding(self.U[users], k, exclude)[1])


def make(name: str, U, V) -> Recommender:
    return {"model": lambda: FactorModel(U, V), "model-index": lambda: IndexedFactorModel(U, V),
            "bias": lambda: Bias(10.0, 10), "popularity": Popularity, "global-mean": GlobalMean}[name]()


def run_forked(name: str, data: Data, U, V, ev) -> dict:
    """Evaluate one recommender in a forked child; its row plus wall seconds and peak RSS (MiB)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            t0 = time.time()
            row = evaluate_recommender(make(name, U, V), data, ev)
            row.pop("top10", None)
            row["wall_s"] = time.time() - t0
            row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except BaseException as err:  # report, never fall back into the parent's loop
            row = {"error": repr(err)}
        with os.fdopen(write, "w") as f:
            json.dump(row, f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    row = json.loads(text)
    if "error" in row:
        raise SystemExit(f"error: {name}: {row['error']}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=160_000)
    ap.add_argument("--movies", type=int, default=60_000)
    ap.add_argument("--ratings", type=int, default=25_000_000, help="pairs drawn (duplicates dropped)")
    ap.add_argument("--dim", type=int, default=32, help="factor width of the model")
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--recommenders", default="model,model-index,bias,popularity",
                    help="comma-separated; NAME:N ranks a seeded sample of N users for that one "
                         "(evaluate.sample_users), e.g. model,bias:20000")
    ap.add_argument("--block-memory-gb", type=float, default=None, help="evaluate.block_memory_gb (default: config's)")
    ap.add_argument("--sample-users", type=int, default=0, help="evaluate.sample_users")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from recsys.config import EvaluateConfig

    ev = EvaluateConfig(sample_users=args.sample_users)
    if args.block_memory_gb is not None:
        ev.block_memory_gb = args.block_memory_gb
    t0 = time.time()
    data, U, V = synthetic_data(args.users, args.movies, args.ratings, args.dim, args.test_fraction, args.seed)
    _ = data.seen  # built once, shared by every child
    build_s = time.time() - t0
    base_mib = psutil.Process().memory_info().rss / 2 ** 20
    n_test_users = data.test.u.nunique()
    rows_per_block = block_rows(data.n_movies, ev.block_users, ev.block_memory_gb)
    dense_gib = data.n_users * data.n_movies * 8 / 2 ** 30
    print(f"# {platform.node()}: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
          f"data: {data.n_users:,} users x {data.n_movies:,} movies, {len(data.train):,} train + {len(data.test):,} "
          f"test ratings, {n_test_users:,} users with test ratings; built in {build_s:.0f} s, data held: RSS "
          f"{base_mib:,.0f} MiB; block_memory_gb {ev.block_memory_gb} -> {rows_per_block} users per block; "
          f"a dense users x movies float64 matrix: {dense_gib:.1f} GiB", flush=True)
    print("| recommender | users ranked | fit s | wall s | peak RSS MiB | RMSE | NDCG@10 | NDCG@10 95% CI |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for item in args.recommenders.split(","):
        name, _, sample = item.partition(":")
        row = run_forked(name, data, U, V, dataclasses.replace(ev, sample_users=int(sample or args.sample_users)))
        rmse = row.get("test", {}).get("rmse")
        ndcg = row.get("ranking", {}).get("ndcg@10")
        ci = row.get("ndcg@10_ci95")
        print(f"| {make(name, U, V).label} | {row.get('ranking_users', 0):,} | {row['fit_seconds']:.1f} | "
              f"{row['wall_s']:.1f} | {row['peak_rss_mib']:,.0f} | {'-' if rmse is None else f'{rmse:.4f}'} | "
              f"{'-' if ndcg is None else f'{ndcg:.4f}'} | "
              f"{'-' if not ci else f'[{ci[0]:.4f}, {ci[1]:.4f}]'} |", flush=True)
    print(f"# load average {os.getloadavg()[0]:.1f} at the end; total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
