"""``recsys evaluate``: the model and the baselines on the same prepared split, one report.

Protocol (the same for every recommender):

* Rating accuracy: RMSE, MAE, MSE of predictions clipped to the rating scale, on the test
  split and on the cold-user / cold-movie test sets when prepare made them.
* Top-K (K = 5, 10, 20) for every user with test ratings: candidates are the movies the
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
their serving directory (:class:`ServedModel`): their top-k lists come from the same index
search that ``recsys.serving.Recommender`` serves, so an approximate index's recall shows in
the reported figures. Rating-prediction baselines (ranked by predicted rating): global mean,
user+item bias, user-based and item-based KNN on ratings (cosine, k neighbours), Surprise SVD
and SVD++, Spark MLlib ALS (explicit). Top-k baselines, tuned on the validation split
(recsys/topk_baselines.py): popularity, EASE, ItemKNN on implicit feedback, Spark MLlib ALS
(implicit). Every setting comes from the config's ``evaluate`` section; the report names, per
metric, the best baseline and the model's difference from it. Statistics come from the
training split only.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

KS = (5, 10, 20)


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


def load_data(prepared: str | Path) -> Data:
    prepared = Path(prepared)
    manifest = json.loads((prepared / "manifest.json").read_text())
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
        """[len(users), n_movies] scores, higher is better."""
        raise NotImplementedError

    def top_k(self, users: np.ndarray, k: int, seen: dict) -> np.ndarray:
        """[len(users), k] movie rows, best first, skipping each user's ``seen`` rows (dense scores)."""
        sc = self.scores(users).astype(np.float64)
        for i, u in enumerate(users):
            if u in seen:
                sc[i, seen[u]] = -np.inf
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sc, part, 1), axis=1, kind="stable")
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
        cells = data.n_users * data.n_movies
        if self.max_cells is not None and cells > self.max_cells:
            return (f"{data.n_users:,} users x {data.n_movies:,} movies = {cells:,} cells > evaluate.rating_knn.max_cells "
                    f"{self.max_cells:,} (it holds the rating matrix dense)")
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
        self.S, self.C, self.M = S, C, M
        return self

    def _dev(self, users):
        if self.user_based:
            S = self.S[users]  # [B, U]
            num = S @ self.C; den = np.abs(S) @ self.M
        else:
            num = self.C[users] @ self.S.T  # [B, I]
            den = self.M[users] @ np.abs(self.S).T
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

    def __init__(self, kind: str, factors: int, epochs: int, learning_rate: float, reg: float, seed: int):
        self.algorithm, self.seed = kind, seed
        self.params = {"n_factors": factors, "n_epochs": epochs, "lr_all": learning_rate, "reg_all": reg}
        self.label = f"Surprise {kind}"

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
        from pyspark.ml.recommendation import ALS

        from recsys.spark import get_spark

        spark = get_spark("recsys-evaluate-als", self.master, self.driver_memory, 4)
        df = spark.createDataFrame(data.train.astype({"u": "int32", "m": "int32", "rating": "float32"}))
        model = ALS(rank=self.rank, regParam=self.reg, maxIter=self.iters, userCol="u", itemCol="m",
                    ratingCol="rating", seed=self.seed, coldStartStrategy="nan").fit(df)
        self.mu = data.train.rating.mean()
        self.U = np.zeros((data.n_users, self.rank)); self.V = np.zeros((data.n_movies, self.rank))
        self.has_u = np.zeros(data.n_users, bool); self.has_m = np.zeros(data.n_movies, bool)
        for r in model.userFactors.collect():
            self.U[r.id] = r.features; self.has_u[r.id] = True
        for r in model.itemFactors.collect():
            self.V[r.id] = r.features; self.has_m[r.id] = True
        return self

    def predict(self, u, m):
        p = (self.U[u] * self.V[m]).sum(1)
        return np.where(self.has_u[u] & self.has_m[m], p, self.mu)

    def scores(self, users):
        return self.U[users] @ self.V.T


