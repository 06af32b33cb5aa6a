"""Raw MovieLens files -> parsed Spark DataFrames, one status per line.

Lines are read by Spark's text source, byte for byte, and decoded as ISO-8859-1, which
maps every byte to one character and so loses nothing (:func:`read_lines`). Users and movies
lines are then re-decoded (UTF-8 first, then the format's legacy encoding) and parsed by
the same parsers the pandas readers use (:mod:`recsys.datasets.formats`), per Arrow batch
with ``mapInArrow``. Ratings lines (all numbers, the bulk of the data) are parsed with
Spark column functions by the same rules and reasons (:func:`parse_ratings_native`; a test
checks the two agree). Nothing is dropped here: a line is ``ok``, ``header`` or
``rejected`` with a reason.
"""

from __future__ import annotations

from pathlib import Path

from recsys.datasets.formats import FormatSpec
from recsys.errors import DataError

STATUS_FIELDS = "file string, status string, reason string, detail string, text string"
SCHEMAS = {
    "ratings": STATUS_FIELDS + ", user_id long, movie_id long, rating double, timestamp long",
    "users": STATUS_FIELDS + ", user_id long, gender string, age int, occupation string, zip string",
    "movies": STATUS_FIELDS + ", movie_id long, title string, genres string, year int",
}


def read_lines(spark, path: str):
    """DataFrame(file, line) of every line of ``path``, bytes preserved as latin-1 characters.

    Spark's text source splits on LF, CRLF and CR and keeps each line's bytes untouched
    (no CSV rules: NUL, quotes, Ctrl-Z and the like are data here, never separators or
    comments that would drop a line); the binary cast plus a latin-1 decode hands those
    bytes over one character per byte, and :func:`recover_text` decodes them as the
    Python readers do (UTF-8, else the format's legacy encoding).
    """
    from pyspark.sql import functions as F

    return spark.read.text(path).select(
        F.decode(F.col("value").cast("binary"), "ISO-8859-1").alias("line"),
        F.input_file_name().alias("file"))


def _parser(format_name: str, table: str):
    """A ``mapInArrow`` function parsing each line batch with the format's parser."""

    def parse_batches(batches):
        import pyarrow as pa

        # imported here, not captured: a closure's globals are pickled by value, and the
        # HEADER sentinel must be the parser module's own object
        from recsys.datasets.formats import FORMATS, HEADER, RowError, recover_text

        spec = FORMATS[format_name]
        parse = spec.parsers[table]
        n_values = len(SCHEMAS[table].split(",")) - 5
        for batch in batches:
            lines = batch.column("line").to_pylist()
            files = batch.column("file").to_pylist()
            out = [[] for _ in range(5 + n_values)]
            for line, file in zip(lines, files):
                text = recover_text(line, spec.legacy_encoding)
                if not text.strip():
                    continue
                try:
                    row = parse(text)
                except RowError as err:
                    status, reason, detail, row = "rejected", err.reason, err.detail, (None,) * n_values
                else:
                    if row is HEADER:
                        status, reason, detail, row = "header", None, None, (None,) * n_values
                    else:
                        status, reason, detail = "ok", None, None
                for col, value in zip(out, (file, status, reason, detail, text, *row)):
                    col.append(value)
            yield pa.RecordBatch.from_arrays([pa.array(c) for c in out], schema=arrow_schema(SCHEMAS[table]))

    return parse_batches


def arrow_schema(ddl: str):
    """The pyarrow schema of a Spark DDL schema string of string/long/double/int fields."""
    import pyarrow as pa

    types = {"string": pa.string(), "long": pa.int64(), "double": pa.float64(), "int": pa.int32()}
    fields = []
    for part in ddl.split(","):
        name, kind = part.split()
        fields.append(pa.field(name, types[kind]))
    return pa.schema(fields)


# Ratings lines are all numbers: they are parsed with Spark's own column functions (no Python
# round trip, the bulk of the data), by the same rules and reasons as the Python parsers,
# checked field by field in the same order. Users and movies (text, small) use the parsers.
RATING_LAYOUT = {"ml-100k": ("\t", None), "ml-1m": ("::", None), "ml-latest": (",", "userId,"),
                 "recbole": ("\t", "user_id:")}
_BOM_AS_LATIN1 = "\u00ef\u00bb\u00bf"  # the UTF-8 byte order mark, read as latin-1


