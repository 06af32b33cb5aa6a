"""Ranking by a pair score: how a model that is not factorised is served, evaluated and validated.

A model scored by pairs (``RecModel.factorised = False``, e.g. NeuMF) has no inner-product form,
so no index can serve its lists exactly. They are made by re-ranking candidates (a
:class:`RerankPlan`, chosen from the ``index`` config section and the collection's size):

* **full scan**: when the collection ranked (the movie catalog, or the users for "who will like
  this movie") has at most ``index.rerank_full_scan_max`` rows, every row that is not excluded
  (a user's seen movies) is a candidate: the list is exact;
* **re-ranked**: above it, the candidates are the top ``max(index.rerank_candidates, k)`` rows of
  the retriever (the inner-product index over the model's ``rank`` vectors), excluded rows
  skipped: the list is the best by pair score among them.

Candidates are scored by the model's pair score in blocks of at most ``index.rerank_block_pairs``
(query, row) pairs, so memory is bounded by a block whatever the catalog's size; each list is
ordered by the pair score, which is the score returned with it. index.json records the plan
and the evaluation report states it. Serving (``recsys.serving.Recommender``), evaluation (which
ranks through that Recommender) and training's validation NDCG@10 all rank through
:func:`top_k_by_pairs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

FULL_SCAN, RERANK = "full_scan", "rerank"


@dataclass(frozen=True)
class RerankPlan:
    """How one collection is ranked by pair score.

    Args:
        method: ``full_scan`` or ``rerank``.
        collection: rows in the collection ranked (movies or users).
        candidates: ``rerank``: rows taken from the retriever per query (at least k); ``full_scan``:
            the collection.
        block_pairs: (query, row) pairs scored per call of the model (bounds memory).
        noun: what the rows are (``movies`` or ``users``), for messages.
    """

    method: str
    collection: int
    candidates: int
    block_pairs: int
    noun: str = "movies"

    @classmethod
    def choose(cls, collection: int, index_cfg, noun: str = "movies") -> "RerankPlan":
        """Full scan up to ``index_cfg.rerank_full_scan_max`` rows, else the retriever's top
        ``index_cfg.rerank_candidates`` (``index_cfg``: the config's ``index`` section)."""
        if collection <= index_cfg.rerank_full_scan_max:
            return cls(FULL_SCAN, collection, collection, index_cfg.rerank_block_pairs, noun)
        return cls(RERANK, collection, min(collection, index_cfg.rerank_candidates), index_cfg.rerank_block_pairs,
                   noun)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, entry: dict) -> "RerankPlan":
        return cls(**entry)

    def describe(self, retriever: str = "the retriever index") -> str:
        """One line: ``full scan of 1,682 movies`` or ``re-ranked top 200 of 62,423 movies from ...``."""
        if self.method == FULL_SCAN:
            return f"pair score, full scan of {self.collection:,} {self.noun}"
        return f"pair score, re-ranked top {self.candidates:,} of {self.collection:,} {self.noun} from {retriever}"

    def candidate_rows(self, exclude: list[np.ndarray], k: int, retrieve: Callable[[int], list[np.ndarray]],
                       scan: np.ndarray | None = None) -> list[np.ndarray]:
        """Per query, the candidate rows (int64), none of ``exclude[i]``.

        ``retrieve(n)``: per query, the retriever's top ``n`` rows with the exclusions already
        skipped (called only by a ``rerank`` plan, with ``n = max(candidates, k)``). ``scan`` [Q]
        bool: queries the retriever cannot rank (an all-zero retriever vector, as a cold-start id
        gets, ties every row), which get every row even under a ``rerank`` plan."""
        full = np.ones(len(exclude), bool) if self.method != RERANK else (
            np.zeros(len(exclude), bool) if scan is None else np.asarray(scan, bool))
        retrieved = retrieve(min(self.collection, max(self.candidates, k))) if not full.all() else None
        out = []
        for i, ex in enumerate(exclude):
            if not full[i]:
                out.append(np.asarray(retrieved[i], np.int64))
                continue
            keep = np.ones(self.collection, bool)
            keep[np.asarray(ex, np.int64)] = False
            out.append(np.flatnonzero(keep))
        return out


def top_k_by_pairs(score_pairs: Callable[[np.ndarray, np.ndarray], np.ndarray], candidates: list[np.ndarray],
                   k: int, block_pairs: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query ``i``, the (at most) ``k`` rows of ``candidates[i]`` with the highest pair score,
    best first (ties: the earlier candidate first), and their scores.

    Args:
        score_pairs: ``(queries [P] int64, rows [P] int64) -> [P] float32``, the pair score of query
            ``queries[j]`` with row ``rows[j]``; called with at most ``block_pairs`` pairs.
        candidates: per query, candidate rows (int64).
        block_pairs: pairs per call (memory: a block's features and activations).
    Returns: (rows, scores): per query an int64 [min(k, candidates)] and a float32 array.
    """
    sizes = np.array([len(c) for c in candidates], np.int64)
    queries = np.repeat(np.arange(len(candidates), dtype=np.int64), sizes)
    rows = np.concatenate(candidates).astype(np.int64) if len(candidates) else np.empty(0, np.int64)
    scores = np.empty(len(rows), np.float32)
    step = max(1, int(block_pairs))
    for s in range(0, len(rows), step):
        scores[s:s + step] = score_pairs(queries[s:s + step], rows[s:s + step])
    out_rows, out_scores = [], []
    for start, n in zip(np.r_[0, np.cumsum(sizes)[:-1]] if len(sizes) else [], sizes):
        sc, rw = scores[start:start + n], rows[start:start + n]
        kk = min(k, int(n))
        if kk < n:  # partition first: the sort is over k candidates, not the catalog
            part = np.argpartition(-sc, kk - 1)[:kk]
            part = part[np.lexsort((part, -sc[part]))]  # by score, then candidate position
        else:
            part = np.argsort(-sc, kind="stable")
        out_rows.append(rw[part])
        out_scores.append(sc[part])
    return out_rows, out_scores
