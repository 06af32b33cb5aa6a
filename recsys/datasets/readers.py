"""Read any supported MovieLens format into the three canonical pandas tables.

For in-process work on data that fits in memory (tests, baselines, evaluation, the
pandas comparison in bench/). The Spark prepare job reads the same formats with the
same line parsers (:mod:`recsys.datasets.formats`), distributed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from recsys.datasets.formats import HEADER, TABLES, FormatSpec, RowError, decode_line, detect_format, resolve_file
from recsys.errors import DataError

COLUMNS = {
    "ratings": ["user_id", "movie_id", "rating", "timestamp"],
    "users": ["user_id", "gender", "age", "occupation", "zip"],
    "movies": ["movie_id", "title", "genres", "year"],
}
DTYPES = {
    "ratings": {"user_id": "int64", "movie_id": "int64", "rating": "float32", "timestamp": "int64"},
    "users": {"user_id": "int64", "gender": "object", "age": "Int32", "occupation": "object", "zip": "object"},
    "movies": {"movie_id": "int64", "title": "object", "genres": "object", "year": "Int32"},
}


@dataclass
class TableRead:
    """One table read from one file, with what was rejected and why."""

    file: str
    frame: pd.DataFrame
    rows_read: int = 0  # data lines (blank and header lines excluded)
    header_lines: int = 0
    rejected: list[dict] = field(default_factory=list)  # {line, reason, detail, text}

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rejected))


@dataclass
class MovieLensTables:
    """The canonical ratings, users and movies tables, and per-file accounting."""

    format: str
    ratings: pd.DataFrame
    users: pd.DataFrame
    movies: pd.DataFrame
    reads: dict[str, TableRead]

    def accounting(self) -> dict:
        """Per table: file, rows read, kept, and rejected by reason (read = kept + rejected)."""
        return {
            t: {"file": r.file, "rows_read": r.rows_read, "rows_kept": len(r.frame),
                "rejected": r.rejected_by_reason}
            for t, r in self.reads.items()
        }


def read_table(path: Path, spec: FormatSpec, table: str) -> TableRead:
    """Parse every line of ``path`` with the format's parser for ``table``.

    Raises:
        DataError: the path is missing, is a directory, or cannot be read.
    """
    if path.is_dir():
        raise DataError(f"{path}: expected the {table} file, found a directory")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {table} file {path}: {err.strerror}") from None
    parse = spec.parsers[table]
    rows, result = [], TableRead(file=str(path), frame=pd.DataFrame())
    for number, raw in enumerate(data.split(b"\n"), start=1):
        text = decode_line(raw, spec.legacy_encoding)
        if not text.strip():
            continue
        try:
            row = parse(text)
        except RowError as err:
            result.rows_read += 1
            result.rejected.append({"line": number, "reason": err.reason, "detail": err.detail, "text": text})
            continue
        if row is HEADER:
            result.header_lines += 1
            continue
        result.rows_read += 1
        rows.append(row)
    result.frame = _frame(rows, table)
    return result


def _frame(rows: list[tuple], table: str) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS[table])
    return frame.astype(DTYPES[table])


def read_movielens(directory: str | Path, format: str = "auto") -> MovieLensTables:
    """Read the ratings, users and movies tables of the MovieLens files in ``directory``.

    Formats without a users file (ml-latest) get a users table of the rated user ids with
    unknown demographics. Raises :class:`DataError` when the ratings file is empty.
    """
    directory = Path(directory)
    spec = detect_format(directory, format)
    reads: dict[str, TableRead] = {}
    for table in TABLES:
        pattern = spec.files[table]
        if pattern is None:
            continue
        path = resolve_file(directory, pattern)
        if path is None:
            raise DataError(f"{directory}: {table} file {pattern!r} not found ({spec.description})")
        reads[table] = read_table(path, spec, table)
    if reads["ratings"].rows_read == 0:
        raise DataError(f"{reads['ratings'].file}: the ratings file has no data lines")
    ratings = reads["ratings"].frame
    if "users" in reads:
        users = reads["users"].frame
    else:
        ids = sorted(ratings["user_id"].unique())
        users = _frame([(int(u), None, None, None, None) for u in ids], "users")
    return MovieLensTables(spec.name, ratings, users, reads["movies"].frame, reads)


def read_tables(directory: str | Path, tables) -> MovieLensTables:
    """Read a ``tables``-format dataset (``data.tables`` mapping) into the canonical tables.

    Without a users table the users are the rated ids (attributes unknown); without a
    movies table the movies are the rated ids (no title, genres or year).
    Raises :class:`DataError` for a missing file, a header that disagrees with the mapping,
    or a ratings table without data lines.
    """
    from recsys.datasets.tables import table_files, iter_rows

    reads: dict[str, TableRead] = {}
    for table, tf in table_files(directory, tables).items():
        if tf is None:
            continue
        result, rows = TableRead(file=str(tf.path), frame=pd.DataFrame()), []
        for number, (status, reason, detail, text, row) in enumerate(iter_rows(tf), start=1):
            if status == "header":
                result.header_lines += 1
                continue
            result.rows_read += 1
            if status == "rejected":
                result.rejected.append({"line": number, "reason": reason, "detail": detail, "text": text})
            else:
                rows.append(row)
        result.frame = _frame(rows, table)
        reads[table] = result
    if reads["ratings"].rows_read == 0:
        raise DataError(f"{reads['ratings'].file}: the ratings file has no data lines")
    ratings = reads["ratings"].frame
    users = reads["users"].frame if "users" in reads else _frame(
        [(int(u), None, None, None, None) for u in sorted(ratings["user_id"].unique())], "users")
    movies = reads["movies"].frame if "movies" in reads else _frame(
        [(int(m), "", "", None) for m in sorted(ratings["movie_id"].unique())], "movies")
    return MovieLensTables("tables", ratings, users, movies, reads)
