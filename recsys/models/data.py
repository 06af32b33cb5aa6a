"""Constants some models derive from the prepared training split (never validation or test)."""

from __future__ import annotations

from pathlib import Path


def training_ratings(prepared: Path, columns: list[str]) -> dict:
    """Column name -> numpy array of the prepared ``ratings_train`` table (the training split
    alone: validation and test ratings never reach a model through it)."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(prepared) / "ratings_train", columns=columns)
    return {name: table.column(name).to_numpy() for name in columns}


def movie_log_sampling_probability(prepared: Path, features: list[dict], movie_idx=None):
    """log q_m [movie vocab]: the share of training examples that are movie m (the rate at which
    it appears as an in-batch negative), from the training movie ids ``movie_idx`` (read from the
    prepared ``ratings_train`` table when not given)."""
    import numpy as np

    vocab = next(f["vocab_size"] for f in features if f["name"] == "movie_id")
    ids = training_ratings(prepared, ["movie_idx"])["movie_idx"] if movie_idx is None else movie_idx
    counts = np.bincount(ids, minlength=vocab).astype(np.float64)
    return np.log(np.maximum(counts, 0.5) / max(1.0, counts.sum()))


def training_user_history(prepared: Path, features: list[dict], length: int):
    """The [user vocab, length] table of each user's training movies (``user_history_table``),
    from the prepared ``ratings_train`` table: validation and test ratings never enter it."""
    from recsys.models.rating_network import user_history_table

    vocab = next(f["vocab_size"] for f in features if f["name"] == "user_id")
    t = training_ratings(prepared, ["user_idx", "movie_idx", "timestamp"])
    return user_history_table(t["user_idx"], t["movie_idx"], t["timestamp"], vocab, length)
