"""The ``tables`` format: ratings, users and movies as CSV, TSV or Parquet with a column mapping.

The mapping is ``data.tables`` of the config (:class:`recsys.config.TablesConfig`): for each
table its file, kind, delimiter and which header column holds each canonical field
(:mod:`recsys.datasets.formats` lists them). Every column of a header must be mapped or
listed under ``ignore``, and every mapped column must be in the header; otherwise reading
stops with one error naming the file, the column and the columns found.

Rows are judged by the same rules and reasons as the MovieLens formats (``bad_id``,
``bad_rating``, ``bad_timestamp``, ``wrong_field_count``, ...). Users and movies tables are
small and parsed here, in Python, for both the pandas readers and the Spark prepare job;
the prepare job parses ratings lines natively in Spark by the same rules
(:func:`recsys.prepare.reading.read_tables_ratings`; a test checks the two agree).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recsys.datasets.formats import (RowError, _gender, _id, _opt_int, _opt_str, _rating, _timestamp, decode_line,
                                     year_from_title)
from recsys.errors import DataError

# canonical field -> attribute of the table's mapping, in the canonical column order
FIELDS = {
    "ratings": ("user_id", "movie_id", "rating", "timestamp"),
    "users": ("user_id", "gender", "age", "occupation", "zip"),
    "movies": ("movie_id", "title", "genres", "year"),
}
REQUIRED = {"ratings": ("user_id", "movie_id", "rating"), "users": ("user_id",), "movies": ("movie_id",)}
TEXT_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".dat": "tsv"}
PARQUET_SUFFIXES = (".parquet", ".pq")
DESCRIPTION = "tables: ratings (and optional users, movies) as CSV, TSV or Parquet with a column mapping (data.tables)"

# strptime directive -> Spark datetime pattern letters (both parse 1- or 2-digit fields alike)
_SPARK_DIRECTIVES = {"Y": "y", "y": "yy", "m": "M", "d": "d", "H": "H", "I": "h", "M": "m", "S": "s",
                     "p": "a", "b": "MMM", "B": "MMMM", "f": "SSSSSS", "%": "%"}


def check_mapping(tables) -> None:
    """Raise ValueError naming the key when the ``data.tables`` mapping cannot work."""
    r = tables.ratings
    if not r.file.strip():
        raise ValueError("data.format is 'tables' but data.tables.ratings.file is empty; name the ratings file")
    for name in ("ratings", "users", "movies"):
        t = getattr(tables, name)
        for key in REQUIRED[name]:
            if t.file and not getattr(t, key).strip():
                raise ValueError(f"key 'data.tables.{name}.{key}' must name a column of the {name} table")
    if r.timestamp_format != "epoch":
        spark_pattern(r.timestamp_format)  # raises on an unsupported directive
    try:
        time_zone(r.timezone)
    except ValueError as err:
        raise ValueError(f"key 'data.tables.ratings.timezone': {err}") from None
    try:
        re.compile(tables.movies.genre_separator)
    except re.error as err:
        raise ValueError(f"key 'data.tables.movies.genre_separator' is not a valid regular expression "
                         f"({tables.movies.genre_separator!r}: {err})") from None
    if not tables.movies.genre_separator:
        raise ValueError("key 'data.tables.movies.genre_separator' must not be empty")


def time_zone(name: str):
    """The ``zoneinfo`` zone of an IANA name; ValueError when unknown."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as UTC or Asia/Shanghai)") from None


def spark_pattern(pattern: str) -> str:
    """The Spark datetime pattern equal to a strptime ``pattern`` (ValueError on other directives)."""
    out, literal, i = [], "", 0

    def flush():
        nonlocal literal
        if literal:
            out.append("'" + literal.replace("'", "''") + "'" if re.search(r"[A-Za-z']", literal) else literal)
            literal = ""

    while i < len(pattern):
        ch = pattern[i]
        if ch == "%":
            if i + 1 >= len(pattern) or pattern[i + 1] not in _SPARK_DIRECTIVES:
                raise ValueError(f"key 'data.tables.ratings.timestamp_format': unsupported directive "
                                 f"{pattern[i:i + 2]!r} in {pattern!r}; use %Y %y %m %d %H %I %M %S %p %b %B %f")
            if pattern[i + 1] == "%":
                literal += "%"
            else:
                flush()
                out.append(_SPARK_DIRECTIVES[pattern[i + 1]])
            i += 2
        else:
            literal += ch
            i += 1
    flush()
    return "".join(out)


# ------------------------------------------------------------------ files and headers