def parse_ratings_native(lines, format_name: str):
    """Parsed ratings (schema ``SCHEMAS['ratings']``) from ``read_lines`` output, in the JVM."""
    import re

    from pyspark.sql import functions as F

    sep, header = RATING_LAYOUT[format_name]
    c = F.col
    raw = c("line")
    line = F.when(raw.startswith(_BOM_AS_LATIN1), raw.substr(F.lit(len(_BOM_AS_LATIN1) + 1), F.length(raw))).otherwise(raw)
    # One select per step, so the split, the trims and the casts are each computed once per
    # line (written as one nested expression they are re-evaluated per use: ~1.8x slower)
    df = (lines.filter(~raw.rlike(r"^\s*$"))
          .select("file", line.alias("text"))
          .select("file", "text", F.split("text", re.escape(sep), -1).alias("_parts"))
          .select("file", "text", F.size("_parts").alias("_n"),
                  *[F.trim(F.get(c("_parts"), i)).alias(f"_f{i}") for i in range(4)])  # null past the end
          .select("*", c("_f0").try_cast("long").alias("_uid"), c("_f1").try_cast("long").alias("_mid"),
                  c("_f2").try_cast("double").alias("_rating"), c("_f3").try_cast("double").alias("_ts")))
    f = [c(f"_f{i}") for i in range(4)]
    uid, mid, rating, ts = c("_uid"), c("_mid"), c("_rating"), c("_ts")
    bad_num = lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))  # noqa: E731
    reason = (
        F.when(c("_n") != 4, F.lit("wrong_field_count"))
        .when(f[0] == "", "missing_field").when(uid.isNull() | (uid < 0), "bad_id")
        .when(f[1] == "", "missing_field").when(mid.isNull() | (mid < 0), "bad_id")
        .when(f[2] == "", "missing_field").when(bad_num(rating), "bad_rating")
        .when(f[3] == "", "missing_field").when(bad_num(ts) | (ts < 0) | (ts > 1e11), "bad_timestamp")
    )
    is_header = c("text").startswith(header) if header else F.lit(False)
    df = df.select("file", "text", reason.alias("reason"), is_header.alias("_header"), uid.alias("user_id"),
                   mid.alias("movie_id"), rating.alias("rating"), ts.alias("_ts"), "_n")
    ok = F.col("reason").isNull() & ~F.col("_header")
    return df.select(
        "file",
        F.when(F.col("_header"), "header").when(F.col("reason").isNull(), "ok").otherwise("rejected").alias("status"),
        F.when(~F.col("_header"), F.col("reason")).alias("reason"),
        F.when(F.col("reason") == "wrong_field_count",
               F.concat(F.lit(f"ratings: expected 4 fields separated by {sep!r}, got "), F.col("_n").cast("string")))
        .alias("detail"),
        "text",
        F.when(ok, F.col("user_id")).alias("user_id"), F.when(ok, F.col("movie_id")).alias("movie_id"),
        F.when(ok, F.col("rating")).alias("rating"), F.when(ok, F.col("_ts").cast("long")).alias("timestamp"),
    )


def read_table(spark, spec: FormatSpec, table: str, path: Path):
    """Parsed DataFrame of one raw table file (schema :data:`SCHEMAS`)."""
    if path.is_dir():
        raise DataError(f"{path}: expected the {table} file, found a directory")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as err:
        raise DataError(f"cannot read {table} file {path}: {err.strerror}") from None
    lines = read_lines(spark, str(path.resolve()))
    if table == "ratings":
        return parse_ratings_native(lines, spec.name)
    return lines.mapInArrow(_parser(spec.name, table), SCHEMAS[table])


