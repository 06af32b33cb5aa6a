"""Cleaning rules: each row gets the first reason it must be quarantined, or none.

Ratings are cleaned in Spark (they can be hundreds of millions of rows); the users and
movies tables are small dimension tables and are cleaned on the driver.
"""

from __future__ import annotations

import pandas as pd

def clean_ratings(parsed, user_ids, movie_ids, rating_min: float, rating_max: float,
                  min_per_movie: int, min_per_user: int, broadcast_limit: int):
    """Add a ``reason`` column to parsed ratings (null: kept). Header lines are removed.

    Returns ``(rows, repeated_pairs)``: the rows (lazy, but the duplicate check has run) and
    how many (user, movie) pairs occur more than once among the rows otherwise kept.

    Args:
        parsed: DataFrame from :func:`recsys.prepare.reading.read_table` (ratings).
        user_ids: DataFrame(user_id) of valid users, or None when the format has no users file.
        movie_ids: DataFrame(movie_id) of valid movies, or None when there is no movies table.
        broadcast_limit: at most this many repeated (user, movie) pairs are broadcast to
            the duplicate check (about 16 bytes each); more are joined by a shuffle.
    Duplicates of a (user, movie) pair keep the latest rating by timestamp (ties: the
    higher rating, then the raw line text, so the choice is deterministic).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = parsed.filter(F.col("status") != "header").drop("status")
    ok = F.col("reason").isNull()
    df = df.withColumn("reason", F.when(ok & ((F.col("rating") < rating_min) | (F.col("rating") > rating_max)),
                                        F.lit("rating_out_of_scale")).otherwise(F.col("reason")))
    in_scale = df
    if user_ids is not None:
        known = user_ids.select("user_id", F.lit(True).alias("_user_known"))
        df = df.join(F.broadcast(known), "user_id", "left")
        df = df.withColumn("reason", F.when(F.col("reason").isNull() & F.col("_user_known").isNull(),
                                            F.lit("unknown_user")).otherwise(F.col("reason"))).drop("_user_known")
    if movie_ids is not None:
        known_m = movie_ids.select("movie_id", F.lit(True).alias("_movie_known"))
        df = df.join(F.broadcast(known_m), "movie_id", "left")
        df = df.withColumn("reason", F.when(F.col("reason").isNull() & F.col("_movie_known").isNull(),
                                            F.lit("unknown_movie")).otherwise(F.col("reason"))).drop("_movie_known")
    # Duplicates among rows still kept. Most pairs occur once, so find the repeated pairs
    # with a cheap aggregation first and rank (sort) only the rows of those pairs. When
    # they are few (the usual case; none in MovieLens), they are broadcast to the join, so
    # the rows themselves are never shuffled.
    alive = F.col("reason").isNull()
    # Keyed by one 64-bit hash of the pair (a cheaper aggregation than two keys); a rare
    # collision only makes a unique pair "contested", and ranking by the real pair keeps it.
    # Counted before the user/movie checks, which reject every copy of a pair alike.
    pair = F.xxhash64("user_id", "movie_id")
    # Shuffled by the key before counting: almost every key is unique, so a map-side partial
    # count would only build a large hash table that saves nothing (~2x slower).
    repeated = (in_scale.filter(alive).select(pair.alias("_pair")).repartition("_pair")
                .groupBy("_pair").count().filter(F.col("count") > 1)
                .select("_pair", F.lit(True).alias("_repeated")))
    repeated = repeated.cache()  # counted here, joined below: aggregated once
    n_repeated = repeated.count()
    if not n_repeated:
        repeated.unpersist()
    else:
        if n_repeated <= broadcast_limit:
            repeated = F.broadcast(repeated)
        df = df.withColumn("_pair", pair).join(repeated, "_pair", "left").drop("_pair")
        contested = alive & F.col("_repeated").isNotNull()
        w = Window.partitionBy("user_id", "movie_id").orderBy(F.col("timestamp").desc(), F.col("rating").desc(),
                                                              F.col("text"))
        ranked = df.filter(contested).withColumn(
            "reason", F.when(F.row_number().over(w) > 1, F.lit("duplicate")).otherwise(F.col("reason")))
        df = df.filter(~contested).unionByName(ranked).drop("_repeated")
    if min_per_movie > 0:
        counts = df.filter(F.col("reason").isNull()).groupBy("movie_id").agg(F.count("*").alias("_n"))
        df = df.join(counts, "movie_id", "left").withColumn(
            "reason", F.when(F.col("reason").isNull() & (F.col("_n") < min_per_movie),
                             F.lit("movie_below_min_ratings")).otherwise(F.col("reason"))).drop("_n")
    if min_per_user > 0:
        counts = df.filter(F.col("reason").isNull()).groupBy("user_id").agg(F.count("*").alias("_n"))
        df = df.join(counts, "user_id", "left").withColumn(
            "reason", F.when(F.col("reason").isNull() & (F.col("_n") < min_per_user),
                             F.lit("user_below_min_ratings")).otherwise(F.col("reason"))).drop("_n")
    return df, n_repeated


def clean_dimension(rows: pd.DataFrame, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a parsed users/movies table into (kept, rejected); a repeated id keeps its first line.

    ``rows`` has the parsed columns plus status/reason/detail/text/file, in file order.
    """
    rows = rows[rows["status"] != "header"].reset_index(drop=True)
    rejected = rows[rows["status"] == "rejected"].copy()
    good = rows[rows["status"] == "ok"].copy()
    dup = good.duplicated(key, keep="first")
    dups = good[dup].copy()
    dups["reason"], dups["detail"] = "duplicate_id", dups[key].map(lambda v: f"{key}={v} seen before")
    kept = good[~dup].drop(columns=["status", "reason", "detail"]).reset_index(drop=True)
    # a parsed line always has its id; a column with rejected (null) rows arrives as float
    kept[key] = kept[key].astype("int64")
    rejected = pd.concat([rejected, dups], ignore_index=True)
    return kept, rejected
