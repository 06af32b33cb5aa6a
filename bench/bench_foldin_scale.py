#!/usr/bin/env python
"""Time and memory of the export's implicit-ALS fold-in (``export.foldin_weight``) at MovieLens-25M's shape.

    python bench/bench_foldin_scale.py [--users 162541 --movies 59047 --ratings 25000095 --dim 65 --batch 8192]

Random rank vectors and a random binary users x movies matrix of the given shape (each rating a
uniform movie; duplicates merged), folded in by ``recsys.foldin.fold_in`` in blocks of ``--batch``
users with one Gramian, as ``recsys.export._fold_in_users`` does. Beside it, in the same run, the
peer every export already pays at this shape: one ``users x dim`` by ``dim x movies`` score pass
over a block of users (what a brute-force top-k of the same block costs). Prints the seconds of
each and the process's peak resident memory after each.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from scipy import sparse

    from recsys.foldin import fold_in, gramian

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=162_541)
    ap.add_argument("--movies", type=int, default=59_047)
    ap.add_argument("--ratings", type=int, default=25_000_095)
    ap.add_argument("--dim", type=int, default=65)
    ap.add_argument("--batch", type=int, default=8192)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    t0 = time.time()
    rows = rng.integers(0, args.users, args.ratings, dtype=np.int32)
    cols = rng.integers(0, args.movies, args.ratings, dtype=np.int32)
    X = sparse.csr_matrix((np.ones(args.ratings, np.int8), (rows, cols)), shape=(args.users, args.movies))
    del rows, cols
    X.sum_duplicates()
    U = rng.normal(0, 0.3, (args.users, args.dim)).astype(np.float32)
    V = rng.normal(0, 0.3, (args.movies, args.dim)).astype(np.float32)
    print(f"{args.users:,} users x {args.movies:,} movies, {X.nnz:,} distinct ratings, {args.dim} dimensions "
          f"(built in {time.time() - t0:.0f}s)", flush=True)

    t0 = time.time()
    gram = gramian(V, 3.0, 1.0)
    for start in range(0, args.users, args.batch):
        fold_in(U[start:start + args.batch], V, X[start:start + args.batch], 0.25, 3.0, 1.0, gram)
        if start // args.batch % 5 == 0:
            print(f"  fold-in: {min(start + args.batch, args.users):,} users, {time.time() - t0:.0f}s", flush=True)
    foldin_s = time.time() - t0
    foldin_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # before the peer's score blocks

    t0 = time.time()
    for start in range(0, args.users, args.batch):
        U[start:start + args.batch] @ V.T
    scores_s = time.time() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"fold-in {foldin_s:.1f}s (peak RSS {foldin_gib:.2f} GiB); one dense score pass over every user "
          f"{scores_s:.1f}s (peak RSS {peak_gib:.2f} GiB with its [batch, movies] float32 blocks); "
          f"ratio {foldin_s / scores_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