def read_tables_ratings(spark, tf):
    """Parsed ratings (schema ``SCHEMAS['ratings']``) of a ``tables`` ratings table, in the JVM.

    ``tf`` is a :class:`recsys.datasets.tables.TableFile` whose header was checked. Text
    lines are split on the delimiter (in CSV, one pair of surrounding double quotes is
    removed from a field; TSV fields are taken as they are); a Parquet table's columns are read as text. Either way each field is then
    judged by the rules of :class:`recsys.datasets.tables.RowParser`, in the same order.
    """
    import re

    from pyspark.sql import functions as F

    from recsys.datasets.tables import read_header, spark_pattern

    header = read_header(tf)
    cols = tf.columns()
    pos = {name: header.index(col) for name, col in cols.items()}
    c = F.col
    if tf.kind == "parquet":
        raw = spark.read.parquet(str(tf.path.resolve()))
        as_text = [F.coalesce(c(f"`{h}`").cast("string"), F.lit("")) for h in header]
        df = raw.select(F.input_file_name().alias("file"), F.concat_ws(tf.delimiter, *as_text).alias("text"),
                        F.array(*as_text).alias("_parts"), F.lit(False).alias("_header"))
    else:
        from recsys.datasets.tables import header_line

        lines = read_lines(spark, str(tf.path.resolve()))
        raw_line = c("line")
        line = F.when(raw_line.startswith(_BOM_AS_LATIN1),
                      raw_line.substr(F.lit(len(_BOM_AS_LATIN1) + 1), F.length(raw_line))).otherwise(raw_line)
        df = (lines.filter(~raw_line.rlike(r"^\s*$"))
              .select("file", line.alias("text"))
              .select("file", "text", F.split("text", re.escape(tf.delimiter), -1).alias("_parts"),
                      (c("text") == F.lit(header_line(tf))).alias("_header")))
    need = ("user_id", "movie_id", "rating", "timestamp")
    fields = []
    for name in need:
        if name not in pos:
            fields.append(F.lit("").alias(f"_f_{name}"))
            continue
        v = F.trim(F.get(c("_parts"), pos[name]))
        if tf.kind == "csv":  # one pair of surrounding double quotes, as RowParser removes them
            v = F.when(v.startswith('"') & v.endswith('"') & (F.length(v) >= 2),
                       F.trim(v.substr(F.lit(2), F.length(v) - 2))).otherwise(v)
        fields.append(v.alias(f"_f_{name}"))
    df = df.select("file", "text", "_header", F.size("_parts").alias("_n"), *fields)
    m = tf.mapping
    if "timestamp" not in pos:
        ts = F.lit(0.0)
    elif m.timestamp_format == "epoch":
        ts = c("_f_timestamp").try_cast("double")
    else:
        pattern = spark_pattern(m.timestamp_format) + " VV"
        ts = F.try_to_timestamp(F.concat(c("_f_timestamp"), F.lit(" " + m.timezone)), F.lit(pattern)).cast("double")
    df = df.select("*", c("_f_user_id").try_cast("long").alias("_uid"), c("_f_movie_id").try_cast("long").alias("_mid"),
                   c("_f_rating").try_cast("double").alias("_rating"), ts.alias("_ts"))
    f = {name: c(f"_f_{name}") for name in need}
    uid, mid, rating, ts = c("_uid"), c("_mid"), c("_rating"), c("_ts")
    bad_num = lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))  # noqa: E731
    ts_check = F.lit(False) if "timestamp" not in pos else (
        bad_num(ts) | (ts < 0) | (ts > 1e11) if m.timestamp_format == "epoch" else ts.isNull())
    width = len(header)
    reason = (
        F.when(c("_n") != width, F.lit("wrong_field_count"))
        .when(f["user_id"] == "", "missing_field").when(uid.isNull() | (uid < 0), "bad_id")
        .when(f["movie_id"] == "", "missing_field").when(mid.isNull() | (mid < 0), "bad_id")
        .when(f["rating"] == "", "missing_field").when(bad_num(rating), "bad_rating")
        .when(F.lit("timestamp" in pos) & (f["timestamp"] == ""), "missing_field").when(ts_check, "bad_timestamp")
    )
    df = df.select("file", "text", reason.alias("reason"), "_header", uid.alias("user_id"), mid.alias("movie_id"),
                   rating.alias("rating"), ts.alias("_ts"), "_n")
    ok = c("reason").isNull() & ~c("_header")
    return df.select(
        "file",
        F.when(c("_header"), "header").when(c("reason").isNull(), "ok").otherwise("rejected").alias("status"),
        F.when(~c("_header"), c("reason")).alias("reason"),
        F.when(c("reason") == "wrong_field_count",
               F.concat(F.lit(f"ratings: expected {width} fields separated by {tf.delimiter!r}, got "),
                        c("_n").cast("string"))).alias("detail"),
        "text",
        F.when(ok, c("user_id")).alias("user_id"), F.when(ok, c("movie_id")).alias("movie_id"),
        F.when(ok, c("rating")).alias("rating"), F.when(ok, c("_ts").cast("long")).alias("timestamp"),
    )
