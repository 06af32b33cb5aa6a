"""Build the serving directory and answer recommendation queries from it.

``python jobs/build_index.py`` writes (atomically) ``paths.index``::

    index.json          model kind and version, score offset, per index: type, vector forms,
                        counts, tuned search parameter, measured recall; sha256 of every file
    movies_ip.faiss     movies' rank vectors, inner product (query: a user's rank vector): top-k
    users_ip.faiss      users' score vectors, inner product (query: a movie's score vector): who likes
    movies_cos.faiss    movies' similarity vectors / norm, inner product = cosine
    movies.parquet      movie_id, title, genres, year, score, rank, similarity  (row i = FAISS id i)
                        (+ enc_<feature> for each feature a model scored by pairs reads)
    users.parquet       user_id, gender, age, occupation, zip, score, rank  (+ enc_<feature> likewise)
    seen.parquet        user_id, movie_id of the ratings the model trained on (train + validation)
    model/              the model artifact (weights, config, feature spec, vocabularies): new users
                        and movies are encoded and scored from it, so the directory moves as one

The vectors are the model contract's (recsys/models/contract.py). A factorised model:
``score = offset + <user score, movie score>`` (the predicted rating for a rating model), top-k
by ``<user rank, movie rank>`` through the index. A model scored by pairs (``factorised`` false
in index.json, e.g. NeuMF): every list is re-ranked by the model's pair score
(recsys/reranking.py: all movies in blocks up to ``index.rerank_full_scan_max``, else the index's
top ``index.rerank_candidates``), and that score is returned; index.json records the plan
(``reranking``) and says in words how lists are ranked (``ranked_by``). Nothing here knows a
model's formula: :meth:`Recommender._rank` is the one path every list takes, and
``recsys evaluate`` ranks through it too. :class:`Recommender` loads the directory (checking
every checksum and the model version) and answers with plain Python objects: lists of dicts,
or a pandas DataFrame with ``as_frame=True``. Reads are safe from many threads: FAISS searches
are read-only, and the model (for new users and movies, and a model scored by pairs) runs
under a lock.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import ArtifactError, RecsysError
from recsys.checksums import json_digest
from recsys.export import check_same_data, load_vectors, sha256_file
from recsys.features import ENC, encoded_columns
from recsys.indexing import VectorIndex, normalize
from recsys.outputs import replacing
from recsys.reranking import RerankPlan, top_k_by_pairs

INDEX_JSON = "index.json"
MODEL_SUBDIR = "model"
_TABLES = ("movies_ip.faiss", "users_ip.faiss", "movies_cos.faiss", "movies.parquet", "users.parquet", "seen.parquet")


class UnknownIdError(RecsysError, KeyError):
    """A user or movie id that the served model does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def _log(msg: str) -> None:
    print(f"[index] {msg}", file=sys.stderr, flush=True)


