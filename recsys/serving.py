"""Build the serving directory and answer recommendation queries from it.

``python jobs/build_index.py`` writes (atomically) ``paths.index``::

    index.json          dimensions, metric, vector forms, counts, search parameters, measured
                        recall, sha256 of every file, model version, mu, model dir
    movies_ip.faiss     [m, m_r, r_m], inner product (user query [u, u_r, 1]). For a model
                        trained with the retrieval loss: r_m = temperature * c_m and m_r, u_r
                        the retrieval-only dimensions (model.retrieval_dim; none when 0), so
                        the order is the retrieval score's. Otherwise [m, b_m] / [u, 1]: top-k
                        by predicted rating
    users_ip.faiss      [u, b_u], inner product   (movie query [m, 1])
    movies_cos.faiss    m / |m|, inner product     (cosine)
    movies.parquet      movie_id, title, genres, year, m, b_m, r_m[, m_r]  (row i = FAISS id i)
    users.parquet       user_id, gender, age, occupation, zip, u, b_u[, u_r]
    seen.parquet        user_id, movie_id of the ratings the model trained on
    vocabularies.json, features.json   to encode new users and movies exactly as prepare did

:class:`Recommender` loads it (checking every checksum and the model version) and answers
with plain Python objects: lists of dicts, or a pandas DataFrame with ``as_frame=True``.
Reads are safe from many threads: FAISS searches are read-only, and the towers (used only
for new users and movies) run under a lock.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import ArtifactError, RecsysError
from recsys.checksums import json_digest
from recsys.export import load_vectors, sha256_file
from recsys.indexing import build_index, movie_items, normalize, set_search_param, user_queries

INDEX_JSON = "index.json"
_FILES = ("movies_ip.faiss", "users_ip.faiss", "movies_cos.faiss", "movies.parquet", "users.parquet",
          "seen.parquet", "vocabularies.json", "features.json")


class UnknownIdError(RecsysError, KeyError):
    """A user or movie id that the served model does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def _log(msg: str) -> None:
    print(f"[index] {msg}", file=sys.stderr, flush=True)


