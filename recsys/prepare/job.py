"""One prepare run: raw MovieLens -> ``prepared/`` (TFRecords, Parquet, manifest.json).

Output layout (all inside ``paths.prepared``, written to a temporary sibling directory and
renamed into place only when complete, so a failed run leaves the previous output intact)::

    manifest.json            feature spec, vocab sizes, split, row accounting, shards + sha256
    vocabularies.json        every vocabulary's values (id = position + 2; 0 pad, 1 OOV)
    train/part-00000.tfrecord ...   block-encoded tf.train.Example shards (also test/, cold_*/)
    users.parquet, movies.parquet   raw and encoded columns
    ratings_train/, ratings_test/, ratings_cold_users/, ratings_cold_movies/   Parquet
    quarantine/ratings/ (Parquet), quarantine/users.parquet, quarantine/movies.parquet
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from recsys import __version__
from recsys.config import Config
from recsys.datasets.formats import FORMATS, TABLES, detect_format, resolve_file
from recsys.checksums import sha256_file  # noqa: F401  (re-exported)
from recsys.errors import ArtifactError, DataError
from recsys.outputs import replacing
from recsys.features import ENC, OOV_ID, FeatureEncoder, build_vocabularies
from recsys.prepare import cleaning, reading, splitting, tfrecords
from recsys.prepare.feature_table import FeatureTable

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class _Log:
    def __init__(self):
        self.started = time.time()
        self.last = self.started

    def elapsed(self) -> float:
        return time.time() - self.started

    def __call__(self, stage: str, msg: str) -> None:
        now = time.time()
        print(f"[prepare] {stage:9s} {msg} ({now - self.last:.1f}s, total {now - self.started:.1f}s)",
              file=sys.stderr, flush=True)
        self.last = now


def _input_files(cfg: Config) -> tuple[str, dict[str, Path | None]]:
    raw = Path(cfg.paths.raw)
    if cfg.data.format == "tables":
        from recsys.datasets.tables import table_files

        if not raw.is_dir():
            raise DataError(f"raw data directory not found: {raw} (paths.raw; data.tables files are relative to it)")
        tables = table_files(raw, cfg.data.tables)  # headers checked against the mapping here
        return "tables", {t: (tf.path if tf else None) for t, tf in tables.items()}
    spec = detect_format(raw, cfg.data.format)
    files: dict[str, Path | None] = {}
    for table in TABLES:
        pattern = spec.files[table]
        files[table] = resolve_file(raw, pattern) if pattern else None
        if pattern and files[table] is None:
            raise DataError(f"{raw}: {table} file {pattern!r} not found ({spec.description})")
    return spec.name, files


def run_prepare(cfg: Config, spark=None) -> dict:
    """Run the whole prepare job for ``cfg``; return the manifest written.

    Raises:
        DataError: missing/empty/unreadable inputs; ArtifactError: row accounting mismatch.
    """
    from recsys.spark import get_spark

    log = _Log()
    fmt, files = _input_files(cfg)
    for table, path in files.items():
        if path is not None and path.is_dir():
            raise DataError(f"{path}: expected the {table} file, found a directory")
    dest = Path(cfg.paths.prepared)
    # the output is locked and checked before the JVM starts: a second run or a foreign folder stops at once
    with replacing(dest, "prepare", "paths.prepared", signature=(MANIFEST,)) as tmp:
        if spark is None:
            spark = get_spark("recsys-prepare", cfg.prepare.master, cfg.prepare.driver_memory,
                              cfg.prepare.shuffle_partitions)
        log("start", f"format {fmt}, master {spark.sparkContext.master}, input {cfg.paths.raw}")
        manifest = _prepare_into(spark, cfg, fmt, files, tmp, log)
    rows = manifest["accounting"]["ratings"]["rows_read"]
    log("done", f"wrote {dest} ({manifest['splits']['train']['examples']:,} train examples; "
                f"{rows / max(log.elapsed(), 1e-9):,.0f} rating lines/s overall)")
    return manifest


def _prepare_into(spark, cfg: Config, fmt: str, files: dict[str, Path | None], out: Path, log: _Log) -> dict:
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    pc = cfg.prepare
    settings = dataclasses.asdict(pc.features)

    # ---------------------------------------------------------------- read
    if fmt == "tables":
        from recsys.datasets.tables import DESCRIPTION, read_dimension, table_files

        description = DESCRIPTION
        mapped = table_files(cfg.paths.raw, cfg.data.tables)
        parsed = {"ratings": reading.read_tables_ratings(spark, mapped["ratings"])}
        dims = {t: read_dimension(tf) for t, tf in mapped.items() if t != "ratings" and tf is not None}
    else:
        spec = FORMATS[fmt]
        description = spec.description
        parsed = {t: reading.read_table(spark, spec, t, p) for t, p in files.items() if p is not None}
        dims = {}
    # Stage to Parquet between the heavy steps instead of caching: each step then reads only
    # the columns it needs, and nothing (Python parsing included) is recomputed when memory
    # runs short at scale. The stage directory is removed before the output is renamed.
    stage = out / "_stage"
    # counts are observed while each stage is written: no extra pass over the data
    lines_seen = Observation("lines")
    (parsed["ratings"].observe(lines_seen, F.count(F.lit(1)).alias("lines"),
                               F.count(F.when(F.col("status") == "header", 1)).alias("headers"))
     .write.parquet(str(stage / "parsed")))
    header_lines = lines_seen.get["headers"]
    rating_lines = lines_seen.get["lines"] - header_lines
    ratings_parsed = spark.read.parquet(str(stage / "parsed"))
    if rating_lines == 0:
        raise DataError(f"{files['ratings']}: the ratings file has no data lines")
    dims.update({t: parsed[t].toPandas() for t in ("users", "movies") if t in parsed})
    log("read", f"{rating_lines:,} rating lines, " + ", ".join(f"{len(v):,} {k} lines" for k, v in dims.items()))

    # ---------------------------------------------------------------- clean
    if "movies" in dims:
        movies, movies_rej = cleaning.clean_dimension(dims["movies"], "movie_id")
        movie_ids = spark.createDataFrame(movies[["movie_id"]])
    else:
        movies_rej = None
        movie_ids = None
    if "users" in dims:
        users, users_rej = cleaning.clean_dimension(dims["users"], "user_id")
        user_ids = spark.createDataFrame(users[["user_id"]])
    else:
        users_rej = None
        user_ids = None
    cleaned, repeated_pairs = cleaning.clean_ratings(
        ratings_parsed, user_ids, movie_ids, cfg.data.rating_min, cfg.data.rating_max, pc.min_ratings_per_movie,
        pc.min_ratings_per_user, pc.duplicate_broadcast_limit)
    log("dedup", f"{repeated_pairs:,} (user, movie) pairs rated more than once")
    kept = cleaned.filter(F.col("reason").isNull())

    # ---------------------------------------------------------------- split
    # Cleaning and splitting are one pass, written once, one directory per split plus one
    # for the quarantined rows: each later step reads only the rows and columns it needs.
    sc = pc.split
    # the rated ids are needed only to draw cold-start holdouts (one more pass over the input)
    rated_users = _distinct(kept, "user_id") if sc.cold_user_fraction > 0 else []
    rated_movies = _distinct(kept, "movie_id") if sc.cold_movie_fraction > 0 else []
    cold_users = splitting.choose_cold(rated_users, sc.cold_user_fraction, sc.seed, "users")
    cold_movies = splitting.choose_cold(rated_movies, sc.cold_movie_fraction, sc.seed, "movies")
    split_df = splitting.assign_splits(spark, cleaned, sc.strategy, sc.test_fraction, sc.seed, cold_users, cold_movies,
                                       sc.validation_fraction)
    quarantined = F.col("split") == splitting.QUARANTINED
    split_df = split_df.withColumn("text", F.when(quarantined, F.col("text")))  # kept rows need no raw line
    # a writer per split value instead of sorting every row by split first
    spark.conf.set("spark.sql.maxConcurrentOutputFileWriters", str(len(splitting.SPLITS) + 1))
    # counts are observed while the pass is written: no extra pass over the data
    split_seen = Observation("split")
    train_rating = F.when(F.col("split") == "train", F.col("rating"))
    (split_df.observe(split_seen, F.count(F.when(quarantined, 1)).alias(splitting.QUARANTINED),
                      *[F.count(F.when(F.col("split") == name, 1)).alias(name) for name in splitting.SPLITS],
                      F.avg(train_rating).alias("mean"), F.stddev_pop(train_rating).alias("std"))
     .write.partitionBy("split").parquet(str(stage / "split")))
    stats = split_seen.get
    n_rejected = stats[splitting.QUARANTINED]
    rejected = (spark.read.parquet(str(stage / "split" / f"split={splitting.QUARANTINED}")) if n_rejected
                else spark.createDataFrame([], reading.STATUS_FIELDS))
    log("clean", f"{rating_lines - n_rejected:,} ratings kept, {n_rejected:,} quarantined")
    if n_rejected == rating_lines:
        raise DataError(_nothing_kept(files["ratings"], rejected, description))
    split_counts = {name: stats[name] for name in splitting.SPLITS if stats[name]}
    if not stats["train"]:
        raise DataError(f"{files['ratings']}: no ratings left for training after cleaning and splitting")
    train = spark.read.parquet(str(stage / "split" / "split=train"))
    kept_splits = [str(stage / "split" / f"split={name}") for name in split_counts]
    if user_ids is None:  # ml-latest, tables without users: the users are the rated ids, demographics unknown
        ids = sorted(_distinct(spark.read.parquet(*kept_splits), "user_id"))
        users = pd.DataFrame({"user_id": ids, "gender": None, "age": None, "occupation": None, "zip": None,
                              "file": None, "text": None})
    if movie_ids is None:  # tables without movies: the movies are the rated ids, with no title, genres or year
        ids = sorted(_distinct(spark.read.parquet(*kept_splits), "movie_id"))
        movies = pd.DataFrame({"movie_id": pd.Series(ids, dtype="int64"), "title": "", "genres": "",
                               "year": pd.Series([None] * len(ids), dtype="Int32"), "file": None, "text": None})
    log("split", f"{sc.strategy}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(split_counts.items())))

    # ---------------------------------------------------------------- vocabularies and encoding
    train_users = set(_distinct(train, "user_id"))
    train_movies = set(_distinct(train, "movie_id"))
    vocabs = build_vocabularies(_records(users), _records(movies), settings,
                                train_users, train_movies)
    encoder = FeatureEncoder.from_settings(vocabs, settings)
    feature_spec = encoder.spec()
    users_enc = _encode_users(users, encoder)
    movies_enc = _encode_movies(movies, encoder)
    # every id the model trains on has its own embedding row: none may encode to OOV
    for table, frame, col, ids in (("users", users_enc, "user_id", train_users), ("movies", movies_enc, "movie_id", train_movies)):
        lost = frame[frame[col].isin(ids) & (frame[ENC + col] == OOV_ID)]
        if len(lost):
            raise DataError(f"internal error: {len(lost):,} {table} with training ratings encode to the OOV id "
                            f"(first: {lost[col].iloc[0]!r}); please report this")
    vocabs.save(out / "vocabularies.json")
    log("encode", ", ".join(f"{k} {v.size:,}" for k, v in vocabs.vocabs.items()))

    # ---------------------------------------------------------------- write shards
    # Each split is dealt round-robin into its shards (counts within a few examples), put in
    # a seeded-hash order within each shard, and written by one Python task per shard: the
    # TFRecords and the Parquet copy in the same pass, features looked up there with numpy.
    # The input is a Parquet scan in file order, so the round-robin deal is reproducible (also
    # on a retried task) without Spark's extra local sort before repartition.
    spark.conf.set("spark.sql.execution.sortBeforeRepartition", "false")
    spec_json = feature_spec.to_json()
    feats = spec_json["features"]
    users_table = FeatureTable.from_frame("users", users_enc, "user_id",
                                          [f["name"] for f in feats if f["tower"] == "user"])
    movies_table = FeatureTable.from_frame("movies", movies_enc, "movie_id",
                                           [f["name"] for f in feats if f["tower"] == "movie"])
    shard_counts = {"train": pc.shards.train, "valid": pc.shards.test, "test": pc.shards.test, "cold_users": pc.shards.cold,
                    "cold_movies": pc.shards.cold}
    splits_out: dict[str, dict] = {}
    for split in splitting.SPLITS:
        if split not in split_counts:
            continue
        part = (spark.read.parquet(str(stage / "split" / f"split={split}"))
                .select("user_id", "movie_id", "rating", "timestamp")
                .withColumn("_order", F.xxhash64(F.lit(sc.seed), F.lit("order"), "user_id", "movie_id")))
        writer = tfrecords.shard_writer(split, str(out), feats, pc.examples_per_record, users_table, movies_table)
        rows = (part.repartition(shard_counts[split]).sortWithinPartitions("_order").drop("_order")
                .mapInArrow(writer, tfrecords.SHARD_SCHEMA).collect())
        shards = sorted((r.asDict() for r in rows), key=lambda r: r["shard"])
        for s in shards:
            del s["split"]
        splits_out[split] = {"examples": sum(s["examples"] for s in shards),
                             "records": sum(s["records"] for s in shards), "shards": shards}
        if splits_out[split]["examples"] != split_counts[split]:
            raise ArtifactError(f"{split}: wrote {splits_out[split]['examples']:,} examples, the split has "
                                f"{split_counts[split]:,} ratings")
        log("write", f"{split}: {splits_out[split]['examples']:,} examples in {len(shards)} shards "
                     f"({min(s['examples'] for s in shards):,}..{max(s['examples'] for s in shards):,} per shard)")

    users_enc.drop(columns=["file", "text"], errors="ignore").to_parquet(out / "users.parquet", index=False)
    movies_enc.drop(columns=["file", "text"], errors="ignore").to_parquet(out / "movies.parquet", index=False)

    # ---------------------------------------------------------------- quarantine + accounting
    qdir = out / "quarantine"
    qdir.mkdir()
    rejected.select("file", "reason", "detail", "text").write.parquet(str(qdir / "ratings"))
    rej_counts = {r["reason"]: r["count"]
                  for r in spark.read.parquet(str(qdir / "ratings")).groupBy("reason").count().collect()}
    kept_written = sum(s["examples"] for s in splits_out.values())
    accounting = {}
    accounting["ratings"] = _account(str(files["ratings"]), rating_lines,
                                     header_lines, kept_written, rej_counts)
    for table, kept_df, rej_df in (("users", users, users_rej), ("movies", movies, movies_rej)):
        if rej_df is None:
            continue
        rej_df[["file", "reason", "detail", "text"]].astype(str).to_parquet(qdir / f"{table}.parquet", index=False)
        lines = dims[table]
        accounting[table] = _account(str(files[table]), int((lines["status"] != "header").sum()),
                                     int((lines["status"] == "header").sum()), len(kept_df),
                                     rej_df["reason"].value_counts().to_dict())
    for table, acc in accounting.items():
        if not acc["balanced"]:
            raise ArtifactError(f"row accounting failed for {acc['file']}: read {acc['rows_read']:,} != kept "
                                f"{acc['rows_kept']:,} + rejected {sum(acc['rejected'].values()):,}")
    log("account", "; ".join(f"{t}: read {a['rows_read']:,} = kept {a['rows_kept']:,} + rejected "
                             f"{sum(a['rejected'].values()):,}" for t, a in accounting.items()))

    # ---------------------------------------------------------------- manifest
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "recsys_version": __version__,
        "source": {"format": fmt, "raw_dir": str(cfg.paths.raw),
                   "files": {t: {"path": str(p), "sha256": sha256_file(p) if p.is_file() else None}
                             for t, p in files.items() if p}},
        "config": {"data": dataclasses.asdict(cfg.data), "prepare": dataclasses.asdict(pc)},
        "features": spec_json,
        "feature_settings": settings,
        "vocabularies": {"file": "vocabularies.json", "sha256": sha256_file(out / "vocabularies.json"),
                         "sizes": {k: v.size for k, v in vocabs.vocabs.items()}},
        "examples_per_record": pc.examples_per_record,
        "split": {"strategy": sc.strategy, "test_fraction": sc.test_fraction, "seed": sc.seed,
                  "validation_fraction": sc.validation_fraction,
                  "cold_users": len(cold_users), "cold_movies": len(cold_movies)},
        "splits": splits_out,
        "stats": {"train_rating_mean": stats["mean"], "train_rating_std": stats["std"],
                  "train_ratings": stats["train"], "train_users": len(train_users), "train_movies": len(train_movies),
                  "rating_min": cfg.data.rating_min, "rating_max": cfg.data.rating_max},
        "accounting": accounting,
        "tables": {name: {"path": name, "sha256": sha256_file(out / name)} for name in ("users.parquet", "movies.parquet")},
    }
    shutil.rmtree(stage, ignore_errors=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def _distinct(df, column: str) -> list[int]:
    """The distinct values of an id column, collected to the driver (ids of users or movies)."""
    return [r[0] for r in df.select(column).distinct().collect()]


def _nothing_kept(path: Path, rejected, description: str) -> str:
    """The message when cleaning rejected every rating line: reasons, counts and a sample line."""
    reasons = {r["reason"]: r["count"] for r in rejected.groupBy("reason").count().collect()}
    sample = rejected.select("text").first() if "text" in rejected.columns else None
    where = f"; for example {sample['text']!r}" if sample else ""
    listed = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return (f"{path}: every rating line was quarantined ({listed}){where}. Is this {description}? "
            "Check data.format and the file itself")


def _account(file: str, read: int, headers: int, kept: int, rejected: dict[str, int]) -> dict:
    rejected = {k: int(v) for k, v in sorted(rejected.items())}
    return {"file": file, "rows_read": int(read), "header_lines": int(headers), "rows_kept": int(kept),
            "rejected": rejected, "balanced": int(read) == int(kept) + sum(rejected.values())}


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None (not NaN / NA) for missing values."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _encode_users(users: pd.DataFrame, encoder: FeatureEncoder) -> pd.DataFrame:
    rows = [encoder.user(r["user_id"], r["gender"], r["age"], r["occupation"], r["zip"]) for r in _records(users)]
    enc = pd.DataFrame(rows, index=users.index).add_prefix(ENC)
    return pd.concat([users, enc], axis=1)


def _encode_movies(movies: pd.DataFrame, encoder: FeatureEncoder) -> pd.DataFrame:
    rows = [encoder.movie(r["movie_id"], r["title"], r["genres"], r["year"]) for r in _records(movies)]
    enc = pd.DataFrame(rows, index=movies.index).add_prefix(ENC)
    return pd.concat([movies, enc], axis=1)


def load_manifest(prepared_dir: str | Path, verify: bool = True) -> dict:
    """The manifest of a prepared directory, checked before anything reads the directory.

    Always: the file exists, is JSON, and its ``manifest_version`` is the one this recsys
    writes (:data:`MANIFEST_VERSION`). With ``verify`` (the default), also every Parquet table
    the manifest lists (:func:`verify_tables`): one sha256 pass over the tables, no TFRecords.

    Raises:
        ArtifactError: naming the file and what is wrong (missing, unreadable, older or newer
            manifest, a table missing, altered or not listed).
    """
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} not found: run `spark-submit jobs/prepare.py --config ...` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}: unreadable manifest ({err})") from None
    version = manifest.get("manifest_version") if isinstance(manifest, dict) else None
    if version != MANIFEST_VERSION:
        if isinstance(version, int) and version > MANIFEST_VERSION:
            raise ArtifactError(f"{path} is manifest version {version}, newer than this recsys {__version__} reads "
                                f"(version {MANIFEST_VERSION}): upgrade recsys, or re-run prepare with this one")
        raise ArtifactError(f"{path} is manifest version {version if version is not None else 'none (no manifest_version)'}"
                            f", older than this recsys {__version__} reads (version {MANIFEST_VERSION}): re-run "
                            "`spark-submit jobs/prepare.py --config ...`")
    if verify:
        verify_tables(Path(prepared_dir), manifest)
    return manifest


def verify_tables(prepared: Path, manifest: dict) -> None:
    """Check every Parquet table of a prepared directory against the sha256 in its manifest.

    ``users.parquet`` and ``movies.parquet`` (``manifest["tables"]``) and, per split, the
    ``ratings_<split>/`` parts its shards list (``table``, ``table_sha256``): each must exist
    and match, and a split's directory may hold no other Parquet file (readers load the whole
    directory, so a stray part would be read as data). Cost: one sha256 pass over the tables.
    """
    from recsys.checksums import sha256_file

    where = prepared / MANIFEST
    listed: dict[str, str] = {}
    for name in ("users.parquet", "movies.parquet"):
        entry = manifest.get("tables", {}).get(name)
        if not entry or not entry.get("sha256"):
            raise ArtifactError(f"{where} records no sha256 for {name} (written by an older prepare): re-run prepare")
        listed[entry["path"]] = entry["sha256"]
    for split, info in manifest.get("splits", {}).items():
        parts = {s["table"]: s.get("table_sha256") for s in info.get("shards", []) if s.get("table")}
        if not parts or not all(parts.values()):
            raise ArtifactError(f"{where} records no sha256 for the ratings_{split}/ tables (written by an older "
                                "prepare): re-run prepare")
        on_disk = {str(p.relative_to(prepared)) for p in (prepared / f"ratings_{split}").glob("*.parquet")}
        for stray in sorted(on_disk - set(parts)):
            raise ArtifactError(f"{prepared / stray} is not listed in {where}: a stray file would be read as "
                                f"ratings of the {split} split; remove it, or re-run prepare")
        listed.update(parts)
    for name, digest in listed.items():
        path = prepared / name
        if not path.is_file():
            raise ArtifactError(f"table {path} listed in {where} is missing (re-run prepare, or restore the file)")
        if sha256_file(path) != digest:
            raise ArtifactError(f"table {path} is corrupt: sha256 differs from {where} "
                                "(re-run prepare, or restore the file)")
