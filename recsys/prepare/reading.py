"""Raw MovieLens files -> parsed Spark DataFrames, one status per line.

Lines are read by Spark's CSV reader configured to split only on line ends and decode as
ISO-8859-1, which maps every byte to one character and so loses nothing; each line is
then re-decoded (UTF-8 first, then the format's legacy encoding) and parsed by the same
parser the pandas readers use (:mod:`recsys.datasets.formats`), vectorised per Arrow
batch with ``mapInArrow``. Nothing is dropped here: a line is ``ok``, ``header`` or
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
    """DataFrame(file, line) of every non-empty line of ``path``, bytes preserved as latin-1."""
    from pyspark.sql import functions as F

    return (
        spark.read.option("sep", "\u0000").option("quote", "\u0000").option("escape", "\u0000")
        .option("encoding", "ISO-8859-1").option("header", "false").option("mode", "PERMISSIVE")
        .option("ignoreLeadingWhiteSpace", "false").option("ignoreTrailingWhiteSpace", "false")
        .schema("line string").csv(path)
        .withColumn("file", F.input_file_name())
        .filter(F.col("line").isNotNull())
    )


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
            yield pa.RecordBatch.from_arrays([pa.array(c) for c in out], schema=_arrow_schema(table))

    return parse_batches


def _arrow_schema(table: str):
    import pyarrow as pa

    types = {"string": pa.string(), "long": pa.int64(), "double": pa.float64(), "int": pa.int32()}
    fields = []
    for part in SCHEMAS[table].split(","):
        name, kind = part.split()
        fields.append(pa.field(name, types[kind]))
    return pa.schema(fields)


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
    return lines.mapInArrow(_parser(spec.name, table), SCHEMAS[table])