def build_serving_dir(cfg) -> dict:
    """Build every index from ``paths.vectors`` (+ the tables of ``paths.prepared`` and the model artifact
    of ``paths.model``) into ``paths.index``.

    The model and prepared data are the config's, not the absolute paths ``vectors.json`` recorded at
    export (a run folder moved or mounted elsewhere still builds); they must be the very model version
    and prepared data the vectors came from, else one error says which to redo."""
    from recsys.models.contract import copy_artifact, weights_version

    from recsys.prepare.job import MANIFEST, load_manifest

    vec = load_vectors(cfg.paths.vectors)
    info = vec["info"]
    prepared = Path(cfg.paths.prepared)
    model_dir = Path(cfg.paths.model)
    vectors_json = Path(cfg.paths.vectors) / "vectors.json"
    if not (model_dir / "model.json").is_file():
        raise ArtifactError(f"paths.model {model_dir} holds no trained model (model.json): point it at the model "
                            f"{vectors_json} was exported from (version {info['model_version']})")
    # one model version and one prepared dataset behind vectors, tables and the copied model
    found = weights_version(model_dir)
    if found != info["model_version"]:
        raise ArtifactError(f"the model in {model_dir} (version {found}) is not the one {vectors_json} was exported "
                            f"from (version {info['model_version']}): export again")
    model_info = json.loads((model_dir / "model.json").read_text())
    check_same_data(vectors_json, info["manifest_sha256"], model_dir / "model.json", model_info.get("manifest_sha256"),
                    "export again")
    manifest = load_manifest(prepared)  # its version and every table read below, checked against it
    check_same_data(prepared / MANIFEST, sha256_file(prepared / MANIFEST), vectors_json, info["manifest_sha256"],
                    f"the prepared data changed after the export; export again from {prepared}")
    out = Path(cfg.paths.index)
    movies_v, users_v = vec["movies"], vec["users"]
    factorised = bool(info.get("factorised", True))
    # a model scored by pairs reads its features of every known user and movie when it ranks
    movie_enc = [] if factorised else [ENC + name for name in info["movie_features"]]
    user_enc = [] if factorised else [ENC + name for name in info["user_features"]]
    with replacing(out, "index", "paths.index", signature=(INDEX_JSON,)) as tmp:
        built = {  # name: (index, indexed vectors, query vectors)
            "movies_ip": (VectorIndex.build(movies_v["rank"], users_v["rank"], cfg.index), "movie rank", "user rank"),
            "users_ip": (VectorIndex.build(users_v["score"], movies_v["score"], cfg.index), "user score", "movie score"),
            "movies_cos": (VectorIndex.build(normalize(movies_v["similarity"]), normalize(movies_v["similarity"]),
                                             cfg.index), "movie similarity / norm", "movie similarity / norm"),
        }
        for name, (index, *_rest) in built.items():
            index.save(tmp / f"{name}.faiss")
        movies = pd.read_parquet(prepared / "movies.parquet",
                                 columns=["movie_id", "title", "genres", "year"] + movie_enc)
        movies = movies.set_index("movie_id").loc[movies_v["ids"]].reset_index()
        for name in ("score", "rank", "similarity"):
            movies[name] = list(movies_v[name])
        movies.to_parquet(tmp / "movies.parquet", index=False)
        users = pd.read_parquet(prepared / "users.parquet",
                                columns=["user_id", "gender", "age", "occupation", "zip"] + user_enc)
        users = users.set_index("user_id").loc[users_v["ids"]].reset_index()
        for name in ("score", "rank"):
            users[name] = list(users_v[name])
        users.to_parquet(tmp / "users.parquet", index=False)
        seen = pd.concat([pd.read_parquet(prepared / f"ratings_{s}", columns=["user_id", "movie_id"])
                          for s in ("train", "valid") if (prepared / f"ratings_{s}").exists()])
        seen.to_parquet(tmp / "seen.parquet", index=False)
        copy_artifact(model_dir, tmp / MODEL_SUBDIR)
        stats = manifest["stats"]
        files = list(_TABLES) + sorted(str(p.relative_to(tmp)) for p in (tmp / MODEL_SUBDIR).rglob("*") if p.is_file())
        index_info = {
            "model_version": info["model_version"], "kind": info["kind"], "label": info["label"], "rates": info["rates"],
            "score_offset": info["score_offset"], "manifest_sha256": info["manifest_sha256"],
            "model": MODEL_SUBDIR, "metric": "inner_product",
            # the data's rating scale: a rating model's predictions (score_offset + <u, m>) may fall outside it
            "rating_range": [stats["rating_min"], stats["rating_max"]],
            "indexes": {name: {"file": f"{name}.faiss", "vectors": form, "query": query, **index.describe()}
                        for name, (index, form, query) in built.items()},
            "files": {name: sha256_file(tmp / name) for name in files},
            "factorised": factorised,
            "foldin": info.get("foldin"),  # the export's implicit-ALS fold-in of the user rank vectors, or None
        }
        if not factorised:
            index_info.update({
                "user_features": info["user_features"], "movie_features": info["movie_features"],
                "reranking": {"movies": RerankPlan.choose(len(movies), cfg.index, "movies").to_json(),
                              "users": RerankPlan.choose(len(users), cfg.index, "users").to_json()}})
        index_info["ranked_by"] = ranked_by(index_info)
        index_info["sha256"] = json_digest(index_info)
        (tmp / INDEX_JSON).write_text(json.dumps(index_info, indent=2))
    for name, entry in index_info["indexes"].items():
        _log(f"{name}: {entry['count']:,} x {entry['vectors']} ({entry['dimension']}) {entry['type']} "
             f"{entry['search_params'] or ''} recall@{cfg.index.recall_k} {entry['recall_at_k']:.3f}")
    _log(f"wrote {out} ({info['kind']} model {info['model_version']}); top-k: {index_info['ranked_by']}")
    return index_info