class ServedModel(Recommender):
    """A trained model as served: its serving directory (index + vectors + model artifact).

    Ratings (rating models only) are the served ``predict``; top-k lists are the served index
    search with the same exclusions. Any model kind: the contract's vectors, no formula here.
    """

    kind = "model"  # ours, as served

    def __init__(self, index_dir, label: str | None = None):
        self.index_dir, self.label = index_dir, label

    def fit(self, data):
        from recsys.serving import Recommender as Served

        rec = Served.load(self.index_dir)
        self.served = rec
        self.rates = rec.rates
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
        return self.served._ur[self.u_map[users]] @ self.served._mr[self.m_map].T

    def top_k(self, users, k, seen):
        rows = self.served.top_k_rows(self.u_map[users], k,
                                      [self.m_map[seen.get(u, np.empty(0, np.int64))] for u in users])
        return np.stack([self.m_back[r] for r in rows])


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
    paths = dataclasses.replace(cfg.paths, vectors=str(work / "vectors"), index=str(work / "index"))
    export_vectors(d, cfg.paths.prepared, paths.vectors)
    build_serving_dir(dataclasses.replace(cfg, paths=paths))
    return Path(paths.index)


# ---------------------------------------------------------------------------- metrics


def rating_metrics(rec: Recommender, df: pd.DataFrame, lo: float, hi: float) -> dict:
    p = np.clip(rec.predict(df.u.to_numpy(), df.m.to_numpy()), lo, hi)
    err = p - df.rating.to_numpy()
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "mse": float(np.mean(err ** 2)), "n": int(len(df))}


def ndcg_at_k(top: np.ndarray, relevant: set, k: int) -> float:
    """Binary-gain NDCG@k of one ranked list against a set of relevant items."""
    hits = np.array([m in relevant for m in top[:k]], float)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    return float((hits * disc[:len(hits)]).sum() / disc[:min(k, len(relevant))].sum()) if relevant else 0.0


def liked_threshold(data: Data, liked_share: float = 0.75) -> float:
    """The "liked" rating of the ``_rel4`` variant from the dataset's own scale (4.0 on 1-5 stars)."""
    return data.rating_min + liked_share * (data.rating_max - data.rating_min)


def ranking_metrics(rec: Recommender, data: Data, ks=KS, block: int = 256,
                    liked_share: float = 0.75) -> tuple[dict, np.ndarray, np.ndarray]:
    """Top-K metrics; also returns the evaluated users and their top-max(K) lists.

    Users are scored ``block`` at a time ([block, n_movies] float64 scores at once). The
    ``_rel4`` variant counts as relevant only test ratings >= :func:`liked_threshold`."""
    seen = data.train.groupby("u").m.apply(np.array).to_dict()
    test_all = data.test.groupby("u").m.apply(set).to_dict()
    test_good = data.test[data.test.rating >= liked_threshold(data, liked_share) - 1e-9].groupby("u").m.apply(set).to_dict()
    users = np.array(sorted(test_all))
    kmax = max(ks)
    tops = np.empty((len(users), kmax), np.int64)
    for s in range(0, len(users), block):
        tops[s:s + block] = rec.top_k(users[s:s + block], kmax, seen)
    out = {}
    for variant, relevant in (("", test_all), ("_rel4", test_good)):
        for k in ks:
            acc = {"precision": [], "recall": [], "f1": [], "ndcg": [], "hit_rate": [], "map": []}
            for row, u in enumerate(users):
                rel = relevant.get(u)
                if not rel:
                    continue
                hits = np.array([m in rel for m in tops[row, :k]], float)
                h = hits.sum()
                p, r = h / k, h / len(rel)
                acc["precision"].append(p); acc["recall"].append(r)
                acc["f1"].append(2 * p * r / (p + r) if h else 0.0)
                acc["ndcg"].append(ndcg_at_k(tops[row], rel, k))
                acc["hit_rate"].append(float(h > 0))
                prec_at = np.cumsum(hits) / np.arange(1, k + 1)
                acc["map"].append((prec_at * hits).sum() / min(k, len(rel)))
            for name, values in acc.items():
                out[f"{name}@{k}{variant}"] = float(np.mean(values)) if values else float("nan")
    return out, users, tops


def beyond_accuracy(tops10: np.ndarray, data: Data) -> dict:
    genres = [set(g.split("|")) if g else set() for g in data.movies.genres.fillna("")]
    pairs = []
    for row in tops10:
        d = [1 - len(genres[a] & genres[b]) / max(1, len(genres[a] | genres[b]))
             for i, a in enumerate(row) for b in row[i + 1:]]
        pairs.append(np.mean(d))
    raters = data.train.groupby("m").u.nunique().reindex(range(data.n_movies), fill_value=0).to_numpy()
    share = np.maximum(raters, 1) / max(1, data.n_users)
    return {"coverage@10": float(len(np.unique(tops10)) / data.n_movies),
            "diversity@10": float(np.mean(pairs)),
            "novelty@10": float(np.mean(-np.log2(share[tops10])))}


# ---------------------------------------------------------------------------- the run


