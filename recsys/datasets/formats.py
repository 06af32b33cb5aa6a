"""The MovieLens file formats users bring, and one line parser per (format, table).

Every format is turned into the same three canonical tables (column: type):

``ratings``  user_id: int64, movie_id: int64, rating: float32 (stars), timestamp: int64 (Unix s)
``users``    user_id: int64, gender: str | None ("M"/"F"), age: int | None (years, or the
             lower bound of an ML-1M age bucket), occupation: str | None (lower-case name),
             zip: str | None
``movies``   movie_id: int64, title: str (as given, year included where the file has it),
             genres: str (genre names joined by "|", "" for none), year: int | None

The parsers work on one decoded line at a time and raise :class:`RowError` with a short
reason for a line they cannot use; both the pandas readers and the Spark prepare job call
them, so a line is judged the same way everywhere. Lines are read as bytes and decoded
with :func:`decode_line` (UTF-8 first, then the format's legacy encoding), so files that
mix UTF-8 and latin-1 lose nothing.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Genre order of ML-100K's 19 flag columns in u.item (its own u.genre file).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

# ML-1M occupation codes (its README), mapped to ML-100K's names where one exists.
ML1M_OCCUPATIONS = {
    0: "other", 1: "educator", 2: "artist", 3: "administrator", 4: "student",
    5: "customer service", 6: "healthcare", 7: "executive", 8: "farmer",
    9: "homemaker", 10: "k-12 student", 11: "lawyer", 12: "programmer",
    13: "retired", 14: "marketing", 15: "scientist", 16: "self-employed",
    17: "engineer", 18: "tradesman", 19: "unemployed", 20: "writer",
}
ML1M_AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)

_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")

TABLES = ("ratings", "users", "movies")


class RowError(ValueError):
    """A line that cannot be used; ``reason`` is a short snake_case label for quarantine."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


HEADER = object()  # returned by a parser for a header line (not data, not an error)