def ranked_by(info: dict) -> str:
    """How the movie lists of an index (its index.json ``info``) are ranked, in words."""
    entry = info["indexes"]["movies_ip"]
    retriever = f"the retriever index movies_ip ({entry['type']}, measured recall {entry['recall_at_k']:.3f})"
    if info.get("factorised", True):
        foldin = info.get("foldin")
        users = f" (user rank vectors with the implicit-ALS fold-in, weight {foldin['weight']:g})" if foldin else ""
        return f"inner product of rank vectors{users} through {retriever}"
    return RerankPlan.from_json(info["reranking"]["movies"]).describe(retriever)


def _check_model(model_dir: Path, info: dict, info_path: Path) -> None:
    """The model artifact that serves cold start must be the one the index was built from: the same
    weights (version) and the same prepared data (manifest sha256). One error naming both sides."""
    from recsys.models.contract import MODEL_JSON, weights_version

    model_json = model_dir / MODEL_JSON
    if not model_json.is_file():
        return  # no artifact: cold start says so on first use; known users and movies need none
    try:
        model_info = json.loads(model_json.read_text())
    except ValueError as err:
        raise ArtifactError(f"{model_json}: not valid JSON ({err})") from None
    found = weights_version(model_dir)
    if found != info["model_version"]:
        raise ArtifactError(f"the model in {model_dir} is version {found}, but {info_path} was built from version "
                            f"{info['model_version']}: serve it with the model it was built from, or rebuild the index")
    check_same_data(info_path, info["manifest_sha256"], model_json, model_info.get("manifest_sha256"),
                    "rebuild the index from this model's export")


def _matrix(column: pd.Series) -> np.ndarray:
    return np.stack(column.to_numpy()).astype(np.float32)


@dataclass
class _Query:
    """Whom lists are for, one entry per query: a user, a new user's profile or a group of fans (lists
    of movies), or a movie (lists of users).

    ``rank`` [Q, R]: the retriever's query vectors; ``score`` [Q, S]: score vectors (a factorised
    model's score of a row is ``offset + <score, row's score vector>``); ``table``: encoded features
    (name -> [N, ...]) that ``members`` index; ``members``: per query, the rows of ``table`` it stands
    for (a group's pair score is its members' mean). ``table`` and ``members`` serve a model scored
    by pairs."""

    rank: np.ndarray
    score: np.ndarray
    table: dict | None
    members: list


