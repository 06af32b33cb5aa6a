"""Constants some models derive from the prepared training split (never validation or test)."""

from __future__ import annotations

from pathlib import Path


def movie_log_sampling_probability(prepared: Path, features: list[dict]):
    """log q_m [movie vocab]: the share of training examples that are movie m (the rate at which
    it appears as an in-batch negative), from the prepared ``ratings_train`` table."""
    import numpy as np
    import pyarrow.parquet as pq

    vocab = next(f["vocab_size"] for f in features if f["name"] == "movie_id")
    ids = pq.read_table(Path(prepared) / "ratings_train", columns=["movie_idx"]).column("movie_idx").to_numpy()
    counts = np.bincount(ids, minlength=vocab).astype(np.float64)
    return np.log(np.maximum(counts, 0.5) / max(1.0, counts.sum()))


def training_user_history(prepared: Path, features: list[dict], length: int):
    """The [user vocab, length] table of each user's training movies (``user_history_table``),
    from the prepared ``ratings_train`` table: validation and test ratings never enter it."""
    import pyarrow.parquet as pq

    from recsys.models.rating_network import user_history_table

    vocab = next(f["vocab_size"] for f in features if f["name"] == "user_id")
    t = pq.read_table(Path(prepared) / "ratings_train", columns=["user_idx", "movie_idx", "timestamp"])
    return user_history_table(t.column("user_idx").to_numpy(), t.column("movie_idx").to_numpy(),
                              t.column("timestamp").to_numpy(), vocab, length)