@dataclass
class TableFile:
    """One mapped input table: where it is, how to split it, and its mapping."""

    table: str  # ratings | users | movies
    path: Path
    kind: str  # csv | tsv | parquet
    delimiter: str
    mapping: object  # RatingsTableConfig | UsersTableConfig | MoviesTableConfig

    def columns(self) -> dict[str, str]:
        """Canonical field -> header column, for the fields this table maps."""
        return {f: getattr(self.mapping, f) for f in FIELDS[self.table]
                if getattr(self.mapping, f, "") and getattr(self.mapping, f).strip()}


def table_files(raw_dir: str | Path, tables) -> dict[str, TableFile | None]:
    """The mapped tables of ``data.tables`` under ``raw_dir`` (None: not given), headers checked.

    Raises:
        DataError: a file is missing, or its header and the mapping disagree.
    """
    raw_dir = Path(raw_dir)
    out: dict[str, TableFile | None] = {}
    for table in FIELDS:
        mapping = getattr(tables, table)
        if not mapping.file.strip():
            if table == "ratings":
                raise DataError("data.format is 'tables' but data.tables.ratings.file is empty")
            out[table] = None
            continue
        path = Path(mapping.file).expanduser()
        path = path if path.is_absolute() else raw_dir / path
        if not path.exists():
            raise DataError(f"{path}: {table} table not found (data.tables.{table}.file, relative to paths.raw {raw_dir})")
        kind = mapping.kind
        if kind == "auto":
            suffix = path.suffix.lower()
            if path.is_dir() or suffix in PARQUET_SUFFIXES:
                kind = "parquet"
            elif suffix in TEXT_SUFFIXES:
                kind = TEXT_SUFFIXES[suffix]
            else:
                raise DataError(f"{path}: cannot tell the kind of the {table} table from its name; "
                                f"set data.tables.{table}.kind to csv, tsv or parquet")
        if kind != "parquet" and path.is_dir():
            raise DataError(f"{path}: expected the {table} file, found a directory")
        delimiter = mapping.delimiter or ("\t" if kind == "tsv" else ",")
        tf = TableFile(table, path, kind, delimiter, mapping)
        check_header(tf, read_header(tf))
        out[table] = tf
    return out


