"""``recsys evaluate``: the model and the baselines on the same prepared split, one report.

Protocol (the same for every recommender):

* Rating accuracy: RMSE, MAE, MSE of predictions clipped to the rating scale, on the test
  split and on the cold-user / cold-movie test sets when prepare made them.
* Top-K (K = 5, 10, 20) for every user with test ratings (or a seeded sample of
  ``evaluate.sample_users`` of them, with NDCG@10's 95% interval): candidates are the movies the
  user did not rate in training (train + validation splits); relevant are all movies the
  user rated in the test split (variant ``_rel4``, "liked": rated at least
  ``rating_min + liked_share * (rating_max - rating_min)`` of the manifest's rating scale, 4 on
  1-5 stars). Precision, recall, F1,
  NDCG (binary gains), hit rate, MAP (truncated at K).
* Beyond accuracy, on the top-10 lists: catalog coverage, intra-list genre diversity
  (mean pairwise 1 - Jaccard of genre sets), novelty (mean -log2 of the share of users who
  rated the movie in training).

Every recommender implements :class:`Recommender` below: ``predict`` (rating for pairs) and
``scores`` (a score for every catalog movie, for a block of users); ``top_k`` ranks from
``scores`` unless a recommender ranks another way. The trained models are evaluated from
their serving directory (:class:`ServedModel`): their top-k lists come from the same ranking
path that ``recsys.serving.Recommender`` serves (the index search for a factorised model; for
a model scored by pairs, candidates re-ranked by its pair score: every movie, or the
retriever's top ``index.rerank_candidates``), so an approximate index's recall shows in the
reported figures, and the report says how each model's lists were ranked. Rating-prediction baselines (ranked by predicted rating): global mean,
user+item bias, user-based and item-based KNN on ratings (cosine, k neighbours), Surprise SVD
and SVD++, Spark MLlib ALS (explicit). Top-k baselines, tuned on the validation split
(recsys/topk_baselines.py): popularity, EASE, ItemKNN on implicit feedback, Spark MLlib ALS
(implicit). Every setting comes from the config's ``evaluate`` section; the report names, per
metric, the best baseline and the model's difference from it. Statistics come from the
training split only.

Memory is bounded at any scale: seen and test movies are scipy CSR matrices, users are ranked
in blocks sized by ``evaluate.block_memory_gb`` (never a users x movies array), rating errors
are summed block by block, and a baseline that cannot run at a size (``unavailable``: dense
rating KNN above ``evaluate.rating_knn.max_cells``, EASE and ItemKNN above
``evaluate.ease.max_items`` / ``evaluate.item_knn.max_items`` movies,
Surprise SVD / SVD++ above ``evaluate.svd.max_ratings`` / ``evaluate.svdpp.max_ratings``) is
skipped with one line naming its limit.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

KS = (5, 10, 20)
# Working memory per users x movies score cell of a block: the recommender's float64 scores and
# its temporaries, and the ranking's int64 partition indices (evaluate.block_memory_gb / this).
BYTES_PER_SCORE_CELL = 32
# Working memory per (user, movie) pair of a rating block: room for the pair's two gathered
# vectors (up to 64 float64 each) in a recommender's ``predict``.
BYTES_PER_RATING_PAIR = 1024


def _log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


@dataclass
class Data:
    """Training/test ratings as dense indices over the prepared users and movies tables."""

    users: pd.DataFrame
    movies: pd.DataFrame
    train: pd.DataFrame  # u, m, rating (u/m: row indices into users/movies); train + validation splits
    test: pd.DataFrame
    cold: dict[str, pd.DataFrame]
    rating_min: float
    rating_max: float
    valid: pd.DataFrame | None = None  # the validation split: the LAST len(valid) rows of ``train``

    def tuning_view(self) -> "Data | None":
        """What tuning may read: train without validation as ``train``, validation as ``test``.

        Holds no test or cold-start rating. None when there is no validation split."""
        if self.valid is None or not len(self.valid):
            return None
        n_fit = len(self.train) - len(self.valid)
        tail = self.train.iloc[n_fit:]
        if not (np.array_equal(tail.u.to_numpy(), self.valid.u.to_numpy())
                and np.array_equal(tail.m.to_numpy(), self.valid.m.to_numpy())):
            raise ValueError("Data.valid must be the last rows of Data.train")
        return Data(self.users, self.movies, self.train.iloc[:n_fit].reset_index(drop=True),
                    self.valid.reset_index(drop=True), {}, self.rating_min, self.rating_max)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_movies(self) -> int:
        return len(self.movies)

    @cached_property
    def seen(self):
        """Movies each user rated in ``train``: scipy CSR [n_users, n_movies], bool, one entry per
        pair (built once; its rows are what a ranking skips)."""
        return pair_matrix(self.train, self.n_users, self.n_movies)


def pair_matrix(frame: pd.DataFrame, n_users: int, n_movies: int):
    """The (u, m) pairs of ``frame`` as a binary scipy CSR matrix [n_users, n_movies] (bool;
    a pair listed twice is one entry; column indices sorted within each row)."""
    from scipy import sparse

    X = sparse.csr_matrix((np.ones(len(frame), np.int8), (frame.u.to_numpy(), frame.m.to_numpy())),
                          shape=(n_users, n_movies))
    X.sum_duplicates()
    X.data[:] = 1
    return X.astype(bool)


def load_data(prepared: str | Path) -> Data:
    prepared = Path(prepared)
    from recsys.prepare.job import load_manifest

    manifest = load_manifest(prepared)  # its version and the tables' checksums verified
    users = pd.read_parquet(prepared / "users.parquet")
    movies = pd.read_parquet(prepared / "movies.parquet")
    urow = pd.Series(np.arange(len(users)), index=users.user_id)
    mrow = pd.Series(np.arange(len(movies)), index=movies.movie_id)

    def read(split: str) -> pd.DataFrame | None:
        path = prepared / f"ratings_{split}"
        if not path.exists():
            return None
        df = pd.read_parquet(path, columns=["user_id", "movie_id", "rating"])
        return pd.DataFrame({"u": urow.loc[df.user_id].to_numpy(), "m": mrow.loc[df.movie_id].to_numpy(),
                             "rating": df.rating.to_numpy(np.float64)})

    valid = read("valid")
    train = pd.concat([d for d in (read("train"), valid) if d is not None], ignore_index=True)
    cold = {s: d for s in ("cold_users", "cold_movies") if (d := read(s)) is not None}
    return Data(users, movies, train, read("test"), cold, manifest["stats"]["rating_min"], manifest["stats"]["rating_max"],
                valid)


# ---------------------------------------------------------------------------- recommenders


class Recommender:
    """A recommender under evaluation."""

    label = "?"
    kind = "rating prediction"  # or "top-k" (built to rank), or "model" (ours)
    rates = True  # predicts ratings (popularity does not)
    ranks = True  # produces a ranking (global mean does not)

    def unavailable(self, data: Data) -> str | None:
        """Why this recommender cannot run at this data size (one line), or None."""
        return None

    def fit(self, data: Data) -> "Recommender":
        return self

    def predict(self, u: np.ndarray, m: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scores(self, users: np.ndarray) -> np.ndarray:
        """[len(users), n_movies] scores, higher is better: a new array the caller may overwrite."""
        raise NotImplementedError

    def top_k(self, users: np.ndarray, k: int, seen) -> np.ndarray:
        """[len(users), k] movie rows, best first, skipping the movies in ``seen`` (scipy CSR
        [len(users), n_movies]: row i is users[i]'s seen movies). Ranks the dense scores of this
        block of users only."""
        sc = self.scores(users)  # float32 scores stay float32: the same order at half the memory
        own = np.issubdtype(sc.dtype, np.floating) and sc.flags.writeable and sc.flags.owndata
        sc = sc if own else sc.astype(np.float64)
        np.negative(sc, out=sc)  # argpartition picks the smallest: rank by -score, in place
        seen = seen.tocsr()
        sc[np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr)), seen.indices] = np.inf
        part = np.argpartition(sc, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(sc, part, 1), axis=1, kind="stable")
        return np.take_along_axis(part, order, 1)


class GlobalMean(Recommender):
    label, ranks = "global mean", False

    def fit(self, data):
        self.mu = data.train.rating.mean()
        return self

    def predict(self, u, m):
        return np.full(len(u), self.mu)


class Bias(Recommender):
    """mu + b_u + b_m, regularised, by alternating least squares."""

    label = "user+item bias"

    def __init__(self, reg: float, iters: int):
        self.reg, self.iters = reg, iters

    def fit(self, data):
        t = data.train
        self.mu = t.rating.mean()
        self.bu = np.zeros(data.n_users); self.bm = np.zeros(data.n_movies)
        for _ in range(self.iters):
            r = t.rating - self.mu - self.bu[t.u]
            self.bm = np.bincount(t.m, r, data.n_movies) / (np.bincount(t.m, minlength=data.n_movies) + self.reg)
            r = t.rating - self.mu - self.bm[t.m]
            self.bu = np.bincount(t.u, r, data.n_users) / (np.bincount(t.u, minlength=data.n_users) + self.reg)
        return self

    def predict(self, u, m):
        return self.mu + self.bu[u] + self.bm[m]

    def scores(self, users):
        return np.broadcast_to(self.bm[None, :], (len(users), len(self.bm))).copy()


class Popularity(Recommender):
    label, rates, kind = "popularity", False, "top-k"

    def fit(self, data):
        self.count = np.bincount(data.train.m, minlength=data.n_movies).astype(float)
        return self

    def scores(self, users):
        return np.broadcast_to(self.count[None, :], (len(users), len(self.count))).copy()


class NeighbourCF(Recommender):
    """Cosine k-nearest-neighbour CF on mean-centred ratings (user-based or item-based)."""

    def __init__(self, user_based: bool, k: int, max_cells: int | None = None):
        self.user_based, self.k, self.max_cells = user_based, k, max_cells
        self.label = f"{'user' if user_based else 'item'}-based KNN (ratings, cosine)"

    def unavailable(self, data):
        if self.max_cells is None:
            return None
        cells = data.n_users * data.n_movies
        if cells > self.max_cells:
            return (f"{data.n_users:,} users x {data.n_movies:,} movies = {cells:,} cells > evaluate.rating_knn.max_cells "
                    f"{self.max_cells:,} (it holds the rating matrix dense)")
        n, noun = (data.n_users, "users") if self.user_based else (data.n_movies, "movies")
        if n * n > self.max_cells:
            return (f"{n:,} x {n:,} {noun} = {n * n:,} similarity cells > evaluate.rating_knn.max_cells "
                    f"{self.max_cells:,} (it holds the similarity matrix dense)")
        return None

    def fit(self, data):
        t = data.train
        R = np.zeros((data.n_users, data.n_movies)); M = np.zeros_like(R)
        R[t.u, t.m] = t.rating; M[t.u, t.m] = 1.0
        self.mu = t.rating.mean()
        self.user_mean = np.where(M.sum(1) > 0, R.sum(1) / np.maximum(M.sum(1), 1), self.mu)
        C = (R - self.user_mean[:, None]) * M  # mean-centred, zeros where unrated
        X = C if self.user_based else C.T
        norm = np.linalg.norm(X, axis=1, keepdims=True) + 1e-9
        S = (X / norm) @ (X / norm).T
        np.fill_diagonal(S, 0.0)
        if self.k < S.shape[0]:  # keep each row's k strongest neighbours
            cut = np.partition(np.abs(S), -self.k, axis=1)[:, -self.k][:, None]
            S = np.where(np.abs(S) >= cut, S, 0.0)
        self.S, self.S_abs, self.C, self.M = S, np.abs(S), C, M  # |S| once, not per block of users
        return self

    def _dev(self, users):
        if self.user_based:
            S = self.S[users]  # [B, U]
            num = S @ self.C; den = self.S_abs[users] @ self.M
        else:
            num = self.C[users] @ self.S.T  # [B, I]
            den = self.M[users] @ self.S_abs.T
        return np.where(den > 1e-9, num / np.maximum(den, 1e-9), 0.0)

    def predict(self, u, m):
        out = np.empty(len(u))
        for s in range(0, len(u), 4096):
            uu, mm = u[s:s + 4096], m[s:s + 4096]
            uniq, inv = np.unique(uu, return_inverse=True)
            dev = self._dev(uniq)
            out[s:s + 4096] = self.user_mean[uu] + dev[inv, mm]
        return out

    def scores(self, users):
        return self.user_mean[users][:, None] + self._dev(users)


class SurpriseModel(Recommender):
    """Surprise SVD / SVD++ (the classic rating baselines), fitted on the training split."""

    def __init__(self, kind: str, factors: int, epochs: int, learning_rate: float, reg: float, seed: int,
                 max_ratings: int | None = None):
        self.algorithm, self.seed, self.max_ratings = kind, seed, max_ratings
        self.params = {"n_factors": factors, "n_epochs": epochs, "lr_all": learning_rate, "reg_all": reg}
        self.label = f"Surprise {kind}"

    def unavailable(self, data):
        n = len(data.train)
        if self.max_ratings is not None and n > self.max_ratings:
            key = "svdpp" if self.algorithm == "SVD++" else "svd"
            return (f"{n:,} training ratings > evaluate.{key}.max_ratings {self.max_ratings:,} "
                    f"(single-threaded SGD over Python-held ratings)")
        return None

    def fit(self, data):
        from surprise import SVD, Dataset, Reader, SVDpp

        t = data.train
        ds = Dataset.load_from_df(t[["u", "m", "rating"]], Reader(rating_scale=(data.rating_min, data.rating_max)))
        algo = (SVD if self.algorithm == "SVD" else SVDpp)(random_state=self.seed, **self.params)
        self.trainset = ds.build_full_trainset()
        algo.fit(self.trainset)
        self.algo = algo
        self.n_movies = data.n_movies
        return self

    def predict(self, u, m):
        return np.array([self.algo.predict(int(a), int(b)).est for a, b in zip(u, m)])

    def scores(self, users):
        ts, a = self.trainset, self.algo
        def inner(fn, raw):
            try:
                return fn(raw)
            except ValueError:  # not in the training set
                return -1

        inner_items = np.array([inner(ts.to_inner_iid, i) for i in range(self.n_movies)])
        known = inner_items >= 0
        out = np.full((len(users), self.n_movies), ts.global_mean)
        Q = a.qi[inner_items[known]]; bi = a.bi[inner_items[known]]
        for row, u in enumerate(users):
            iu = inner(ts.to_inner_uid, int(u))
            if iu < 0:
                continue
            p = a.pu[iu].copy()
            if self.algorithm == "SVD++":
                rated = [j for j, _ in ts.ur[iu]]
                p = p + a.yj[rated].sum(0) / math.sqrt(len(rated))
            out[row, known] = ts.global_mean + a.bu[iu] + bi + Q @ p
        return out


class SparkALS(Recommender):
    """Spark MLlib ALS (explicit ratings): the distributed peer."""

    label = "Spark MLlib ALS (explicit)"

    def __init__(self, rank: int, reg: float, iters: int, seed: int, master: str = "local[2]", driver_memory: str = "2g"):
        self.rank, self.reg, self.iters, self.seed = rank, reg, iters, seed
        self.master, self.driver_memory = master, driver_memory

    def fit(self, data):
        from recsys.spark import als_factors

        frame = data.train.astype({"u": "int32", "m": "int32", "rating": "float32"})
        self.U, self.V, self.has_u, self.has_m = als_factors(
            frame, data.n_users, data.n_movies, self.master, self.driver_memory, rank=self.rank, regParam=self.reg,
            maxIter=self.iters, userCol="u", itemCol="m", ratingCol="rating", seed=self.seed, coldStartStrategy="nan")
        self.mu = data.train.rating.mean()
        return self

    def predict(self, u, m):
        p = (self.U[u] * self.V[m]).sum(1)
        return np.where(self.has_u[u] & self.has_m[m], p, self.mu)

    def scores(self, users):
        return self.U[users] @ self.V.T


class ServedModel(Recommender):
    """A trained model as served: its serving directory (index + vectors + model artifact).

    Ratings (rating models only) are the served ``predict``; top-k lists are the served ranking
    (``Recommender.top_k_rows``: the index search, or re-ranking by the pair score for a model that
    is not factorised) with the same exclusions; ``ranked_by`` says which. Any model kind: the
    contract's vectors and pair score, no formula here.
    """

    kind = "model"  # ours, as served

    def __init__(self, index_dir, label: str | None = None, prepared=None):
        # prepared: the data evaluated on; a served model from other prepared data is refused
        self.index_dir, self.label, self.prepared = index_dir, label, prepared

    def fit(self, data):
        from recsys.serving import Recommender as Served

        rec = Served.load(self.index_dir, prepared=self.prepared)
        self.served = rec
        self.rates = rec.rates
        self.ranked_by = rec.ranked_by
        self.label = self.label or f"{rec.info.get('label', rec.info['kind'])} (ours)"
        # evaluation rows -> served rows (the same ids; -1 for an id the served model lacks)
        urow = pd.Series(np.arange(len(rec.users)), index=rec.users.user_id)
        mrow = pd.Series(np.arange(len(rec.movies)), index=rec.movies.movie_id)
        self.u_map = urow.reindex(data.users.user_id).fillna(-1).to_numpy(np.int64)
        self.m_map = mrow.reindex(data.movies.movie_id).fillna(-1).to_numpy(np.int64)
        if (self.u_map < 0).any() or (self.m_map < 0).any():
            from recsys.errors import ArtifactError

            raise ArtifactError(f"{self.index_dir} was built from other prepared data: "
                                f"{int((self.u_map < 0).sum())} users and {int((self.m_map < 0).sum())} movies are missing")
        self.m_back = np.empty(len(rec.movies), np.int64)
        self.m_back[self.m_map] = np.arange(len(self.m_map))
        info = rec._model_dir / "model.json"
        self.history = json.loads(info.read_text()).get("history", []) if info.is_file() else []
        return self

    def predict(self, u, m):
        return self.served.pair_scores(self.u_map[u], self.m_map[m])

    def scores(self, users):
        return self.served.ranking_scores(self.u_map[users])[:, self.m_map]

    def top_k(self, users, k, seen):
        seen = seen.tocsr()
        rows = self.served.top_k_rows(self.u_map[users], k, [self.m_map[seen.indices[seen.indptr[i]:seen.indptr[i + 1]]]
                                                             for i in range(len(users))])
        out = np.empty((len(users), k), np.int64)
        for i, r in enumerate(rows):
            listed = self.m_back[r]
            if len(listed) < k:  # fewer than k unseen movies served (a user who has seen almost all):
                # the list is filled with seen movies, which are never relevant, as the dense top_k does
                filler = np.setdiff1d(seen.indices[seen.indptr[i]:seen.indptr[i + 1]], listed)
                rest = np.setdiff1d(np.arange(len(self.m_map)), np.concatenate([listed, filler]))
                filler = np.concatenate([filler, rest])
                listed = np.concatenate([listed, filler[:k - len(listed)]])
            out[i] = listed
        return out


def served_directory(directory, cfg, workdir) -> Path:
    """``directory`` if it is a serving directory; a trained model directory is exported and indexed
    (with the config's index settings) into ``workdir`` first, so it is evaluated as it would be served."""
    import dataclasses

    from recsys.errors import ConfigError

    d = Path(directory)
    if (d / "index.json").is_file():
        return d
    if not (d / "model.json").is_file():
        raise ConfigError(f"{d}: neither a serving directory (index.json) nor a trained model (model.json)")
    from recsys.export import export_vectors
    from recsys.serving import build_serving_dir

    work = Path(workdir)
    paths = dataclasses.replace(cfg.paths, model=str(d), vectors=str(work / "vectors"), index=str(work / "index"))
    export_vectors(d, cfg.paths.prepared, paths.vectors, settings=cfg.export)
    build_serving_dir(dataclasses.replace(cfg, paths=paths))
    return Path(paths.index)


# ---------------------------------------------------------------------------- metrics


def rating_metrics(rec: Recommender, df: pd.DataFrame, lo: float, hi: float, block_memory_gb: float | None = None) -> dict:
    """RMSE, MAE, MSE of ``rec``'s predictions for the pairs of ``df``, clipped to [lo, hi].

    Predicted ``block_memory_gb`` / BYTES_PER_RATING_PAIR pairs at a time (all at once when
    None); the errors are summed block by block, never held whole."""
    u, m, r = df.u.to_numpy(), df.m.to_numpy(), df.rating.to_numpy(np.float64)
    step = len(df) if block_memory_gb is None else max(1, int(block_memory_gb * 2 ** 30 // BYTES_PER_RATING_PAIR))
    sq = ab = 0.0
    for s in range(0, len(df), max(1, step)):
        err = np.clip(rec.predict(u[s:s + step], m[s:s + step]), lo, hi) - r[s:s + step]
        sq += float(np.dot(err, err)); ab += float(np.abs(err).sum())
    n = len(df)
    mse = sq / n if n else float("nan")
    return {"rmse": float(np.sqrt(mse)), "mae": ab / n if n else float("nan"), "mse": mse, "n": int(n)}


def ndcg_at_k(top: np.ndarray, relevant: set, k: int) -> float:
    """Binary-gain NDCG@k of one ranked list against a set of relevant items."""
    hits = np.array([m in relevant for m in top[:k]], float)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    return float((hits * disc[:len(hits)]).sum() / disc[:min(k, len(relevant))].sum()) if relevant else 0.0


def liked_threshold(data: Data, liked_share: float = 0.75) -> float:
    """The "liked" rating of the ``_rel4`` variant from the dataset's own scale (4.0 on 1-5 stars)."""
    return data.rating_min + liked_share * (data.rating_max - data.rating_min)


def block_rows(n_movies: int, block: int, block_memory_gb: float | None) -> int:
    """Users ranked at once: at most ``block``, and at most what ``block_memory_gb`` holds of
    [users, n_movies] score cells (BYTES_PER_SCORE_CELL each); at least 1."""
    if block_memory_gb is None:
        return max(1, block)
    return max(1, min(block, int(block_memory_gb * 2 ** 30 // (max(1, n_movies) * BYTES_PER_SCORE_CELL))))


def block_hit_metrics(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user top-k metrics of one block from its hit matrix.

    ``hits``: [users, >= k] bool, whether the j-th recommended movie is relevant;
    ``n_relevant``: [users] number of relevant movies (> 0). Returns name -> [users] float64:
    precision, recall, f1, ndcg (binary gains), hit_rate, map (truncated at k)."""
    h = hits[:, :k].astype(np.float64)
    n_hit = h.sum(1)
    p, r = n_hit / k, n_hit / n_relevant
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(disc)[np.minimum(k, n_relevant) - 1]
    prec_at = np.cumsum(h, 1) / np.arange(1, k + 1)
    return {"precision": p, "recall": r,
            "f1": np.where(n_hit > 0, 2 * p * r / np.where(n_hit > 0, p + r, 1.0), 0.0),
            "ndcg": (h * disc).sum(1) / ideal, "hit_rate": (n_hit > 0).astype(np.float64),
            "map": (prec_at * h).sum(1) / np.minimum(k, n_relevant)}


def ranking_metrics(rec: Recommender, data: Data, ks=KS, block: int = 256,
                    liked_share: float = 0.75, block_memory_gb: float | None = None, sample_users: int = 0,
                    seed: int = 0, per_user: dict | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Top-K metrics; also returns the evaluated users and their top-max(K) lists.

    Users with test ratings are ranked in blocks of :func:`block_rows` users ([block, n_movies]
    scores at once), their seen and test movies read from sparse matrices: memory is
    bounded by the block, never users x movies. ``sample_users`` > 0: only a seeded sample of
    that many users (without replacement). The ``_rel4`` variant counts as relevant only test
    ratings >= :func:`liked_threshold`; a metric averages over users with at least one relevant
    movie. ``per_user``: when given, filled with metric name -> [users] values (NaN where the
    user has no relevant movie in that variant)."""
    liked = data.test[data.test.rating >= liked_threshold(data, liked_share) - 1e-9]
    relevant = {"": pair_matrix(data.test, data.n_users, data.n_movies),
                "_rel4": pair_matrix(liked, data.n_users, data.n_movies)}
    users = np.flatnonzero(np.diff(relevant[""].indptr))  # sorted: every user with test ratings
    if 0 < sample_users < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, sample_users, replace=False))
    kmax = max(ks)
    step = block_rows(data.n_movies, block, block_memory_gb)
    tops = np.empty((len(users), kmax), np.int64)
    values = {f"{name}@{k}{variant}": np.full(len(users), np.nan)
              for variant in relevant for k in ks for name in ("precision", "recall", "f1", "ndcg", "hit_rate", "map")}
    for s in range(0, len(users), step):
        block_users = users[s:s + step]
        top = rec.top_k(block_users, kmax, data.seen[block_users])
        tops[s:s + step] = top
        rows = np.repeat(np.arange(len(block_users)), kmax)
        for variant, matrix in relevant.items():
            rel = matrix[block_users]
            n_rel = np.diff(rel.indptr)
            has = n_rel > 0
            if not has.any():
                continue
            hits = np.asarray(rel[rows, top.ravel()]).reshape(top.shape)[has]
            for k in ks:
                for name, v in block_hit_metrics(hits, n_rel[has], k).items():
                    values[f"{name}@{k}{variant}"][s + np.flatnonzero(has)] = v
    out = {}
    for key, v in values.items():
        v = v[~np.isnan(v)]
        out[key] = float(np.mean(v)) if len(v) else float("nan")
    if per_user is not None:
        per_user.update(values)
    return out, users, tops


def confidence_interval(values: np.ndarray, z: float = 1.959964) -> list[float]:
    """Normal-approximation 95% interval of the mean of per-user ``values`` (NaNs left out)."""
    v = values[~np.isnan(values)]
    if len(v) < 2:
        return [float("nan"), float("nan")]
    half = z * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return [float(np.mean(v)) - half, float(np.mean(v)) + half]


def _genre_matrix(data: Data) -> tuple[np.ndarray, list[str]]:
    """[n_movies, n_genres] bool multi-hot of the movies' genres, and the genre names."""
    split = data.movies.genres.fillna("").str.split("|")
    names = sorted({g for gs in split for g in gs if g})
    col = {g: i for i, g in enumerate(names)}
    G = np.zeros((data.n_movies, len(names)), bool)
    for row, gs in enumerate(split):
        G[row, [col[g] for g in gs if g]] = True
    return G, names


def beyond_accuracy(tops10: np.ndarray, data: Data, block: int = 4096) -> dict:
    """Coverage, intra-list genre diversity and novelty of the top lists ([users, 10] movie rows),
    ``block`` lists at a time."""
    G, _ = _genre_matrix(data)
    Gf = G.astype(np.float32)
    size = G.sum(1)
    n = tops10.shape[1]
    iu = np.triu_indices(n, 1)
    div = np.empty(len(tops10))
    for s in range(0, len(tops10), block):
        t = tops10[s:s + block]
        inter = np.einsum("uig,ujg->uij", Gf[t], Gf[t])  # shared genres of every pair in a list
        union = size[t][:, :, None] + size[t][:, None, :] - inter
        d = 1 - inter / np.maximum(1, union)
        div[s:s + block] = d[:, iu[0], iu[1]].mean(1)
    raters = np.bincount(data.seen.indices, minlength=data.n_movies)  # distinct training raters per movie
    share = np.maximum(raters, 1) / max(1, data.n_users)
    return {"coverage@10": float(len(np.unique(tops10)) / data.n_movies),
            "diversity@10": float(np.mean(div)),
            "novelty@10": float(np.mean(-np.log2(share[tops10])))}


# ---------------------------------------------------------------------------- the run


def baselines(include_slow: bool = True, settings=None) -> list[Recommender]:
    """Every baseline, set from ``settings`` (an :class:`recsys.config.EvaluateConfig`; its
    defaults are conf/default.yaml's). ``include_slow``: also Surprise SVD++ and the Spark ALS pair."""
    from recsys.config import EvaluateConfig
    from recsys.topk_baselines import topk_baselines

    ev = settings or EvaluateConfig()
    knn = ev.rating_knn
    svd = lambda kind, c: SurpriseModel(kind, c.factors, c.epochs, c.learning_rate, c.reg, ev.seed,  # noqa: E731
                                        c.max_ratings)
    out = [GlobalMean(), Bias(ev.bias.reg, ev.bias.iters),
           NeighbourCF(True, knn.neighbours, knn.max_cells), NeighbourCF(False, knn.neighbours, knn.max_cells),
           svd("SVD", ev.svd)]
    if include_slow:
        out += [svd("SVD++", ev.svdpp),
                SparkALS(ev.als.rank, ev.als.reg, ev.als.iters, ev.seed, ev.spark_master, ev.spark_driver_memory)]
    return out + [Popularity()] + topk_baselines(ev, include_slow)


# (metric, key in a result row, True when higher is better)
HEADLINE = [("RMSE", "rmse", False), ("MAE", "mae", False), ("P@10", "precision@10", True),
            ("R@10", "recall@10", True), ("NDCG@10", "ndcg@10", True), ("HR@10", "hit_rate@10", True),
            ("MAP@10", "map@10", True), ("NDCG@10 (liked)", "ndcg@10_rel4", True)]


def _metric(row: dict, key: str):
    v = row.get("test", {}).get(key) if key in ("rmse", "mae", "mse") else row.get("ranking", {}).get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def best_baselines(results: dict, models: list[str]) -> dict:
    """For every metric: the best baseline (lowest RMSE/MAE/MSE, highest otherwise) and each
    model's value and difference from it (model - best: negative is better for RMSE/MAE)."""
    baseline_rows = {k: r for k, r in results.items() if k not in models and "skipped" not in r}
    keys = ["rmse", "mae", "mse"] + sorted({k for r in results.values() for k in r.get("ranking", {})})
    out = {}
    for key in keys:
        higher = key not in ("rmse", "mae", "mse")
        cands = [(v, label) for label, r in baseline_rows.items() if (v := _metric(r, key)) is not None]
        if not cands:
            continue
        value, label = max(cands) if higher else min(cands)
        entry = {"baseline": label, "value": value, "higher_is_better": higher, "models": {}}
        for m in models:
            if (mv := _metric(results.get(m, {}), key)) is not None:
                entry["models"][m] = {"value": mv, "difference": mv - value}
        out[key] = entry
    return out


def evaluate_recommender(rec: Recommender, data: Data, ev) -> dict:
    """Fit ``rec`` on ``data.train`` and measure it on the test sets with the settings ``ev``
    (an :class:`recsys.config.EvaluateConfig`): its metrics.json row, plus ``top10`` ([users, 10]
    movie rows) when it ranks. A recommender that cannot run at this size gets ``skipped``."""
    reason = rec.unavailable(data)
    if reason:
        _log(f"{rec.label}: skipped: {reason}")
        return {"kind": rec.kind, "skipped": reason}
    t0 = time.time()
    rec.fit(data)
    fit_s = time.time() - t0
    row: dict = {"kind": rec.kind, "fit_seconds": round(fit_s, 2)}
    if getattr(rec, "tuning", None):
        row["tuning"] = rec.tuning
    if getattr(rec, "ranked_by", None):  # a served model: how its lists were ranked
        row["ranked_by"] = rec.ranked_by
    if rec.rates:
        row["test"] = rating_metrics(rec, data.test, data.rating_min, data.rating_max, ev.block_memory_gb)
        for name, df in data.cold.items():
            row[name] = rating_metrics(rec, df, data.rating_min, data.rating_max, ev.block_memory_gb)
    if rec.ranks:
        per_user: dict = {}
        rank, users, tops = ranking_metrics(rec, data, block=ev.block_users, liked_share=ev.liked_share,
                                            block_memory_gb=ev.block_memory_gb, sample_users=ev.sample_users,
                                            seed=ev.seed, per_user=per_user)
        row["ranking"] = rank
        row["ranking_users"] = int(len(users))
        row["ndcg@10_ci95"] = confidence_interval(per_user["ndcg@10"]) if "ndcg@10" in per_user else None
        row.update(beyond_accuracy(tops[:, :10], data))
        row["top10"] = tops[:, :10]
    row["seconds"] = round(time.time() - t0, 2)
    _log(f"{rec.label}: " + (f"RMSE {row['test']['rmse']:.4f} " if "test" in row else "")
         + (f"NDCG@10 {row['ranking']['ndcg@10']:.4f} " if "ranking" in row else "")
         + f"({fit_s:.1f}s fit, {row['seconds']:.1f}s in all)")
    return row


def evaluate(prepared: str | Path, served: dict[str | None, str | Path], report_dir: str | Path,
             include_slow: bool = True, settings=None) -> dict:
    """Evaluate the trained model(s) from their serving directories (``{label or None: index dir}``;
    None: a label from the model kind) and every baseline; write metrics.json, report.md, plots.

    ``settings``: the config's ``evaluate`` section (baseline settings, tuning grids, blocks)."""
    from recsys.config import EvaluateConfig

    ev = settings or EvaluateConfig()
    data = load_data(prepared)
    recs: list[Recommender] = [ServedModel(d, label, prepared) for label, d in served.items()]
    recs += baselines(include_slow, ev)
    liked = liked_threshold(data, ev.liked_share)
    results: dict[str, dict] = {}
    tops10: dict[str, np.ndarray] = {}
    for rec in recs:
        results[rec.label] = row = evaluate_recommender(rec, data, ev)
        if "top10" in row:
            tops10[rec.label] = row.pop("top10")
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    floor = noise_floor(prepared, data)
    best = best_baselines(results, [rec.label for rec in recs if isinstance(rec, ServedModel)])
    metrics = {"prepared": str(prepared), "protocol": __doc__.split("Protocol")[1].split("Every recommender")[0].strip(),
               "liked_threshold": liked, "results": results, "best_baseline": best}
    if floor:
        metrics["noise_floor"] = floor
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_report(report_dir, results, data, recs, tops10, best, liked, floor)
    return metrics


def noise_floor(prepared: str | Path, data: Data) -> dict | None:
    """The test RMSE of the synthetic data's own expected ratings (its noise floor: no model can
    beat it in expectation), when the prepared data was made from ``recsys data synth`` output that
    is still at the manifest's ``source.raw_dir``; else None."""
    from recsys.datasets.synth import noise_floor_rmse
    from recsys.prepare.job import load_manifest

    raw = load_manifest(Path(prepared)).get("source", {}).get("raw_dir")
    if not raw or data.test is None or not len(data.test):
        return None
    pairs = pd.DataFrame({"user_id": data.users.user_id.to_numpy()[data.test.u.to_numpy()],
                          "movie_id": data.movies.movie_id.to_numpy()[data.test.m.to_numpy()],
                          "rating": data.test.rating.to_numpy()})
    floor = noise_floor_rmse(raw, pairs)
    if floor:
        _log(f"noise floor (the synthetic data's expected ratings): test RMSE {floor['rmse']:.4f} "
             f"over {floor['pairs']:,} pairs")
    return floor


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _write_report(out: Path, results: dict, data: Data, recs: list[Recommender], tops10: dict,
                  best: dict | None = None, liked: float = 4.0, floor: dict | None = None) -> None:
    lines = ["# Evaluation report", "", f"Test ratings: {len(data.test):,}; users with test ratings: "
             f"{data.test.u.nunique():,}; catalog: {data.n_movies:,} movies. Kinds: rating prediction "
             "(ranked by predicted rating), top-k (built to rank; tuned on the validation split), model (ours).", "",
             f"| recommender | kind | RMSE | MAE | P@10 | R@10 | NDCG@10 | HR@10 | MAP@10 | NDCG@10 (>={liked:g}) | "
             "coverage | diversity | novelty |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    skipped = []
    for label, r in results.items():
        if "skipped" in r:
            skipped.append(f"{label} skipped: {r['skipped']}")
            continue
        t = r.get("test", {}); k = r.get("ranking", {})
        lines.append(f"| {label} | {r.get('kind', '')} | {_fmt(t.get('rmse'))} | {_fmt(t.get('mae'))} | "
                     f"{_fmt(k.get('precision@10'))} | "
                     f"{_fmt(k.get('recall@10'))} | {_fmt(k.get('ndcg@10'))} | {_fmt(k.get('hit_rate@10'))} | "
                     f"{_fmt(k.get('map@10'))} | {_fmt(k.get('ndcg@10_rel4'))} | {_fmt(r.get('coverage@10'))} | "
                     f"{_fmt(r.get('diversity@10'))} | {_fmt(r.get('novelty@10'))} |")
    lines += [""] + skipped if skipped else []
    if floor:
        lines += ["", f"Noise floor: the synthetic data's expected ratings (its hidden model, noise and rounding "
                      f"integrated out) score test RMSE {_fmt(floor['rmse'])} on {floor['pairs']:,} test pairs; "
                      "no model can beat it in expectation."]
    ranked = [(label, r) for label, r in results.items() if "ranking_users" in r]
    if ranked:
        n_test_users = data.test.u.nunique()
        n_ranked = ranked[0][1]["ranking_users"]
        lines += ["", (f"Top-k metrics over {n_ranked:,} of {n_test_users:,} users with test ratings "
                       f"({'a seeded sample, evaluate.sample_users' if n_ranked < n_test_users else 'all of them'}). "
                       "NDCG@10, 95% confidence interval over users (normal approximation): "
                       + "; ".join(f"{label} [{_fmt(r['ndcg@10_ci95'][0])}, {_fmt(r['ndcg@10_ci95'][1])}]"
                                   for label, r in ranked if r.get("ndcg@10_ci95")))]
    if best:
        models = sorted({m for e in best.values() for m in e["models"]})
        lines += ["", "## Best baseline per metric", "",
                  "| metric | best baseline | value | " + " | ".join(f"{m} (difference)" for m in models) + " |",
                  "|---|---|---:|" + "---:|" * len(models)]
        for name, key, _ in HEADLINE:
            e = best.get(key)
            if not e:
                continue
            cells = [f"{_fmt(e['models'][m]['value'])} ({e['models'][m]['difference']:+.4f})" if m in e["models"] else "-"
                     for m in models]
            lines.append(f"| {name.replace('liked', f'>={liked:g}')} | {e['baseline']} | {_fmt(e['value'])} | "
                         + " | ".join(cells) + " |")
    ranked_by = [f"{label}: {r['ranked_by']}" for label, r in results.items() if r.get("ranked_by")]
    if ranked_by:
        lines += ["", "Top-k lists of the served models: " + "; ".join(ranked_by) + "."]
    tuned = [(label, r["tuning"]) for label, r in results.items() if r.get("tuning")]
    if tuned:
        lines += ["", "Tuning (each on the validation split, budget = fits): " + "; ".join(
            f"{label}: {t['budget']} fits by {t['metric']}, chosen {t['chosen']}" for label, t in tuned)]
    for cold in ("cold_users", "cold_movies"):
        if any(cold in r for r in results.values()):
            lines += ["", f"{cold} RMSE: " + ", ".join(f"{label} {_fmt(r[cold]['rmse'])}"
                                                       for label, r in results.items() if cold in r)]
    lines += ["", "Plots: loss.png, topk.png, genres.png, data.png"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plots(out, results, data, recs, tops10)


def _plots(out: Path, results: dict, data: Data, recs: list[Recommender], tops10: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for rec in recs:
        hist = getattr(rec, "history", None)
        if hist:
            ax.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label=f"{rec.label} train loss")
            for key in (k for k in hist[0] if k.startswith("valid_") and k != "valid_selection"):
                ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], "--", label=f"{rec.label} {key}")
    ax.set_xlabel("epoch"); ax.set_ylabel("loss / validation metric"); ax.legend(fontsize=7); fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110); plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, metric in zip(axes, ("precision", "recall", "f1", "ndcg")):
        for label, r in results.items():
            if "ranking" in r:
                ax.plot(KS, [r["ranking"][f"{metric}@{k}"] for k in KS], marker="o", label=label)
        ax.set_title(f"{metric}@K"); ax.set_xlabel("K")
    axes[0].legend(fontsize=6); fig.tight_layout(); fig.savefig(out / "topk.png", dpi=110); plt.close(fig)

    G, genre_names = _genre_matrix(data)
    def genre_counts(movie_rows) -> pd.Series:  # genre -> how often it appears among the listed movies
        per_movie = np.bincount(np.asarray(movie_rows).reshape(-1), minlength=data.n_movies)
        return pd.Series(per_movie @ G, index=genre_names, dtype=float)
    def dist(movie_rows):
        c = genre_counts(movie_rows)
        return (c / max(1.0, c.sum())).sort_values(ascending=False)
    hist = dist(data.train.m.to_numpy())
    fig, ax = plt.subplots(figsize=(10, 4))
    frame = pd.DataFrame({"history": hist})
    for label, tops in list(tops10.items())[:3]:
        frame[label] = dist(tops)
    frame.fillna(0).plot.bar(ax=ax); ax.set_ylabel("share"); fig.tight_layout()
    fig.savefig(out / "genres.png", dpi=110); plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    data.train.rating.plot.hist(ax=axes[0], bins=np.arange(0.25, 5.8, 0.5)); axes[0].set_title("ratings")
    genre_counts(data.train.m.to_numpy()).sort_values(ascending=False).plot.bar(ax=axes[1])
    axes[1].set_title("ratings per genre")
    data.movies.year.dropna().astype(int).plot.hist(ax=axes[2], bins=30); axes[2].set_title("movies per release year")
    fig.tight_layout(); fig.savefig(out / "data.png", dpi=110); plt.close(fig)
