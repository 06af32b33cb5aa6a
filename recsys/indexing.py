"""The one index interface (:class:`VectorIndex`): build, ``search(queries, k) -> (scores, ids)``,
search with per-query exclusions, save, load; FAISS behind it.

Serving and evaluation both rank through it (recsys/serving.py builds three: movies by their
rank vectors, users by their score vectors, movies by normalised similarity vectors).

Up to ``flat_max`` vectors an exact ``IndexFlatIP`` is used. Above it, the configured
``index_factory`` string (any that FAISS builds: HNSW, IVF, SQ, PQ, ...) is built; when it has a
search parameter (``efSearch`` for HNSW, ``nprobe`` for IVF) that is raised step by step until
recall@k against exact search on a sample of real queries reaches ``target_recall``. The value
and the recall reached are recorded, and a recall below the target is said in one line.
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
    name, grid = _search_parameter(index)
    best = None
    for value in grid:
        set_search_param(index, name, value)
        _, found = index.search(q, kk)
        rec = recall_at_k(found, truth)
        best = (value, rec)
        if rec >= target_recall:
            break
    if name is None:  # nothing to tune (a flat scan of compressed codes: SQ, PQ, ...)
        best = (None, recall_at_k(index.search(q, kk)[1], truth))
    else:
        set_search_param(index, name, best[0])
    if best[1] < target_recall:
        import sys

        print(f"[index] {factory}: recall@{kk} {best[1]:.3f} is below index.target_recall {target_recall:g}"
              + (f" at the largest {name} tried ({best[0]})" if name else " (it has no search parameter to raise)")
              + "; a larger index or a higher index.flat_max gives exact results", file=sys.stderr, flush=True)
    return BuiltIndex(index, factory, {name: best[0]} if name else {}, best[1], build_seconds)


def _search_parameter(index) -> tuple[str | None, tuple[int, ...]]:
    """The search parameter of ``index`` worth tuning and its grid: ``nprobe`` for an IVF index (up
    to its number of lists, whatever its coarse quantizer, HNSW included), ``efSearch`` for HNSW, or
    (None, ()) when it has neither."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        grid = tuple(v for v in _NPROBE if v < ivf.nlist) + (ivf.nlist,)  # every list probed: exact again
        return "nprobe", grid
    try:
        set_search_param(index, "efSearch", _EF[0])
    except RuntimeError:  # FAISS: the index has no such parameter (a flat scan of codes: SQ, PQ, ...)
        return None, ()
    return "efSearch", _EF


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


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class VectorIndex:
    """An inner-product index over ``[N, d]`` float32 vectors; row ``i`` of the base is id ``i``.

    ``kind`` ("flat" or the FAISS factory string), ``search_params`` (the tuned efSearch /
    nprobe) and ``recall`` (measured recall@k against exact search) are recorded by ``save``.
    """

    def __init__(self, index, kind: str, search_params: dict, recall: float, build_seconds: float = 0.0):
        self.index, self.kind, self.search_params = index, kind, dict(search_params)
        self.recall, self.build_seconds = recall, build_seconds

    @classmethod
    def build(cls, vectors: np.ndarray, tuning_queries: np.ndarray, cfg) -> "VectorIndex":
        """Exact up to ``cfg.flat_max`` vectors, else ``cfg.approximate`` tuned on ``tuning_queries``
        to ``cfg.target_recall`` (``cfg``: the config's ``index`` section)."""
        b = build_index(vectors, tuning_queries, flat_max=cfg.flat_max, factory=cfg.approximate,
                        target_recall=cfg.target_recall, k=cfg.recall_k, sample=cfg.recall_sample, seed=cfg.seed)
        return cls(b.index, b.kind, b.search_param, b.recall, b.build_seconds)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], ids [Q, k]) of the k largest inner products; id -1 pads a short answer."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self.index.search(q, min(int(k), self.size))

    def search_excluding(self, queries: np.ndarray, k: int, exclude: list) -> tuple[list, list]:
        """Per query, the top k ids not in ``exclude[i]`` (an int array) and their scores: one
        over-fetched search per block of queries (k + the longest exclusion list)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        longest = max((len(e) for e in exclude), default=0)
        scores, ids = self.search(q, k + longest)
        out_s, out_i = [], []
        for row in range(len(q)):
            keep = (ids[row] >= 0) & ~np.isin(ids[row], exclude[row])
            out_i.append(ids[row][keep][:k]); out_s.append(scores[row][keep][:k])
        return out_s, out_i

    def describe(self) -> dict:
        return {"type": self.kind, "search_params": self.search_params, "recall_at_k": self.recall,
                "dimension": self.dimension, "count": self.size, "build_seconds": round(self.build_seconds, 3)}

    def save(self, path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path, entry: dict) -> "VectorIndex":
        """Read ``path``; ``entry`` is its record (``describe()``) from index.json: the search
        parameter is set again and the shape checked against it."""
        import faiss

        from recsys.errors import ArtifactError

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise ArtifactError(f"{path}: FAISS cannot read it ({str(err).splitlines()[0]})") from None
        if index.ntotal != entry["count"] or index.d != entry["dimension"]:
            raise ArtifactError(f"{path} holds {index.ntotal} x {index.d} vectors; index.json says "
                                f"{entry['count']} x {entry.get('vectors', entry['dimension'])}")
        for name, value in entry["search_params"].items():
            set_search_param(index, name, value)
        return cls(index, entry["type"], entry["search_params"], entry["recall_at_k"], entry.get("build_seconds", 0.0))
