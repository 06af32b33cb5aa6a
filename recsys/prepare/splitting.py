"""Train/test splits and cold-start holdouts, deterministic for a given seed.

* ``random``: each (user, movie) pair goes to test when a seeded 64-bit hash of the pair
  falls below ``test_fraction`` (independent of partitioning and of row order).
* ``user_stratified``: within each user, pairs are ordered by that hash and the first
  ``round(test_fraction * n_user)`` go to test, so every user keeps the same share.
* ``temporal``: within each user, the latest ``round(test_fraction * n_user)`` ratings by
  timestamp go to test (ties broken by movie id), as in the seed work, and the latest
  ``round(validation_fraction * rest)`` of the rest to ``valid``: train, then valid, then test in time.
Otherwise ``validation_fraction`` of the training pairs (by another seeded hash) become ``valid``.
Per-user counts are rounded half up (10 ratings at 0.25 give 3 test ratings).
Cold holdouts come first: an exact ``round(fraction * n)`` of users (then of movies), drawn
with a seeded RNG from the sorted ids, lose all their ratings to ``cold_users`` /
``cold_movies`` test sets.
"""

from __future__ import annotations

import random
from typing import Iterable

SPLITS = ("train", "valid", "test", "cold_users", "cold_movies")
QUARANTINED = "quarantined"  # the split value of the rows cleaning rejected
_HASH_SCALE = 1_000_000_000


def choose_cold(ids: Iterable[int], fraction: float, seed: int, salt: str) -> list[int]:
    """An exact ``round(fraction * n)`` sample of ``ids`` (sorted), reproducible per seed."""
    ids = sorted(set(int(i) for i in ids))
    count = int(round(fraction * len(ids)))
    return sorted(random.Random(f"{seed}:{salt}").sample(ids, count)) if count else []


def pair_hash(seed: int, salt: str):
    """Spark column: a uniform value in [0, 1) from (seed, salt, user_id, movie_id)."""
    from pyspark.sql import functions as F

    h = F.xxhash64(F.lit(seed), F.lit(salt), F.col("user_id"), F.col("movie_id"))
    return F.pmod(h, F.lit(_HASH_SCALE)) / F.lit(float(_HASH_SCALE))


def assign_splits(spark, rows, strategy: str, test_fraction: float, seed: int,
                  cold_users: list[int], cold_movies: list[int], validation_fraction: float = 0.0):
    """Add a ``split`` column to cleaned ratings: one of :data:`SPLITS` for the kept rows (null
    ``reason``), :data:`QUARANTINED` for the rejected ones, which take no part in the split."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = rows
    kept = F.col("reason").isNull()
    if cold_users:
        cu = spark.createDataFrame([(int(u), True) for u in cold_users], "user_id long, _cold_user boolean")
        df = df.join(F.broadcast(cu), "user_id", "left")
    else:
        df = df.withColumn("_cold_user", F.lit(None).cast("boolean"))
    if cold_movies:
        cm = spark.createDataFrame([(int(m), True) for m in cold_movies], "movie_id long, _cold_movie boolean")
        df = df.join(F.broadcast(cm), "movie_id", "left")
    else:
        df = df.withColumn("_cold_movie", F.lit(None).cast("boolean"))

    u = pair_hash(seed, "split")
    if strategy == "random":
        regular = F.when(u < test_fraction, "test").otherwise("train")
    elif strategy in ("user_stratified", "temporal"):
        normal = kept & F.col("_cold_user").isNull() & F.col("_cold_movie").isNull()
        order = [u] if strategy == "user_stratified" else [F.col("timestamp").desc(), F.col("movie_id").desc()]
        w = Window.partitionBy("user_id", normal.alias("_normal")).orderBy(*order)
        wn = Window.partitionBy("user_id", normal.alias("_normal"))
        df = df.withColumn("_rank", F.row_number().over(w)).withColumn("_n", F.count("*").over(wn))
        n_test = F.round(F.col("_n") * test_fraction)
        regular = F.when(F.col("_rank") <= n_test, "test")
        if strategy == "temporal":  # validation: the latest share of what remains, so train < valid < test in time
            regular = regular.when(F.col("_rank") <= n_test + F.round((F.col("_n") - n_test) * validation_fraction),
                                   "valid")
        regular = regular.otherwise("train")
    else:  # pragma: no cover - the config validates the choice
        raise ValueError(strategy)
    if strategy != "temporal":  # validation: a seeded-hash share of what would otherwise be training data
        regular = F.when((regular == "train") & (pair_hash(seed, "valid") < validation_fraction), "valid").otherwise(regular)
    df = df.withColumn("split", F.when(~kept, QUARANTINED).when(F.col("_cold_user").isNotNull(), "cold_users")
                       .when(F.col("_cold_movie").isNotNull(), "cold_movies").otherwise(regular))
    return df.drop("_cold_user", "_cold_movie", "_rank", "_n")