def baselines(include_slow: bool = True, settings=None) -> list[Recommender]:
    """Every baseline, set from ``settings`` (an :class:`recsys.config.EvaluateConfig`; its
    defaults are conf/default.yaml's). ``include_slow``: also Surprise SVD++ and the Spark ALS pair."""
    from recsys.config import EvaluateConfig
    from recsys.topk_baselines import topk_baselines

    ev = settings or EvaluateConfig()
    knn = ev.rating_knn
    svd = lambda kind, c: SurpriseModel(kind, c.factors, c.epochs, c.learning_rate, c.reg, ev.seed)  # noqa: E731
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


def evaluate(prepared: str | Path, served: dict[str | None, str | Path], report_dir: str | Path,
             include_slow: bool = True, settings=None) -> dict:
    """Evaluate the trained model(s) from their serving directories (``{label or None: index dir}``;
    None: a label from the model kind) and every baseline; write metrics.json, report.md, plots.

    ``settings``: the config's ``evaluate`` section (baseline settings, tuning grids, blocks)."""
    from recsys.config import EvaluateConfig

    ev = settings or EvaluateConfig()
    data = load_data(prepared)
    recs: list[Recommender] = [ServedModel(d, label) for label, d in served.items()]
    recs += baselines(include_slow, ev)
    liked = liked_threshold(data, ev.liked_share)
    results: dict[str, dict] = {}
    tops10: dict[str, np.ndarray] = {}
    for rec in recs:
        reason = rec.unavailable(data)
        if reason:
            results[rec.label] = {"kind": rec.kind, "skipped": reason}
            _log(f"{rec.label}: skipped: {reason}")
            continue
        t0 = time.time()
        rec.fit(data)
        fit_s = time.time() - t0
        row: dict = {"kind": rec.kind, "fit_seconds": round(fit_s, 2)}
        if getattr(rec, "tuning", None):
            row["tuning"] = rec.tuning
        if rec.rates:
            row["test"] = rating_metrics(rec, data.test, data.rating_min, data.rating_max)
            for name, df in data.cold.items():
                row[name] = rating_metrics(rec, df, data.rating_min, data.rating_max)
        if rec.ranks:
            rank, users, tops = ranking_metrics(rec, data, block=ev.block_users, liked_share=ev.liked_share)
            row["ranking"] = rank
            row.update(beyond_accuracy(tops[:, :10], data))
            tops10[rec.label] = tops[:, :10]
        results[rec.label] = row
        _log(f"{rec.label}: " + (f"RMSE {row['test']['rmse']:.4f} " if "test" in row else "")
             + (f"NDCG@10 {row['ranking']['ndcg@10']:.4f} " if "ranking" in row else "") + f"({fit_s:.1f}s fit)")
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    best = best_baselines(results, [rec.label for rec in recs if isinstance(rec, ServedModel)])
    metrics = {"prepared": str(prepared), "protocol": __doc__.split("Protocol")[1].split("Every recommender")[0].strip(),
               "liked_threshold": liked, "results": results, "best_baseline": best}
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_report(report_dir, results, data, recs, tops10, best, liked)
    return metrics


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _write_report(out: Path, results: dict, data: Data, recs: list[Recommender], tops10: dict,
                  best: dict | None = None, liked: float = 4.0) -> None:
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

    genre_of = data.movies.genres.fillna("").str.split("|")
    def dist(movie_rows):
        s = genre_of.iloc[np.asarray(movie_rows).reshape(-1)].explode()
        s = s[s != ""]
        return s.value_counts(normalize=True)
    hist = dist(data.train.m.to_numpy())
    fig, ax = plt.subplots(figsize=(10, 4))
    frame = pd.DataFrame({"history": hist})
    for label, tops in list(tops10.items())[:3]:
        frame[label] = dist(tops)
    frame.fillna(0).plot.bar(ax=ax); ax.set_ylabel("share"); fig.tight_layout()
    fig.savefig(out / "genres.png", dpi=110); plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    data.train.rating.plot.hist(ax=axes[0], bins=np.arange(0.25, 5.8, 0.5)); axes[0].set_title("ratings")
    per_genre = genre_of.iloc[data.train.m.to_numpy()].explode()
    per_genre[per_genre != ""].value_counts().plot.bar(ax=axes[1]); axes[1].set_title("ratings per genre")
    data.movies.year.dropna().astype(int).plot.hist(ax=axes[2], bins=30); axes[2].set_title("movies per release year")
    fig.tight_layout(); fig.savefig(out / "data.png", dpi=110); plt.close(fig)
