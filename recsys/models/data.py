"""Constants some models derive from the prepared training split (never validation or test)."""

from __future__ import annotations

from pathlib import Path


def training_ratings(prepared: Path, columns: list[str]) -> dict:
    """Column name -> numpy array of the prepared ``ratings_train`` table (the training split
    alone: validation and test ratings never reach a model through it)."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(prepared) / "ratings_train", columns=columns)
    return {name: table.column(name).to_numpy() for name in columns}


def latest_first(keys, timestamp, length: int):
    """(order, position, keep) for rows grouped by ``keys``, latest ``timestamp`` first: ``order``
    sorts the rows so; ``position`` [N] is each sorted row's place in its group; ``keep`` [N] is
    ``position < length``. Fills a [key, length] table: ``table[keys[order][keep], position[keep]]``."""
    import numpy as np

    keys = np.asarray(keys)
    order = np.lexsort((-np.asarray(timestamp), keys))
    grouped = keys[order]
    starts = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
    position = np.arange(len(grouped)) - np.repeat(starts, np.diff(np.r_[starts, len(grouped)]))
    return order, position, position < length


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


def training_movie_raters(prepared: Path, features: list[dict], length: int):
    """The item autoencoder's [movie vocab, length] rater and rating tables (``movie_raters_table``),
    from the prepared ``ratings_train`` table: validation and test ratings never enter them."""
    from recsys.models.item_autoencoder import movie_raters_table

    vocab = next(f["vocab_size"] for f in features if f["name"] == "movie_id")
    t = training_ratings(prepared, ["user_idx", "movie_idx", "rating", "timestamp"])
    return movie_raters_table(t["user_idx"], t["movie_idx"], t["rating"], t["timestamp"], vocab, length)
