"""FAISS indexes over exported vectors, with the search parameter tuned for recall.

Three indexes (DESIGN.md "Exact retrieval"):

* ``movies_ip``: movies as ``[m, b_m]``, inner product; a user query ``[u, 1]`` returns the
  movies with the highest predicted rating (``mu + b_u`` is constant per user).
* ``users_ip``: users as ``[u, b_u]``, inner product; a movie query ``[m, 1]`` returns the
  users predicted to rate it highest.
* ``movies_cos``: movies as ``m / |m|``, inner product = cosine similarity.

Up to ``flat_max`` vectors an exact ``IndexFlatIP`` is used. Above it, the configured
``index_factory`` string (HNSW or IVF) is built and its search parameter (``efSearch`` or
``nprobe``) raised step by step until recall@k against exact search on a sample of real
queries reaches ``target_recall``; the value and the recall reached are recorded.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from recsys.errors import ArtifactError

_EF = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_NPROBE = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)


@dataclass
class BuiltIndex:
    index: object  # faiss.Index
    kind: str  # "flat" or the factory string
    search_param: dict  # {"efSearch": 64} / {"nprobe": 16} / {}
    recall: float  # measured recall@k against exact search (1.0 for flat)
    build_seconds: float


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, query_block: int = 64,
               base_block: int = 1_000_000) -> np.ndarray:
    """Indices of the k largest inner products per query: the numpy reference.

    Blocked over queries and over the base (memory: query_block x base_block floats), with
    argpartition per block and a merge of the running top-k.
    """
    k = min(k, len(base))
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), query_block):
        q = queries[s:s + query_block]
        best_s = np.full((len(q), k), -np.inf, np.float32)
        best_i = np.zeros((len(q), k), np.int64)
        for b in range(0, len(base), base_block):
            scores = q @ base[b:b + base_block].T
            kk = min(k, scores.shape[1])
            part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
            cand_i = np.concatenate([best_i, part + b], axis=1)
            top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        out[s:s + query_block] = np.take_along_axis(best_i, order, 1)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k found in the returned top-k."""
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth))
    return hits / truth.size


def set_search_param(index, name: str, value: int) -> None:
    import faiss

    faiss.ParameterSpace().set_index_parameter(index, name, value)


def build_index(vectors: np.ndarray, queries: np.ndarray, *, flat_max: int, factory: str, target_recall: float,
                k: int, sample: int, seed: int = 0) -> BuiltIndex:
    """An inner-product index over ``vectors`` [N, d] (float32), tuned on ``queries`` [Q, d]."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    started = time.time()
    if len(vectors) <= flat_max:
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return BuiltIndex(index, "flat", {}, 1.0, time.time() - started)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        train = vectors[rng.choice(len(vectors), size=min(len(vectors), 256_000), replace=False)]  # >= 39 x nlist 4096
        _check_trainable(index, factory, len(train), flat_max)
        try:
            index.train(train)
        except RuntimeError as err:  # FAISS's own multi-line message: keep its last line
            reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "",
                            (str(err).strip().splitlines() or ["failed"])[-1])
            raise ArtifactError(f"index.approximate {factory!r} cannot be trained on {len(train):,} vectors "
                                f"({reason}); choose a smaller index or raise index.flat_max to {len(vectors):,} "
                                "for an exact one") from None
    index.add(vectors)
    build_seconds = time.time() - started
    rng = np.random.default_rng(seed + 1)
    q = np.ascontiguousarray(queries[rng.choice(len(queries), size=min(sample, len(queries)), replace=False)],
                             dtype=np.float32)
    kk = min(k, len(vectors))
    exact = faiss.IndexFlatIP(d)  # exact reference for tuning (blocked, multi-threaded)
    exact.add(vectors)
    truth = exact.search(q, kk)[1]
    del exact
    name, grid = ("efSearch", _EF) if "HNSW" in factory else ("nprobe", _NPROBE)
    best = None
    for value in grid:
        if name == "nprobe" and value > getattr(faiss.extract_index_ivf(index), "nlist", value):
            break
        set_search_param(index, name, value)
        _, found = index.search(q, kk)
        rec = recall_at_k(found, truth)
        best = (value, rec)
        if rec >= target_recall:
            break
    set_search_param(index, name, best[0])
    return BuiltIndex(index, factory, {name: best[0]}, best[1], build_seconds)


def _check_trainable(index, factory: str, n: int, flat_max: int) -> None:
    """Stop with one line when ``n`` vectors are too few to train ``index`` (FAISS would throw)."""
    import faiss

    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except (RuntimeError, AttributeError):
        return
    if n < nlist:
        raise ArtifactError(f"index.approximate {factory!r} has {nlist:,} IVF lists but the collection has only {n:,} "
                            f"vectors to train them; use IVF{max(1, n // 39)} or fewer lists, or raise index.flat_max "
                            f"(now {flat_max:,}) to {n:,} for an exact index")


def movie_items(m: np.ndarray, b_m: np.ndarray) -> np.ndarray:
    """``[m, b_m]``: indexed movie vectors for user queries."""
    return np.concatenate([m, b_m[:, None]], axis=1).astype(np.float32)


def user_queries(u: np.ndarray) -> np.ndarray:
    """``[u, 1]``: user queries against ``movie_items``."""
    return np.concatenate([u, np.ones((len(u), 1), np.float32)], axis=1).astype(np.float32)


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