def build_serving_dir(cfg) -> dict:
    """Build every index from ``paths.vectors`` (+ prepared tables) into ``paths.index``."""
    import faiss

    vec = load_vectors(cfg.paths.vectors)
    info = vec["info"]
    prepared = Path(info["prepared_dir"])
    out = Path(cfg.paths.index)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    ic = cfg.index
    try:
        m, b_m, m_r = vec["movies"]["vectors"], vec["movies"]["bias"], vec["movies"]["retrieval"]
        u, b_u, u_r = vec["users"]["vectors"], vec["users"]["bias"], vec["users"]["retrieval"]
        ranking = info.get("ranking", "rating")
        if ranking == "retrieval":  # top-k by <u, m> + <u_r, m_r> + prior (the retrieval score x temperature)
            r_m, rank_items, rank_queries = vec["movies"]["prior"], np.hstack([m, m_r]), np.hstack([u, u_r])
            forms = ("[m, m_r, prior]", "[u, u_r, 1]") if m_r.shape[1] else ("[m, prior]", "[u, 1]")
        else:  # top-k by predicted rating
            r_m, rank_items, rank_queries, forms = b_m, m, u, ("[m, b_m]", "[u, 1]")
        built = {
            "movies_ip": (build_index(movie_items(rank_items, r_m), user_queries(rank_queries), flat_max=ic.flat_max,
                                      factory=ic.approximate, target_recall=ic.target_recall, k=ic.recall_k,
                                      sample=ic.recall_sample, seed=ic.seed), *forms, len(m)),
            "users_ip": (build_index(movie_items(u, b_u), user_queries(m), flat_max=ic.flat_max, factory=ic.approximate,
                                     target_recall=ic.target_recall, k=ic.recall_k, sample=ic.recall_sample,
                                     seed=ic.seed), "[u, b_u]", "[m, 1]", len(u)),
            "movies_cos": (build_index(normalize(m), normalize(m), flat_max=ic.flat_max, factory=ic.approximate,
                                       target_recall=ic.target_recall, k=ic.recall_k, sample=ic.recall_sample,
                                       seed=ic.seed), "m/|m|", "m/|m|", len(m)),
        }
        for name, (b, *_rest) in built.items():
            faiss.write_index(b.index, str(tmp / f"{name}.faiss"))
        movies = pd.read_parquet(prepared / "movies.parquet", columns=["movie_id", "title", "genres", "year"])
        movies = movies.set_index("movie_id").loc[vec["movies"]["ids"]].reset_index()
        movies["m"] = list(m); movies["b_m"] = b_m; movies["r_m"] = r_m
        if ranking == "retrieval" and m_r.shape[1]:
            movies["m_r"] = list(m_r)
        movies.to_parquet(tmp / "movies.parquet", index=False)
        users = pd.read_parquet(prepared / "users.parquet", columns=["user_id", "gender", "age", "occupation", "zip"])
        users = users.set_index("user_id").loc[vec["users"]["ids"]].reset_index()
        users["u"] = list(u); users["b_u"] = b_u
        if ranking == "retrieval" and u_r.shape[1]:
            users["u_r"] = list(u_r)
        users.to_parquet(tmp / "users.parquet", index=False)
        seen = pd.concat([pd.read_parquet(prepared / f"ratings_{s}", columns=["user_id", "movie_id"])
                          for s in ("train", "valid") if (prepared / f"ratings_{s}").exists()])
        seen.to_parquet(tmp / "seen.parquet", index=False)
        shutil.copy(prepared / "vocabularies.json", tmp / "vocabularies.json")
        manifest = json.loads((prepared / "manifest.json").read_text())
        (tmp / "features.json").write_text(json.dumps({"spec": manifest["features"],
                                                       "settings": manifest["feature_settings"]}, indent=2))
        index_info = {
            "model_version": info["model_version"], "model_dir": info["model_dir"], "mu": info["mu"],
            "dimension": int(m.shape[1]), "metric": "inner_product", "ranking": ranking,
            # the rating scale: predicted ratings (mu + b_u + b_m + <u, m>) may fall outside it
            "rating_range": [manifest["stats"]["rating_min"], manifest["stats"]["rating_max"]],
            "indexes": {name: {"file": f"{name}.faiss", "type": b.kind, "vectors": form, "query": query,
                               "dimension": int(b.index.d),
                               "count": count, "search_params": b.search_param, "recall_at_k": b.recall,
                               "recall_k": ic.recall_k, "build_seconds": round(b.build_seconds, 3)}
                        for name, (b, form, query, count) in built.items()},
            "files": {name: sha256_file(tmp / name) for name in _FILES},
        }
        index_info["sha256"] = json_digest(index_info)
        (tmp / INDEX_JSON).write_text(json.dumps(index_info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, entry in index_info["indexes"].items():
        _log(f"{name}: {entry['count']:,} x {entry['vectors']} {entry['type']} {entry['search_params'] or ''} "
             f"recall@{ic.recall_k} {entry['recall_at_k']:.3f}")
    _log(f"wrote {out}")
    return index_info


class Recommender:
    """Recommendations from a serving directory (see module docstring).

    Every method returning movies gives dicts with ``movie_id, title, genres, score`` where
    ``score`` is the model's predicted rating (for similarity lists: the cosine). Lists are
    ordered by the index's ranking score (``index.json`` "ranking": the retrieval score for a
    model trained with the retrieval loss, else the predicted rating itself).
    """

    def __init__(self, directory: Path, info: dict, indexes: dict, movies: pd.DataFrame, users: pd.DataFrame,
                 seen: dict[int, np.ndarray], model_dir: Path | None):
        self.directory = directory
        self.info = info
        self.mu = float(info["mu"])
        self._idx = indexes
        self.movies = movies
        self.users = users
        self._m = np.stack(movies["m"].to_numpy()).astype(np.float32)
        self._bm = movies["b_m"].to_numpy(np.float32)
        self._rm = movies["r_m"].to_numpy(np.float32) if "r_m" in movies else self._bm
        self._mr = np.stack(movies["m_r"].to_numpy()).astype(np.float32) if "m_r" in movies \
            else np.zeros((len(movies), 0), np.float32)
        self._u = np.stack(users["u"].to_numpy()).astype(np.float32)
        self._bu = users["b_u"].to_numpy(np.float32)
        # retrieval-only dimensions (in the ranking query when the index ranks by the retrieval score)
        self._ur = np.stack(users["u_r"].to_numpy()).astype(np.float32) if "u_r" in users \
            else np.zeros((len(users), 0), np.float32)
        self._movie_row = {int(v): i for i, v in enumerate(movies["movie_id"])}
        self._user_row = {int(v): i for i, v in enumerate(users["user_id"])}
        # seen movies as catalog rows, mapped once here rather than on every query
        self._seen = {u: np.array([self._movie_row[m] for m in ids if m in self._movie_row], np.int64)
                      for u, ids in seen.items()}
        self._model_dir = model_dir
        self._model = None
        self._encoder = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, directory: str | Path, model_dir: str | Path | None = None, verify: bool = True) -> "Recommender":
        """Load a serving directory; ``model_dir`` (default: the one recorded) serves cold start."""
        import faiss

        d = Path(directory)
        info_path = d / INDEX_JSON
        if not info_path.is_file():
            raise ArtifactError(f"{info_path} not found: run python jobs/build_index.py --config ... first")
        try:
            info = json.loads(info_path.read_text())
        except ValueError as err:
            raise ArtifactError(f"{info_path}: not valid JSON ({err})") from None
        if not isinstance(info, dict) or "sha256" not in info:
            raise ArtifactError(f"{info_path} has no sha256 field (written by an older version?): rebuild the index")
        if info["sha256"] != json_digest(info):
            raise ArtifactError(f"{info_path} was altered after it was written (its sha256 field does not match "
                                "its content): rebuild the index")
        if verify:
            for name, digest in info["files"].items():
                path = d / name
                if not path.is_file():
                    raise ArtifactError(f"{path} listed in {info_path} is missing")
                if sha256_file(path) != digest:
                    raise ArtifactError(f"{path} does not match its sha256 in {info_path}: "
                                        "the file was altered or truncated; rebuild the index")
        indexes = {}
        for name, entry in info["indexes"].items():
            try:
                index = faiss.read_index(str(d / entry["file"]))
            except RuntimeError as err:
                raise ArtifactError(f"{d / entry['file']}: FAISS cannot read it ({str(err).splitlines()[0]})") from None
            if index.ntotal != entry["count"] or index.d != entry["dimension"]:
                raise ArtifactError(f"{d / entry['file']} holds {index.ntotal} x {index.d} vectors; "
                                    f"{info_path} says {entry['count']} x {entry['vectors']}")
            for pname, value in entry["search_params"].items():
                set_search_param(index, pname, value)
            indexes[name] = index
        movies = pd.read_parquet(d / "movies.parquet")
        users = pd.read_parquet(d / "users.parquet")
        for table, frame, index_name in (("movies", movies, "movies_ip"), ("users", users, "users_ip")):
            want = info["indexes"][index_name]["count"]
            if len(frame) != want:  # row i of the table is FAISS id i: a different catalog gives wrong answers
                raise ArtifactError(f"{d / table}.parquet has {len(frame)} rows; {info_path} and "
                                    f"{index_name}.faiss hold {want}: rebuild the index")
        seen_df = pd.read_parquet(d / "seen.parquet")
        seen = {int(u): g.to_numpy(np.int64) for u, g in seen_df.groupby("user_id")["movie_id"]}
        md = Path(model_dir) if model_dir else (Path(info["model_dir"]) if info.get("model_dir") else None)
        return cls(d, info, indexes, movies, users, seen, md)

    # ------------------------------------------------------------------ helpers

    def _check_k(self, k, limit: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= limit:
            raise ValueError(f"k must be an integer from 1 to {limit}, got {k!r}")
        return int(k)

    @staticmethod
    def _row(rows: dict[int, int], value, kind: str, instead: str) -> int:
        """The catalog row of a known user or movie id, or UnknownIdError saying what to use instead."""
        try:
            return rows[int(value)]
        except (KeyError, TypeError, ValueError):
            raise UnknownIdError(f"unknown {kind} id {value!r}: not among the {len(rows):,} {kind}s of "
                                 f"this model (use {instead} for a new {kind})") from None

    def _user(self, user_id) -> int:
        return self._row(self._user_row, user_id, "user", "recommend_for_profile")

    def _movie(self, movie_id) -> int:
        return self._row(self._movie_row, movie_id, "movie", "similar_to_new_movie")

    def _movie_rows(self, rows, scores, as_frame: bool):
        out = [{"movie_id": int(self.movies.at[r, "movie_id"]), "title": self.movies.at[r, "title"],
                "genres": self.movies.at[r, "genres"], "score": float(s)} for r, s in zip(rows, scores)]
        return pd.DataFrame(out) if as_frame else out

    def _search_movies(self, u: np.ndarray, u_r: np.ndarray, k: int,
                       exclude_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top k movie rows for a user (u [D], retrieval-only u_r [R]) by the index's ranking score,
        skipping ``exclude_rows`` (by over-fetch), with their b_m + <u, m> (add mu + b_u for the
        predicted rating)."""
        query = np.concatenate([u, u_r, [1.0]]).astype(np.float32)  # [u, u_r, 1] against [m, m_r, r_m]
        fetch = min(len(self._m), k + len(exclude_rows))
        _, rows = self._idx["movies_ip"].search(query[None, :], fetch)
        keep = (rows[0] >= 0) & ~np.isin(rows[0], exclude_rows)
        rows = rows[0][keep][:k]
        return rows, self._bm[rows] + self._m[rows] @ u  # the rating part of the prediction

    # ------------------------------------------------------------------ known users and movies

    def recommend(self, user_id, k: int = 10, exclude_seen: bool = True, as_frame: bool = False):
        """Top-k movies for a known user (score: predicted rating); seen movies excluded by default."""
        row = self._user(user_id)
        seen_rows = self._seen.get(int(user_id), np.empty(0, np.int64)) if exclude_seen else np.empty(0, np.int64)
        k = self._check_k(k, len(self._m))
        rows, scores = self._search_movies(self._u[row], self._ur[row], k, seen_rows)
        return self._movie_rows(rows, self.mu + self._bu[row] + scores, as_frame)

    def recommend_batch(self, user_ids, k: int = 10, exclude_seen: bool = True, as_frame: bool = False):
        """``recommend`` for many users: a list of lists (or one DataFrame with a user_id column)."""
        results = [self.recommend(u, k, exclude_seen) for u in user_ids]
        if as_frame:
            return pd.concat([pd.DataFrame(r).assign(user_id=u) for u, r in zip(user_ids, results)], ignore_index=True)
        return results

    def predict(self, user_id, movie_id) -> float:
        """The model's predicted rating ``mu + b_u + b_m + <u, m>``."""
        u, m = self._user(user_id), self._movie(movie_id)
        return float(self.mu + self._bu[u] + self._bm[m] + self._u[u] @ self._m[m])

    def similar_movies(self, movie_id, k: int = 10, as_frame: bool = False):
        """The k movies closest to ``movie_id`` by cosine of their vectors ``m``."""
        row = self._movie(movie_id)
        k = self._check_k(k, len(self._m) - 1)
        q = normalize(self._m[row][None, :])
        scores, rows = self._idx["movies_cos"].search(q, k + 1)
        keep = (rows[0] >= 0) & (rows[0] != row)
        return self._movie_rows(rows[0][keep][:k], scores[0][keep][:k], as_frame)

    def _user_rows(self, rows, scores, as_frame):
        out = [{"user_id": int(self.users.at[r, "user_id"]), "gender": self.users.at[r, "gender"],
                "age": None if pd.isna(self.users.at[r, "age"]) else int(self.users.at[r, "age"]),
                "occupation": self.users.at[r, "occupation"], "score": float(s)} for r, s in zip(rows, scores)]
        return pd.DataFrame(out) if as_frame else out

    def _users_for_vector(self, m: np.ndarray, b_m: float, k: int, as_frame: bool,
                          exclude_rows: np.ndarray | None = None):
        k = self._check_k(k, len(self._u))
        exclude_rows = np.empty(0, np.int64) if exclude_rows is None else exclude_rows
        fetch = min(len(self._u), k + len(exclude_rows))  # over-fetch, then drop the excluded users
        scores, rows = self._idx["users_ip"].search(np.append(m, 1.0)[None, :].astype(np.float32), fetch)
        keep = (rows[0] >= 0) & ~np.isin(rows[0], exclude_rows)
        return self._user_rows(rows[0][keep][:k], self.mu + b_m + scores[0][keep][:k], as_frame)

    def _raters(self, movie_row: int) -> np.ndarray:
        """User rows that rated catalog row ``movie_row`` in training (inverted ``_seen``, built once)."""
        if not hasattr(self, "_raters_by_movie"):
            by_movie: dict[int, list[int]] = {}
            for user_id, movie_rows in self._seen.items():
                if user_id in self._user_row:
                    for r in movie_rows.tolist():
                        by_movie.setdefault(r, []).append(self._user_row[user_id])
            self._raters_by_movie = {r: np.array(v, np.int64) for r, v in by_movie.items()}
        return self._raters_by_movie.get(movie_row, np.empty(0, np.int64))

    def users_for_movie(self, movie_id, k: int = 10, as_frame: bool = False, exclude_raters: bool = True):
        """The k users predicted to rate ``movie_id`` highest, leaving out (by default) the users
        who already rated it in training. ``score`` is the model's unclipped prediction
        ``mu + b_u + b_m + <u, m>``: it can fall outside ``info["rating_range"]``."""
        row = self._movie(movie_id)
        raters = self._raters(row) if exclude_raters else None
        return self._users_for_vector(self._m[row], float(self._bm[row]), k, as_frame, raters)

    def also_liked(self, movie_id, k: int = 10, fans: int = 50, as_frame: bool = False):
        """People who like this movie also like: the movies its top ``fans`` users score highest."""
        row = self._movie(movie_id)
        k = self._check_k(k, len(self._m) - 1)
        top = self._idx["users_ip"].search(np.append(self._m[row], 1.0)[None, :].astype(np.float32),
                                           min(fans, len(self._u)))[1][0]
        top = top[top >= 0]
        rows, scores = self._search_movies(self._u[top].mean(axis=0), self._ur[top].mean(axis=0), k, np.array([row]))
        return self._movie_rows(rows, self.mu + self._bu[top].mean() + scores, as_frame)

    # ------------------------------------------------------------------ cold start

    def _cold(self):
        """The trained towers and the prepare-time encoder, loaded on first use."""
        with self._lock:
            if self._model is None:
                from recsys.export import TrainedModel
                from recsys.features import FeatureEncoder, Vocabularies

                if self._model_dir is None:
                    raise ArtifactError("cold start needs the model directory; pass model_dir to Recommender.load")
                model = TrainedModel(self._model_dir)
                if model.version != self.info["model_version"]:
                    raise ArtifactError(f"model in {self._model_dir} is version {model.version}, but the index "
                                        f"was built from {self.info['model_version']}: rebuild the index")
                features = json.loads((self.directory / "features.json").read_text())
                vocabs = Vocabularies.load(self.directory / "vocabularies.json")
                self._encoder = FeatureEncoder.from_settings(vocabs, features["settings"])
                self._model = model
            return self._model, self._encoder

    def _check_profile(self, gender, age, occupation):
        _, enc = self._cold()
        genders = enc.vocabs["gender"].values
        occs = enc.vocabs["occupation"].values
        if gender is not None and gender not in genders:
            raise ValueError(f"gender must be one of {genders} or None, got {gender!r}")
        if age is not None and (isinstance(age, bool) or not isinstance(age, (int, np.integer)) or not 1 <= age <= 120):
            raise ValueError(f"age must be an integer from 1 to 120 (years) or None, got {age!r}")
        if occupation is not None and str(occupation).lower() not in occs:
            raise ValueError(f"occupation must be one of {occs} or None, got {occupation!r}")

    def _profile_heads(self, gender, age, occupation, zipcode) -> tuple[np.ndarray, float, np.ndarray]:
        self._check_profile(gender, age, occupation)
        model, enc = self._cold()
        feats = enc.user(None, gender, age, occupation, zipcode)
        with self._lock:
            u, b, u_r = model.user_heads({k: np.array([v]) for k, v in feats.items()})
        return u[0], float(b[0]), u_r[0][: self._ur.shape[1]]

    def profile_vector(self, gender=None, age=None, occupation=None, zipcode=None) -> tuple[np.ndarray, float]:
        """(u, b_u) of a new user from demographics alone (the id falls back to OOV)."""
        u, b, _ = self._profile_heads(gender, age, occupation, zipcode)
        return u, b

    def new_movie_vector(self, title: str, genres, year=None) -> tuple[np.ndarray, float]:
        """(m, b_m) of a new movie from title, genres and year alone."""
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        model, enc = self._cold()
        genre_text = "|".join(genres) if isinstance(genres, (list, tuple)) else (genres or "")
        unknown = [g for g in genre_text.split("|") if g and g not in enc.vocabs["genres"]]
        if unknown:
            raise ValueError(f"unknown genre(s) {unknown}; allowed: {enc.vocabs['genres'].values}")
        feats = enc.movie(None, title, genre_text, year)
        with self._lock:
            m, b = model.movie_vectors({k: np.array([v]) for k, v in feats.items()})
        return m[0], float(b[0])

    def recommend_for_profile(self, gender=None, age=None, occupation=None, zipcode=None, k: int = 10,
                              as_frame: bool = False):
        """Top-k movies for a new user described only by gender, age (years) and occupation."""
        u, b_u, u_r = self._profile_heads(gender, age, occupation, zipcode)
        k = self._check_k(k, len(self._m))
        rows, scores = self._search_movies(u, u_r, k, np.empty(0, np.int64))
        return self._movie_rows(rows, self.mu + b_u + scores, as_frame)

    def similar_to_new_movie(self, title: str, genres, year=None, k: int = 10, as_frame: bool = False):
        """The k known movies closest (cosine) to a new movie given by title and genres."""
        m, _ = self.new_movie_vector(title, genres, year)
        k = self._check_k(k, len(self._m))
        scores, rows = self._idx["movies_cos"].search(normalize(m[None, :]), k)
        keep = rows[0] >= 0
        return self._movie_rows(rows[0][keep], scores[0][keep], as_frame)

    def users_for_new_movie(self, title: str, genres, year=None, k: int = 10, as_frame: bool = False):
        """The k users predicted to rate a new movie highest."""
        m, b_m = self.new_movie_vector(title, genres, year)
        return self._users_for_vector(m, b_m, k, as_frame)