def decode_line(raw: bytes, legacy: str = "latin-1") -> str:
    """Decode one line: UTF-8 when valid, else the format's legacy encoding; strip BOM/EOL."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode(legacy, errors="replace")
    return text.lstrip("\ufeff").rstrip("\r\n")


def recover_text(text: str, legacy: str = "latin-1") -> str:
    """Undo a lossless latin-1 decode of a line (how Spark hands lines over) as :func:`decode_line`."""
    return decode_line(text.encode("latin-1", errors="replace"), legacy)


# ------------------------------------------------------------------ field helpers


def _id(value: str, name: str) -> int:
    value = value.strip()
    if not value:
        raise RowError("missing_field", name)
    try:
        out = int(value)
    except ValueError:
        raise RowError("bad_id", f"{name}={value!r}") from None
    if out < 0:
        raise RowError("bad_id", f"{name}={value!r}")
    return out


def _rating(value: str) -> float:
    value = value.strip()
    if not value:
        raise RowError("missing_field", "rating")
    try:
        out = float(value)
    except ValueError:
        raise RowError("bad_rating", repr(value)) from None
    if math.isnan(out) or math.isinf(out):
        raise RowError("bad_rating", repr(value))
    return out


def _timestamp(value: str) -> int:
    value = value.strip()
    if not value:
        raise RowError("missing_field", "timestamp")
    try:
        out = float(value)
    except ValueError:
        raise RowError("bad_timestamp", repr(value)) from None
    if math.isnan(out) or out < 0 or out > 1e11:
        raise RowError("bad_timestamp", repr(value))
    return int(out)


def _opt_int(value: str, name: str) -> int | None:
    """An optional attribute (age, release year): unreadable means unknown, not a bad row.

    Real files have such values (ML-100K in RecBole form has release_year 'unkonwn' and
    'V'); rejecting the row would quarantine every rating of that movie or user.
    """
    value = value.strip()
    try:
        return int(float(value)) if value else None
    except (ValueError, OverflowError):
        return None


def _opt_str(value: str) -> str | None:
    value = value.strip()
    return value or None


def _gender(value: str) -> str | None:
    value = value.strip().upper()
    if not value:
        return None
    if value not in ("M", "F"):
        raise RowError("bad_field", f"gender={value!r}")
    return value


def year_from_title(title: str) -> int | None:
    """The release year in a trailing ``(1995)`` of a title, or None."""
    m = _YEAR_IN_TITLE.search(title)
    return int(m.group(1)) if m else None


def _fields(line: str, sep: str, count: int, table: str) -> list[str]:
    parts = line.split(sep)
    if len(parts) != count:
        raise RowError("wrong_field_count", f"{table}: expected {count} fields separated by {sep!r}, got {len(parts)}")
    return parts


def _title(value: str) -> str:
    value = value.strip()
    if not value:
        raise RowError("missing_field", "title")
    return value


# ------------------------------------------------------------------ ml-100k


def _ml100k_rating(line: str):
    u, m, r, t = _fields(line, "\t", 4, "ratings")
    return (_id(u, "user_id"), _id(m, "movie_id"), _rating(r), _timestamp(t))


def _ml100k_user(line: str):
    u, age, gender, occ, zipc = _fields(line, "|", 5, "users")
    occ = _opt_str(occ)
    return (_id(u, "user_id"), _gender(gender), _opt_int(age, "age"), occ.lower() if occ else None, _opt_str(zipc))


def _ml100k_movie(line: str):
    parts = _fields(line, "|", 5 + len(ML100K_GENRES), "movies")
    flags = parts[5:]
    if any(f.strip() not in ("0", "1") for f in flags):
        raise RowError("bad_field", "genre flags must be 0 or 1")
    genres = "|".join(g for g, f in zip(ML100K_GENRES, flags) if f.strip() == "1")
    title = _title(parts[1])
    m = _DATE_YEAR.search(parts[2])
    year = int(m.group(1)) if m else year_from_title(title)
    return (_id(parts[0], "movie_id"), title, genres, year)


# ------------------------------------------------------------------ ml-1m


def _ml1m_rating(line: str):
    u, m, r, t = _fields(line, "::", 4, "ratings")
    return (_id(u, "user_id"), _id(m, "movie_id"), _rating(r), _timestamp(t))


def _ml1m_user(line: str):
    u, gender, age, occ, zipc = _fields(line, "::", 5, "users")
    try:
        code = int(occ) if occ.strip() else None
    except ValueError:
        raise RowError("bad_field", f"occupation={occ!r} (codes 0-20)") from None
    if code is not None and code not in ML1M_OCCUPATIONS:
        raise RowError("bad_field", f"occupation={occ!r} (codes 0-20)")
    return (_id(u, "user_id"), _gender(gender), _opt_int(age, "age"),
            ML1M_OCCUPATIONS.get(code) if code is not None else None, _opt_str(zipc))


def _ml1m_movie(line: str):
    m, title, genres = _fields(line, "::", 3, "movies")
    title = _title(title)
    return (_id(m, "movie_id"), title, _genres(genres, "|"), year_from_title(title))


def _genres(value: str, sep: str) -> str:
    names = [g.strip() for g in value.split(sep) if g.strip()]
    names = [g for g in names if g != "(no genres listed)"]
    return "|".join(names)


# ------------------------------------------------------------------ ml-latest / ml-25m


def _csv_fields(line: str, count: int, table: str) -> list[str]:
    try:
        rows = list(csv.reader([line], strict=True))
    except csv.Error as err:
        raise RowError("unparsable", f"{table}: {err}") from None
    if len(rows) != 1 or len(rows[0]) != count:
        got = len(rows[0]) if rows else 0
        raise RowError("wrong_field_count", f"{table}: expected {count} comma-separated fields, got {got}")
    return rows[0]


def _latest_rating(line: str):
    if line.startswith("userId,"):
        return HEADER
    u, m, r, t = _csv_fields(line, 4, "ratings")
    return (_id(u, "user_id"), _id(m, "movie_id"), _rating(r), _timestamp(t))


def _latest_movie(line: str):
    if line.startswith("movieId,"):
        return HEADER
    m, title, genres = _csv_fields(line, 3, "movies")
    title = _title(title)
    return (_id(m, "movie_id"), title, _genres(genres, "|"), year_from_title(title))


# ------------------------------------------------------------------ RecBole atomic files


def _recbole_rating(line: str):
    if line.startswith("user_id:"):
        return HEADER
    u, m, r, t = _fields(line, "\t", 4, "ratings")
    return (_id(u, "user_id"), _id(m, "movie_id"), _rating(r), _timestamp(t))


def _recbole_user(line: str):
    if line.startswith("user_id:"):
        return HEADER
    u, age, gender, occ, zipc = _fields(line, "\t", 5, "users")
    occ = _opt_str(occ)
    return (_id(u, "user_id"), _gender(gender), _opt_int(age, "age"), occ.lower() if occ else None, _opt_str(zipc))


def _recbole_movie(line: str):
    if line.startswith("item_id:"):
        return HEADER
    m, title, year, genres = _fields(line, "\t", 4, "movies")
    title = _title(title)
    return (_id(m, "movie_id"), title, _genres(genres, " "), _opt_int(year, "release_year") or year_from_title(title))


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class FormatSpec:
    """One on-disk MovieLens format: its file names, legacy encoding and line parsers."""

    name: str
    files: dict[str, str | None]  # table -> file name (None: the format has no such file)
    legacy_encoding: str
    parsers: dict[str, Callable[[str], tuple | object]]
    description: str


FORMATS: dict[str, FormatSpec] = {
    "ml-100k": FormatSpec(
        "ml-100k", {"ratings": "u.data", "users": "u.user", "movies": "u.item"}, "latin-1",
        {"ratings": _ml100k_rating, "users": _ml100k_user, "movies": _ml100k_movie},
        "GroupLens ML-100K: u.data (tab), u.user and u.item (|), latin-1",
    ),
    "ml-1m": FormatSpec(
        "ml-1m", {"ratings": "ratings.dat", "users": "users.dat", "movies": "movies.dat"}, "latin-1",
        {"ratings": _ml1m_rating, "users": _ml1m_user, "movies": _ml1m_movie},
        "GroupLens ML-1M: ratings.dat, users.dat, movies.dat ('::'), latin-1",
    ),
    "ml-latest": FormatSpec(
        "ml-latest", {"ratings": "ratings.csv", "users": None, "movies": "movies.csv"}, "utf-8",
        {"ratings": _latest_rating, "movies": _latest_movie},
        "GroupLens ml-latest / ml-25m: ratings.csv, movies.csv (quoted CSV, UTF-8, no users)",
    ),
    "recbole": FormatSpec(
        "recbole", {"ratings": "*.inter", "users": "*.user", "movies": "*.item"}, "utf-8",
        {"ratings": _recbole_rating, "users": _recbole_user, "movies": _recbole_movie},
        "RecBole atomic files: NAME.inter, NAME.user, NAME.item (tab, typed header)",
    ),
}


def resolve_file(directory: Path, pattern: str) -> Path | None:
    """The file in ``directory`` matching ``pattern`` (a name or a ``*.ext`` glob), or None."""
    if "*" in pattern:
        matches = sorted(p for p in directory.glob(pattern) if p.is_file())
        return matches[0] if matches else None
    path = directory / pattern
    return path if path.exists() else None


def detect_format(directory: str | Path, configured: str = "auto") -> FormatSpec:
    """The format of the raw files in ``directory`` (or the configured one, checked).

    Raises:
        DataError: naming the directory and the files each format expects.
    """
    from recsys.errors import DataError

    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"raw data directory not found: {directory} (run `recsys data fetch ml-100k` or set paths.raw)")
    if not directory.is_dir():
        raise DataError(f"raw data path is not a directory: {directory}")
    if configured != "auto":
        spec = FORMATS[configured]
        missing = [p for t, p in spec.files.items() if p and resolve_file(directory, p) is None]
        if missing:
            raise DataError(f"{directory}: data.format is {configured!r} but {', '.join(missing)} not found; "
                            f"expected {spec.description}")
        return spec
    found = [spec for spec in FORMATS.values() if resolve_file(directory, spec.files["ratings"]) is not None]
    if len(found) > 1:  # e.g. synthetic ML-1M files written beside real ML-100K ones: never guess
        names = " and ".join(f"{s.name} ({resolve_file(directory, s.files['ratings']).name})" for s in found)
        raise DataError(f"{directory} holds more than one MovieLens format: {names}; keep one dataset per "
                        "directory, or set data.format to the one to read")
    if found:
        return found[0]
    expected = "; ".join(s.description for s in FORMATS.values())
    raise DataError(f"{directory}: no MovieLens ratings file found. Expected one of: {expected}")
