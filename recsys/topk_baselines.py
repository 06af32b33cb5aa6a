"""Top-k baselines built for top-k, and their tuning on the validation split.

* :class:`Ease`: EASE (Steck, WWW 2019), a closed-form item-item model on binary feedback.
* :class:`ItemKnn`: item-based KNN on binary feedback (cosine, top-k neighbours per movie).
* :class:`ImplicitAls`: Spark MLlib ALS with ``implicitPrefs=True`` (Hu, Koren and Volinsky 2008).
* :class:`Tuned`: fits one of them for every point of a small grid on the training split,
  scores each on the validation split, keeps the best and refits it on train + validation.
  It reads ``Data.tuning_view()`` only, which holds no test rating.

Every baseline follows :class:`recsys.evaluation.Recommender` (``fit`` / ``scores``); none
predicts ratings (``rates = False``). Interactions are binary: a rating of any value is a 1.
``scores`` is called for a block of users (at most ``evaluate.block_users``, fewer when
``evaluate.block_memory_gb`` says so), so the users x movies scores are never materialised whole.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import numpy as np

from recsys.evaluation import Data, Recommender, _log, ranking_metrics


def interactions(data: Data):
    """Binary user x movie matrix of ``data.train`` as scipy CSR, float64, shape [n_users, n_movies]."""
    from scipy import sparse

    t = data.train
    X = sparse.csr_matrix((np.ones(len(t)), (t.u.to_numpy(), t.m.to_numpy())), shape=(data.n_users, data.n_movies))
    X.data[:] = 1.0  # a pair listed twice is still one interaction
    return X


class Ease(Recommender):
    """EASE: ``B = I - P diag(1 / diag(P))`` with ``P = (X^T X + lambda I)^-1``, so diag(B) = 0.

    Score of user u for movie j: ``(X_u B)_j``. Memory: one dense [n_movies, n_movies] float64
    matrix (skipped above ``max_items`` movies).
    """

    label, rates, kind = "EASE", False, "top-k"

    def __init__(self, lam: float, max_items: int):
        self.lam, self.max_items = float(lam), int(max_items)

    def unavailable(self, data: Data) -> str | None:
        if data.n_movies > self.max_items:
            size = data.n_movies ** 2 * 8  # bytes of one float64 movies x movies matrix
            shown = f"{size / 2 ** 30:.1f} GiB" if size >= 2 ** 30 else f"{size / 2 ** 20:.0f} MiB"
            return (f"{data.n_movies:,} movies > evaluate.ease.max_items {self.max_items:,} "
                    f"(EASE inverts a dense movies x movies matrix, {shown})")
        return None

    def fit(self, data):
        self.X = interactions(data)
        G = (self.X.T @ self.X).toarray()
        G[np.diag_indices_from(G)] += self.lam
        P = np.linalg.inv(G)
        self.B = -P / np.diag(P)[None, :]  # B_ij = -P_ij / P_jj (i != j)
        np.fill_diagonal(self.B, 0.0)
        return self

    def scores(self, users):
        return np.asarray(self.X[users] @ self.B)


class ItemKnn(Recommender):
    """ItemKNN on binary feedback: ``sim(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|)`` (cosine).

    Each candidate movie j keeps its ``neighbours`` most similar other movies N(j); the score of
    user u for j is ``sum over i in (movies of u) & N(j) of sim(i, j)``. The similarities are
    computed ``block_items`` candidate columns at a time and kept sparse ([n_movies, k] non-zeros):
    time grows with movies x movies (skipped above ``max_items`` movies).
    """

    label, rates, kind = "ItemKNN (implicit, cosine)", False, "top-k"

    def __init__(self, neighbours: int, block_items: int, max_items: int | None = None):
        self.k, self.block, self.max_items = int(neighbours), int(block_items), max_items

    def unavailable(self, data: Data) -> str | None:
        if self.max_items is not None and data.n_movies > self.max_items:
            return (f"{data.n_movies:,} movies > evaluate.item_knn.max_items {self.max_items:,} "
                    f"(it computes every movie's similarity to every other: {data.n_movies ** 2:,} cells per fit)")
        return None

    def fit(self, data):
        from scipy import sparse

        X = interactions(data)
        Xc = X.tocsc()
        norms = np.sqrt(np.asarray(X.sum(0)).ravel())
        norms[norms == 0] = 1.0
        n = data.n_movies
        k = min(self.k, n - 1)
        rows, cols, vals = [], [], []
        for s in range(0, n, self.block):
            cand = np.arange(s, min(n, s + self.block))
            co = (Xc.T @ Xc[:, cand]).toarray()  # [n_movies, block]: co-raters of (i, candidate)
            sim = co / norms[:, None] / norms[cand][None, :]
            sim[cand, np.arange(len(cand))] = 0.0  # a movie is not its own neighbour
            if k <= 0:
                continue
            top = np.argpartition(-sim, k - 1, axis=0)[:k]  # [k, block] neighbour rows per candidate
            v = np.take_along_axis(sim, top, 0)
            keep = v > 0
            rows.append(top[keep]); cols.append(np.broadcast_to(cand[None, :], top.shape)[keep]); vals.append(v[keep])
        cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
        self.W = sparse.csr_matrix((cat(vals, float), (cat(rows, np.int64), cat(cols, np.int64))), shape=(n, n))
        self.X = X
        return self

    def scores(self, users):
        return (self.X[users] @ self.W).toarray()


class ImplicitAls(Recommender):
    """Spark MLlib ALS, ``implicitPrefs=True``: confidence ``1 + alpha`` on every rated pair, 1
    elsewhere (Hu, Koren and Volinsky 2008); score ``<x_u, y_m>``. The distributed top-k peer."""

    label, rates, kind = "Spark MLlib ALS (implicit)", False, "top-k"

    def __init__(self, rank: int, reg: float, alpha: float, iters: int, seed: int,
                 master: str = "local[2]", driver_memory: str = "2g"):
        self.rank, self.reg, self.alpha, self.iters, self.seed = int(rank), float(reg), float(alpha), int(iters), seed
        self.master, self.driver_memory = master, driver_memory

    def fit(self, data):
        import pandas as pd

        from recsys.spark import als_factors

        pairs = data.train[["u", "m"]].drop_duplicates()
        frame = pd.DataFrame({"u": pairs.u.astype("int32"), "m": pairs.m.astype("int32"),
                              "r": np.ones(len(pairs), np.float32)})
        self.U, self.V, _, _ = als_factors(
            frame, data.n_users, data.n_movies, self.master, self.driver_memory, rank=self.rank, regParam=self.reg,
            alpha=self.alpha, maxIter=self.iters, implicitPrefs=True, userCol="u", itemCol="m", ratingCol="r",
            seed=self.seed)
        return self

    def scores(self, users):
        return self.U[users] @ self.V.T


class Tuned(Recommender):
    """A top-k baseline tuned on validation: ``make(**point)`` for every point of ``grid``.

    Budget: ``len(grid)`` fits on the training split (each scored on the validation split by
    ``metric``) plus one refit of the best point on train + validation. Each trial is logged and
    kept in ``self.tuning`` (written to metrics.json).
    """

    rates = False
    kind = "top-k"

    def __init__(self, label: str, make: Callable[..., Recommender], grid: list[dict], metric: str = "ndcg@10",
                 block_users: int = 256, liked_share: float = 0.75, block_memory_gb: float | None = None,
                 sample_users: int = 0, seed: int = 0):
        if not grid:
            raise ValueError(f"{label}: empty tuning grid")
        self.label, self.make, self.grid, self.metric = label, make, grid, metric
        self.block_users, self.liked_share, self.block_memory_gb = block_users, liked_share, block_memory_gb
        self.sample_users, self.seed = sample_users, seed  # validation users ranked per trial (0: all)
        self.tuning: dict = {}

    def unavailable(self, data: Data) -> str | None:
        return self.make(**self.grid[0]).unavailable(data)

    def fit(self, data):
        view = data.tuning_view()
        k = int(self.metric.split("@")[1])
        trials = []
        if view is None:
            best = self.grid[0]
            _log(f"{self.label}: no validation split (prepare.split.validation_fraction is 0): not tuned, using {best}")
        else:
            _log(f"{self.label}: tuning budget {len(self.grid)} fits on train, scored by validation {self.metric} "
                 f"({len(view.test):,} validation ratings"
                 + (f"; a seeded sample of {self.sample_users:,} validation users)" if self.sample_users else ")"))
            for point in self.grid:
                t0 = time.time()
                rec = self.make(**point).fit(view)
                value = ranking_metrics(rec, view, ks=(k,), block=self.block_users, liked_share=self.liked_share,
                                        block_memory_gb=self.block_memory_gb, sample_users=self.sample_users,
                                        seed=self.seed)[0][self.metric]
                trials.append({"params": point, self.metric: value, "fit_seconds": round(time.time() - t0, 2)})
                _log(f"  {self.label} {point}: validation {self.metric} {value:.4f}")
                del rec
            best = max(trials, key=lambda t: t[self.metric])["params"]
            _log(f"  {self.label}: chosen {best}")
        self.tuning = {"metric": f"validation {self.metric}", "budget": len(self.grid), "trials": trials, "chosen": best}
        self.chosen = self.make(**best).fit(data)
        return self

    def scores(self, users):
        return self.chosen.scores(users)


def grid(**axes: list) -> list[dict]:
    """Every combination of the named value lists, e.g. ``grid(rank=[8, 16], reg=[0.1])``."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def topk_baselines(ev, include_slow: bool = True) -> list[Recommender]:
    """The tuned top-k baselines from ``ev`` (an :class:`recsys.config.EvaluateConfig`); Spark's
    implicit ALS only with ``include_slow``."""
    common = {"metric": ev.tune_metric, "block_users": ev.block_users, "liked_share": ev.liked_share,
              "block_memory_gb": ev.block_memory_gb, "sample_users": ev.sample_users, "seed": ev.seed}
    out: list[Recommender] = [
        Tuned(Ease.label, lambda lam: Ease(lam, ev.ease.max_items), grid(lam=ev.ease.lambdas), **common),
        Tuned(ItemKnn.label, lambda neighbours: ItemKnn(neighbours, ev.item_knn.block_items, ev.item_knn.max_items),
              grid(neighbours=ev.item_knn.neighbours), **common),
    ]
    if include_slow:
        ia = ev.implicit_als
        out.append(Tuned(ImplicitAls.label,
                         lambda rank, reg, alpha: ImplicitAls(rank, reg, alpha, ia.iters, ev.seed, ev.spark_master,
                                                              ev.spark_driver_memory),
                         grid(rank=ia.ranks, reg=ia.regs, alpha=ia.alphas), **common))
    return out