def _first_line(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.strip():
                    return raw
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    return b""


def header_line(tf: TableFile) -> str:
    """The header line of a text table, as Spark's lossless latin-1 read shows it."""
    return _first_line(tf.path).decode("latin-1").lstrip("\u00ef\u00bb\u00bf").rstrip("\r\n")


def read_header(tf: TableFile) -> list[str]:
    """The column names of a table: its first non-blank line, or a Parquet schema."""
    if tf.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            files = sorted(tf.path.rglob("*.parquet")) if tf.path.is_dir() else [tf.path]
            if not files:
                raise DataError(f"{tf.path}: no .parquet files in the {tf.table} directory")
            return list(pq.read_schema(files[0]).names)
        except (OSError, ValueError) as err:  # pyarrow's errors derive from these
            raise DataError(f"{tf.path}: not a readable Parquet {tf.table} table ({err})") from None
    line = decode_line(_first_line(tf.path))
    if not line.strip():
        raise DataError(f"{tf.path}: the {tf.table} table is empty (a header line is expected)")
    return [c.strip() for c in split_fields(line, tf.delimiter, quoted=True)]


def check_header(tf: TableFile, header: list[str]) -> None:
    """One error naming the file, the column and the columns found when header and mapping disagree."""
    mapped = tf.columns()
    ignored = list(tf.mapping.ignore)
    found = ", ".join(header)
    for field_name, column in mapped.items():
        if column not in header:
            raise DataError(f"{tf.path}: column {column!r} (data.tables.{tf.table}.{field_name}) is not in the header; "
                            f"columns found: {found}")
    known = set(mapped.values()) | set(ignored)
    for column in header:
        if column not in known:
            raise DataError(f"{tf.path}: column {column!r} is not in the mapping data.tables.{tf.table} "
                            f"(map it or add it to data.tables.{tf.table}.ignore); columns found: {found}")
    dup = [c for c in set(header) if header.count(c) > 1]
    if dup:
        raise DataError(f"{tf.path}: column {dup[0]!r} appears twice in the header; columns found: {found}")


# ------------------------------------------------------------------ rows


def split_fields(line: str, delimiter: str, quoted: bool) -> list[str]:
    """Fields of one line: CSV quoting rules when ``quoted``, else a plain split."""
    if not quoted:
        return line.split(delimiter)
    try:
        rows = list(csv.reader([line], delimiter=delimiter, strict=True)) if len(delimiter) == 1 else [line.split(delimiter)]
    except csv.Error as err:
        raise RowError("unparsable", str(err)) from None
    return rows[0] if rows else []


def _unquote(value: str) -> str:
    """A CSV ratings field without one pair of surrounding double quotes (as the Spark parser does)."""
    v = value.strip()
    return v[1:-1] if len(v) >= 2 and v[0] == '"' and v[-1] == '"' else value


def epoch_seconds(value: str, pattern: str, zone) -> int:
    """Unix seconds of a date string read with a strptime ``pattern`` in ``zone``."""
    value = value.strip()
    if not value:
        raise RowError("missing_field", "timestamp")
    try:
        return int(dt.datetime.strptime(value, pattern).replace(tzinfo=zone).timestamp())
    except ValueError:
        raise RowError("bad_timestamp", repr(value)) from None


class RowParser:
    """Parses one data line of a mapped table into the canonical tuple (or raises RowError)."""

    def __init__(self, tf: TableFile, header: list[str]):
        self.tf = tf
        self.width = len(header)
        self.pos = {f: header.index(c) for f, c in tf.columns().items()}
        m = tf.mapping
        if tf.table == "ratings":
            self.pattern = None if m.timestamp_format == "epoch" else m.timestamp_format
            self.zone = time_zone(m.timezone)
        if tf.table == "movies":
            self.genre_sep = re.compile(m.genre_separator)

    def fields(self, line: str) -> list[str]:
        if self.tf.table == "ratings":  # a plain split, as the Spark parser does; quotes removed in CSV only
            parts = line.split(self.tf.delimiter)
            if self.tf.kind == "csv":
                parts = [_unquote(f) for f in parts]
        else:
            parts = split_fields(line, self.tf.delimiter, quoted=True)
        if len(parts) != self.width:
            raise RowError("wrong_field_count", f"{self.tf.table}: expected {self.width} fields separated by "
                                                f"{self.tf.delimiter!r}, got {len(parts)}")
        return parts

    def get(self, parts: list[str], name: str) -> str:
        i = self.pos.get(name)
        return "" if i is None or parts[i] is None else str(parts[i])

    def __call__(self, line: str) -> tuple:
        return self.row(self.fields(line))

    def row(self, parts: list[str]) -> tuple:
        g = lambda name: self.get(parts, name)  # noqa: E731
        if self.tf.table == "ratings":
            uid, mid, rating = _id(g("user_id"), "user_id"), _id(g("movie_id"), "movie_id"), _rating(g("rating"))
            if "timestamp" not in self.pos:
                ts = 0
            elif self.pattern is None:
                ts = _timestamp(g("timestamp"))
            else:
                ts = epoch_seconds(g("timestamp"), self.pattern, self.zone)
            return (uid, mid, rating, ts)
        if self.tf.table == "users":
            occ = _opt_str(g("occupation"))
            return (_id(g("user_id"), "user_id"), table_gender(g("gender")), _opt_int(g("age"), "age"),
                    occ.lower() if occ else None, _opt_str(g("zip")))
        title = g("title").strip()
        names = [x.strip() for x in self.genre_sep.split(g("genres")) if x.strip()]
        genres = "|".join(n for n in names if n != "(no genres listed)")
        year = _opt_int(g("year"), "year") if "year" in self.pos else None
        return (_id(g("movie_id"), "movie_id"), title, genres, year if year is not None else year_from_title(title))


def table_gender(value: str) -> str | None:
    """Gender of a mapped users table: M/F as in MovieLens, any other value as its own category."""
    try:
        return _gender(value)
    except RowError:
        return value.strip().upper()


def iter_rows(tf: TableFile):
    """(status, reason, detail, text, row) per non-blank line or Parquet row of a table."""
    header = read_header(tf)
    parse = RowParser(tf, header)
    empty = (None,) * len(FIELDS[tf.table])
    if tf.kind == "parquet":
        frame = pd.read_parquet(tf.path, columns=header)
        for values in frame.astype(object).itertuples(index=False, name=None):
            parts = ["" if v is None or v != v else str(v) for v in values]
            text = tf.delimiter.join(parts)
            try:
                yield "ok", None, None, text, parse.row(parts)
            except RowError as err:
                yield "rejected", err.reason, err.detail, text, empty
        return
    try:
        data = tf.path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {tf.table} file {tf.path}: {err.strerror}") from None
    header_text = None
    for raw in data.split(b"\n"):
        text = decode_line(raw)
        if not text.strip():
            continue
        if header_text is None:
            header_text = text
        if text == header_text:
            yield "header", None, None, text, empty
            continue
        try:
            yield "ok", None, None, text, parse(text)
        except RowError as err:
            yield "rejected", err.reason, err.detail, text, empty


def read_dimension(tf: TableFile) -> pd.DataFrame:
    """A users or movies table as prepare's parsed frame: file, status, reason, detail, text + fields."""
    cols = ["status", "reason", "detail", "text", *FIELDS[tf.table]]
    rows = [(s, r, d, t, *row) for s, r, d, t, row in iter_rows(tf)]
    frame = pd.DataFrame.from_records(rows, columns=cols)
    frame.insert(0, "file", str(tf.path))
    return frame