class Recommender:
    """Recommendations from a serving directory (see module docstring).

    Every method returning movies gives dicts with ``movie_id, title, genres, score`` where
    ``score`` is the model's score (for a rating model: its predicted rating; for similarity
    lists: the cosine). Lists are ordered by the model's ranking: ``<user rank, movie rank>`` for a
    factorised model, the pair score (re-ranked candidates) for a model scored by pairs.
    """

    def __init__(self, directory: Path, info: dict, indexes: dict, movies: pd.DataFrame, users: pd.DataFrame,
                 seen: dict[int, np.ndarray], model_dir: Path | None):
        self.directory = directory
        self.info = info
        self.offset = float(info["score_offset"])
        self.rates = bool(info["rates"])
        # the contract's scoring form: False ranks by the model's pair score (recsys/reranking.py)
        self.factorised = bool(info.get("factorised", True))
        self._plans = {noun: RerankPlan.from_json(e) for noun, e in info.get("reranking", {}).items()}
        self._user_enc = None if self.factorised else encoded_columns(users, info["user_features"])
        self._movie_enc = None if self.factorised else encoded_columns(movies, info["movie_features"])
        self._idx = indexes
        self.movies = movies
        self.users = users
        self._ms, self._mr = _matrix(movies["score"]), _matrix(movies["rank"])
        self._msim = _matrix(movies["similarity"])
        self._us, self._ur = _matrix(users["score"]), _matrix(users["rank"])
        # the table columns as Python lists: a list lookup per row is far cheaper than pandas .at
        # (about 30 per top-10 answer)
        self._movie_fields = (movies["movie_id"].astype("int64").tolist(), movies["title"].tolist(),
                              movies["genres"].tolist())
        self._user_fields = (users["user_id"].astype("int64").tolist(), users["gender"].tolist(),
                             [None if pd.isna(a) else int(a) for a in users["age"]], users["occupation"].tolist())
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
    def load(cls, directory: str | Path, model_dir: str | Path | None = None, verify: bool = True,
             prepared: str | Path | None = None) -> "Recommender":
        """Load a serving directory; ``model_dir`` (default: the artifact inside it) serves cold start.

        The model artifact must be the index's (its weights' version and its prepared data's
        manifest sha256 equal ``index.json``'s); with ``prepared``, that prepared directory must be
        the one the index was built from (:meth:`check_prepared`). A mismatch raises ArtifactError."""
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
        indexes = {name: VectorIndex.load(d / entry["file"], entry) for name, entry in info["indexes"].items()}
        movies = pd.read_parquet(d / "movies.parquet")
        users = pd.read_parquet(d / "users.parquet")
        for table, frame, index_name in (("movies", movies, "movies_ip"), ("users", users, "users_ip")):
            want = info["indexes"][index_name]["count"]
            if len(frame) != want:  # row i of the table is FAISS id i: a different catalog gives wrong answers
                raise ArtifactError(f"{d / table}.parquet has {len(frame)} rows; {info_path} and "
                                    f"{index_name}.faiss hold {want}: rebuild the index")
        seen_df = pd.read_parquet(d / "seen.parquet")
        seen = {int(u): g.to_numpy(np.int64) for u, g in seen_df.groupby("user_id")["movie_id"]}
        # the model artifact travels inside the directory (a relative path): a moved index still serves cold start
        md = Path(model_dir) if model_dir else d / info["model"]
        _check_model(md, info, info_path)
        rec = cls(d, info, indexes, movies, users, seen, md)
        if prepared is not None:
            rec.check_prepared(prepared)
        return rec

    @property
    def manifest_sha256(self) -> str:
        """sha256 of the prepared data's ``manifest.json`` that model, vectors and index come from."""
        return self.info["manifest_sha256"]

    def check_prepared(self, prepared_dir: str | Path) -> None:
        """Raise :class:`ArtifactError` naming both sides unless ``prepared_dir`` is the prepared data
        this index was built from (``manifest.json`` sha256): what evaluation on it must check first."""
        from recsys.prepare.job import MANIFEST

        path = Path(prepared_dir) / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{path} not found: run `spark-submit jobs/prepare.py --config ...` first")
        check_same_data(path, sha256_file(path), self.directory / INDEX_JSON, self.manifest_sha256,
                        "evaluate with the prepared data the model was trained on, or rebuild the model and index")

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
        ids, titles, genres = self._movie_fields
        out = [{"movie_id": ids[r], "title": titles[r], "genres": genres[r], "score": float(s)}
               for r, s in zip(rows, scores)]
        return pd.DataFrame(out) if as_frame else out

    @property
    def ranked_by(self) -> str:
        """How movie lists are ranked, in words (index.json's ``ranked_by``)."""
        return self.info.get("ranked_by") or ranked_by(self.info)

    def _user_query(self, user_rows) -> _Query:
        rows = np.asarray(user_rows, np.int64)
        return _Query(self._ur[rows], self._us[rows], self._user_enc, [rows[i:i + 1] for i in range(len(rows))])

    def _movie_query(self, movie_rows) -> _Query:
        rows = np.asarray(movie_rows, np.int64)
        return _Query(self._ms[rows], self._ms[rows], self._movie_enc, [rows[i:i + 1] for i in range(len(rows))])

    def _rank(self, noun: str, query: _Query, k: int, exclude_rows: list) -> tuple[list, list]:
        """Per query, the top ``k`` rows of ``noun`` (``movies``: a list for a user; ``users``: for a
        movie) skipping its ``exclude_rows`` entry (int arrays), and their scores: the one path every
        list (and ``recsys evaluate``) takes.

        A factorised model: the index search (movies by rank vectors, users by score vectors), scored
        ``offset + <score, score>``. A model scored by pairs: candidates by the index's plan (every
        row, or the retriever's top), re-ranked by the model's pair score in blocks, which is the
        score returned (recsys/reranking.py)."""
        index = self._idx["movies_ip" if noun == "movies" else "users_ip"]
        if self.factorised:
            _, rows = index.search_excluding(query.rank, k, exclude_rows)
            vectors = self._ms if noun == "movies" else self._us
            return rows, [self.offset + vectors[r] @ s for r, s in zip(rows, query.score)]
        plan = self._plans[noun]
        # a query whose retriever vector is all zero (a cold-start id) ties every row: scan them all
        blank = ~np.any(np.atleast_2d(query.rank) != 0, axis=1)
        candidates = plan.candidate_rows(exclude_rows, k,
                                         lambda n: index.search_excluding(query.rank, n, exclude_rows)[1], blank)
        widest = max(len(m) for m in query.members)  # a group scores each pair once per member
        return top_k_by_pairs(self._pair_scorer(query, noun), candidates, k, max(1, plan.block_pairs // widest))

    def _pair_scorer(self, query: _Query, noun: str):
        """``(queries [P], rows [P]) -> [P]`` the model's pair score of each query (its members' mean)
        with a row of ``noun``."""
        rows_table = self._movie_enc if noun == "movies" else self._user_enc
        sizes = np.array([len(m) for m in query.members], np.int64)
        flat = np.concatenate(query.members).astype(np.int64)
        starts = np.cumsum(sizes) - sizes

        def score(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
            n = sizes[queries]  # members per pair
            pair = np.repeat(np.arange(len(queries)), n)
            offset_in_query = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            member = flat[np.repeat(starts[queries], n) + offset_in_query]
            mine = {k: v[member] for k, v in query.table.items()}
            other = {k: v[rows[pair]] for k, v in rows_table.items()}
            s = self._model_pairs(mine, other) if noun == "movies" else self._model_pairs(other, mine)
            return (np.bincount(pair, s, len(queries)) / n).astype(np.float32)

        return score

    def _model_pairs(self, users: dict, movies: dict) -> np.ndarray:
        """The model's pair scores [N] for parallel encoded user and movie features (N rows each)."""
        model, _ = self._cold()
        with self._lock:
            return model.pair_scores(users, movies)

    def top_k_rows(self, user_rows: np.ndarray, k: int, exclude_rows: list) -> list[np.ndarray]:
        """Top k movie rows for many known users (rows of ``self.users``), each skipping its own
        ``exclude_rows`` list: what ``recommend`` serves, for a block of users at once."""
        return self._rank("movies", self._user_query(user_rows), k, exclude_rows)[0]

    def pair_scores(self, user_rows: np.ndarray, movie_rows: np.ndarray) -> np.ndarray:
        """The model's score for parallel arrays of user and movie rows: ``offset + <user score, movie
        score>`` for a factorised model, else its pair score (in blocks of ``rerank_block_pairs``)."""
        user_rows, movie_rows = np.asarray(user_rows, np.int64), np.asarray(movie_rows, np.int64)
        if self.factorised:
            return self.offset + np.einsum("ij,ij->i", self._us[user_rows], self._ms[movie_rows])
        out = np.empty(len(user_rows), np.float32)
        step = self._plans["movies"].block_pairs
        for s in range(0, len(user_rows), step):
            u, m = user_rows[s:s + step], movie_rows[s:s + step]
            out[s:s + step] = self._model_pairs({k: v[u] for k, v in self._user_enc.items()},
                                                {k: v[m] for k, v in self._movie_enc.items()})
        return out

    def ranking_scores(self, user_rows: np.ndarray) -> np.ndarray:
        """[len(user_rows), movies] what lists order movies by: ``<user rank, movie rank>`` for a
        factorised model, the pair score otherwise (the caller bounds the users per call)."""
        user_rows = np.asarray(user_rows, np.int64)
        if self.factorised:
            return self._ur[user_rows] @ self._mr.T
        n = len(self._mr)
        return self.pair_scores(np.repeat(user_rows, n), np.tile(np.arange(n), len(user_rows))).reshape(-1, n)

    # ------------------------------------------------------------------ known users and movies

    def recommend(self, user_id, k: int = 10, exclude_seen: bool = True, as_frame: bool = False):
        """Top-k movies for a known user (score: the model's score); seen movies excluded by default."""
        row = self._user(user_id)
        seen_rows = self._seen.get(int(user_id), np.empty(0, np.int64)) if exclude_seen else np.empty(0, np.int64)
        k = self._check_k(k, len(self._ms))
        rows, scores = self._rank("movies", self._user_query([row]), k, [seen_rows])
        return self._movie_rows(rows[0], scores[0], as_frame)

    def recommend_batch(self, user_ids, k: int = 10, exclude_seen: bool = True, as_frame: bool = False):
        """``recommend`` for many users: a list of lists (or one DataFrame with a user_id column)."""
        results = [self.recommend(u, k, exclude_seen) for u in user_ids]
        if as_frame:
            return pd.concat([pd.DataFrame(r).assign(user_id=u) for u, r in zip(user_ids, results)], ignore_index=True)
        return results

    def predict(self, user_id, movie_id) -> float:
        """The model's score for the pair (a rating model's predicted rating)."""
        u, m = self._user(user_id), self._movie(movie_id)
        return float(self.pair_scores(np.array([u]), np.array([m]))[0])

    def similar_movies(self, movie_id, k: int = 10, as_frame: bool = False):
        """The k movies closest to ``movie_id`` by cosine of their similarity vectors."""
        row = self._movie(movie_id)
        k = self._check_k(k, len(self._ms) - 1)
        scores, rows = self._idx["movies_cos"].search(normalize(self._msim[row][None, :]), k + 1)
        keep = (rows[0] >= 0) & (rows[0] != row)
        return self._movie_rows(rows[0][keep][:k], scores[0][keep][:k], as_frame)

    def _user_rows(self, rows, scores, as_frame):
        ids, genders, ages, occupations = self._user_fields
        out = [{"user_id": ids[r], "gender": genders[r], "age": ages[r], "occupation": occupations[r],
                "score": float(s)} for r, s in zip(rows, scores)]
        return pd.DataFrame(out) if as_frame else out

    def _users_for(self, movie: _Query, k: int, as_frame: bool, exclude_rows: np.ndarray | None = None):
        k = self._check_k(k, len(self._us))
        exclude_rows = np.empty(0, np.int64) if exclude_rows is None else exclude_rows
        rows, scores = self._rank("users", movie, k, [exclude_rows])
        return self._user_rows(rows[0], scores[0], as_frame)

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
        """The k users the model scores highest for ``movie_id``, leaving out (by default) the users
        who already rated it in training. ``score`` is the model's unclipped score (a rating model's
        predicted rating: it can fall outside ``info["rating_range"]``)."""
        row = self._movie(movie_id)
        raters = self._raters(row) if exclude_raters else None
        return self._users_for(self._movie_query([row]), k, as_frame, raters)

    def also_liked(self, movie_id, k: int = 10, fans: int = 50, as_frame: bool = False):
        """People who like this movie also like: the movies its top ``fans`` users score highest (score:
        the fans' mean score)."""
        row = self._movie(movie_id)
        k = self._check_k(k, len(self._ms) - 1)
        top = self._rank("users", self._movie_query([row]), min(fans, len(self._us)), [np.empty(0, np.int64)])[0][0]
        group = _Query(self._ur[top].mean(axis=0)[None], self._us[top].mean(axis=0)[None], self._user_enc, [top])
        rows, scores = self._rank("movies", group, k, [np.array([row])])
        return self._movie_rows(rows[0], scores[0], as_frame)

    # ------------------------------------------------------------------ cold start

    def _cold(self):
        """The model artifact and its prepare-time encoder, loaded on first use."""
        with self._lock:
            if self._model is None:
                from recsys.models import load_model

                if self._model_dir is None or not (Path(self._model_dir) / "model.json").is_file():
                    need = "cold start needs" if self.factorised else "cold start and ranking by pair score need"
                    raise ArtifactError(f"{need} the model artifact; {self._model_dir} has none "
                                        "(rebuild the index, or pass model_dir to Recommender.load)")
                model = load_model(self._model_dir)
                if model.version != self.info["model_version"]:
                    raise ArtifactError(f"model in {self._model_dir} is version {model.version}, but the index "
                                        f"was built from {self.info['model_version']}: rebuild the index")
                self._encoder = model.encoder()
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

    def _profile(self, gender, age, occupation, zipcode) -> tuple[dict, dict]:
        """A new user's encoded features (name -> [1, ...]) and vectors ``{"score", "rank"}`` [1, ...]."""
        self._check_profile(gender, age, occupation)
        model, enc = self._cold()
        feats = {k: np.array([v]) for k, v in enc.user(None, gender, age, occupation, zipcode).items()}
        with self._lock:
            return feats, model.user_vectors(feats)

    def profile_vector(self, gender=None, age=None, occupation=None, zipcode=None) -> dict[str, np.ndarray]:
        """A new user's vectors ``{"score", "rank"}`` from demographics alone (the id falls back to OOV)."""
        return {k: v[0] for k, v in self._profile(gender, age, occupation, zipcode)[1].items()}

    def _new_movie(self, title: str, genres, year) -> tuple[dict, dict]:
        """A new movie's encoded features (name -> [1, ...]) and vectors ``{"score", "rank", "similarity"}``."""
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        model, enc = self._cold()
        genre_text = "|".join(genres) if isinstance(genres, (list, tuple)) else (genres or "")
        unknown = [g for g in genre_text.split("|") if g and g not in enc.vocabs["genres"]]
        if unknown:
            raise ValueError(f"unknown genre(s) {unknown}; allowed: {enc.vocabs['genres'].values}")
        feats = {k: np.array([v]) for k, v in enc.movie(None, title, genre_text, year).items()}
        with self._lock:
            return feats, model.movie_vectors(feats)

    def new_movie_vector(self, title: str, genres, year=None) -> dict[str, np.ndarray]:
        """A new movie's vectors ``{"score", "rank", "similarity"}`` from title, genres and year alone."""
        return {k: v[0] for k, v in self._new_movie(title, genres, year)[1].items()}

    def recommend_for_profile(self, gender=None, age=None, occupation=None, zipcode=None, k: int = 10,
                              as_frame: bool = False):
        """Top-k movies for a new user described only by gender, age (years) and occupation."""
        feats, v = self._profile(gender, age, occupation, zipcode)
        k = self._check_k(k, len(self._ms))
        query = _Query(v["rank"], v["score"], feats, [np.zeros(1, np.int64)])
        rows, scores = self._rank("movies", query, k, [np.empty(0, np.int64)])
        return self._movie_rows(rows[0], scores[0], as_frame)

    def similar_to_new_movie(self, title: str, genres, year=None, k: int = 10, as_frame: bool = False):
        """The k known movies closest (cosine) to a new movie given by title and genres."""
        v = self.new_movie_vector(title, genres, year)
        k = self._check_k(k, len(self._ms))
        scores, rows = self._idx["movies_cos"].search(normalize(v["similarity"][None, :]), k)
        keep = rows[0] >= 0
        return self._movie_rows(rows[0][keep], scores[0][keep], as_frame)

    def users_for_new_movie(self, title: str, genres, year=None, k: int = 10, as_frame: bool = False):
        """The k users the model scores highest for a new movie."""
        feats, v = self._new_movie(title, genres, year)
        return self._users_for(_Query(v["score"], v["score"], feats, [np.zeros(1, np.int64)]), k, as_frame)
