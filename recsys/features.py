"""The feature spec and vocabularies: written by prepare, read by training and serving.

Conventions shared by every categorical feature:

* id ``0`` is padding (only meaningful inside list features such as genres or title words),
* id ``1`` is out-of-vocabulary / unknown (a new user, a missing age, a rare word),
* ids ``2 .. size-1`` are the vocabulary's values in a deterministic (sorted) order.

So ``vocab_size = len(values) + 2`` and an unseen user or movie falls back to row 1 of its
id embedding, which is what cold start relies on. The encoders here are plain Python and
are used both by the Spark prepare job (on the users and movies tables) and by serving (on
a new profile or a new movie), so the two can never disagree.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

PAD_ID = 0
OOV_ID = 1
FIRST_ID = 2
ENC = "enc_"  # prefix of the encoded feature columns in the prepared users/movies Parquet tables

_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}(?:[-–]\d{0,4})?\)\s*$")
_TOKEN = re.compile(r"[0-9a-zà-öø-ÿ]+(?:'[a-z]+)?")  # words: "latin"
_LETTERS = re.compile(r"[^\W_]+(?:'[^\W_]+)?")  # words: "letters" (any script written with spaces)
# Scripts written without spaces: kana, CJK ideographs (with extension A and B), Hangul.
_CJK_RUN = re.compile("[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                      "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af\uff66-\uff9f\U00020000-\U0002a6df]+")
# The tokenizer of a manifest written before tokenizer settings were recorded.
LEGACY_TITLE_TOKENS = {"words": "latin", "cjk": "none"}


def _missing(value) -> bool:
    """None, NaN or pandas' NA: an unknown attribute."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN
    except TypeError:  # pandas.NA refuses bool()
        return True


def title_tokens(title: str, scheme: dict | None = None) -> list[str]:
    """Lower-cased tokens of a title, without the trailing ``(1995)``, fitting its script.

    ``scheme`` is ``prepare.features.title_tokens`` as recorded in the manifest (None: the
    legacy Latin-word tokenizer). Text in scripts written with spaces gives word tokens;
    each run of Chinese, Japanese or Korean characters gives overlapping character
    bigrams (``cjk: bigram``; a one-character run is itself), single characters
    (``unigram``) or one token (``none``). A title without such characters gets exactly
    the word tokens, so the choice is made per title.

    >>> title_tokens("Misérables, Les (1995)")
    ['misérables', 'les']
    >>> title_tokens("大话西游 Chinese Odyssey", {"words": "letters", "cjk": "bigram"})
    ['大话', '话西', '西游', 'chinese', 'odyssey']
    """
    if _missing(title):
        return []
    scheme = scheme or LEGACY_TITLE_TOKENS
    words = _LETTERS if scheme.get("words", "latin") == "letters" else _TOKEN
    cjk = scheme.get("cjk", "none")
    text = _YEAR_SUFFIX.sub("", str(title)).lower()
    if cjk == "none" or not _CJK_RUN.search(text):
        return words.findall(text)
    out: list[str] = []
    pos = 0
    for run in _CJK_RUN.finditer(text):
        out.extend(words.findall(text[pos:run.start()]))
        chars = run.group()
        if cjk == "unigram" or len(chars) == 1:
            out.extend(chars)
        else:
            out.extend(chars[i:i + 2] for i in range(len(chars) - 1))
        pos = run.end()
    out.extend(words.findall(text[pos:]))
    return out


def split_genres(genres: str | None) -> list[str]:
    return [] if _missing(genres) else [g for g in str(genres).split("|") if g]


def age_bucket(age: int | None, lower_bounds: Sequence[int]) -> str | None:
    """The bucket (its lower bound, as text) holding ``age`` in years; None when unknown."""
    if _missing(age) or age < 0:
        return None
    label = lower_bounds[0]
    for bound in lower_bounds:
        if age >= bound:
            label = bound
    return str(label)


def year_bucket(year: int | None, width: int) -> str | None:
    """The release-year bucket as text (``"1990"`` for 1990-1994 with width 5)."""
    if _missing(year):
        return None
    return str(int(year) // width * width)


def zip_prefix(zipcode: str | None, length: int) -> str | None:
    if _missing(zipcode) or not zipcode or length <= 0:
        return None
    return zipcode.strip()[:length].upper() or None


@dataclass
class Vocabulary:
    """Values <-> ids both ways, with the padding/OOV convention above."""

    name: str
    values: list[str]
    _index: dict[str, int] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self._index = {v: i + FIRST_ID for i, v in enumerate(self.values)}

    @classmethod
    def build(cls, name: str, values: Iterable, min_count: int = 1) -> "Vocabulary":
        """Vocabulary of the distinct non-null values (as text), kept if seen ``min_count`` times."""
        counts: dict[str, int] = {}
        for v in values:
            if _missing(v) or v == "":
                continue
            key = _key(v)
            counts[key] = counts.get(key, 0) + 1
        kept = [v for v, c in counts.items() if c >= min_count]
        return cls(name, sorted(kept, key=_sort_key))

    @property
    def size(self) -> int:
        """Embedding rows needed: values + padding + OOV."""
        return len(self.values) + FIRST_ID

    def id(self, value) -> int:
        if _missing(value) or value == "":
            return OOV_ID
        return self._index.get(_key(value), OOV_ID)

    def ids(self, values: Iterable, length: int) -> list[int]:
        """Ids of ``values`` padded with ``PAD_ID`` or truncated to ``length``."""
        out = [self.id(v) for v in values][:length]
        return out + [PAD_ID] * (length - len(out))

    def value(self, idx: int) -> str | None:
        return self.values[idx - FIRST_ID] if idx >= FIRST_ID else None

    def __contains__(self, value) -> bool:
        return value is not None and _key(value) in self._index


def _key(value) -> str:
    """The text form a value is stored under: an integral number is written without a
    fraction, so id 1 read as int, numpy int64 or float 1.0 (a pandas column with a gap
    becomes float) is the same key "1"."""
    if isinstance(value, (bool, str)):
        return str(value)
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return str(value)
    if as_float.is_integer():
        return str(int(as_float))
    return str(value)


def _sort_key(v: str):
    # numeric values in numeric order (ids, years), then text
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


@dataclass
class FeatureDef:
    """One model input: name, dtype, shape and (for categorical ones) its vocabulary."""

    name: str
    dtype: str  # "int64" | "float32"
    shape: list[int]  # [] for a scalar, [n] for a fixed-length list
    vocabulary: str | None = None  # vocabulary name, for categorical features
    vocab_size: int | None = None
    pad_id: int | None = None
    oov_id: int | None = None
    tower: str = "label"  # "user" | "movie" | "label"


@dataclass
class FeatureSpec:
    """Every feature of a TFRecord example, in the order the towers read them."""

    features: list[FeatureDef]
    label: str = "rating"

    def by_name(self) -> dict[str, FeatureDef]:
        return {f.name: f for f in self.features}

    def tower(self, tower: str) -> list[FeatureDef]:
        return [f for f in self.features if f.tower == tower]

    def to_json(self) -> dict:
        return {"label": self.label, "features": [asdict(f) for f in self.features]}

    @classmethod
    def from_json(cls, data: dict) -> "FeatureSpec":
        return cls([FeatureDef(**f) for f in data["features"]], data.get("label", "rating"))


# Which raw attribute feeds each categorical feature (the vocabularies' names).
USER_FEATURES = ("user_id", "gender", "age_bucket", "occupation", "zip_prefix")
MOVIE_FEATURES = ("movie_id", "genres", "title_words", "year_bucket")


@dataclass
class Vocabularies:
    """All vocabularies of a prepared dataset; saved as ``vocabularies.json``."""

    vocabs: dict[str, Vocabulary]

    def __getitem__(self, name: str) -> Vocabulary:
        return self.vocabs[name]

    def to_json(self) -> dict:
        return {name: v.values for name, v in self.vocabs.items()}

    @classmethod
    def from_json(cls, data: dict) -> "Vocabularies":
        return cls({name: Vocabulary(name, list(values)) for name, values in data.items()})

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, ensure_ascii=False)

    @classmethod
    def load(cls, path) -> "Vocabularies":
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(json.load(fh))


@dataclass
class FeatureEncoder:
    """Encodes a user or movie into the model's integer features; one instance, everywhere.

    Args:
        vocabs: the prepared dataset's vocabularies.
        settings: ``prepare.features`` of the config used at prepare time (from the manifest).
    """

    vocabs: Vocabularies
    title_length: int
    max_genres: int
    zip_prefix_length: int
    age_buckets: list[int]
    year_bucket_width: int
    title_scheme: dict = field(default_factory=lambda: dict(LEGACY_TITLE_TOKENS))  # see title_tokens

    @classmethod
    def from_settings(cls, vocabs: Vocabularies, settings: dict) -> "FeatureEncoder":
        return cls(vocabs, settings["title_length"], settings["max_genres"], settings["zip_prefix_length"],
                   list(settings["age_buckets"]), settings["year_bucket_width"],
                   dict(settings.get("title_tokens") or LEGACY_TITLE_TOKENS))

    def title_tokens(self, title) -> list[str]:
        """The title's tokens by the manifest's tokenizer settings (the same at prepare and serving)."""
        return title_tokens(title, self.title_scheme)

    def user(self, user_id, gender, age, occupation, zipcode) -> dict[str, int]:
        """User features; ``user_id=None`` (a new user) maps to the OOV id."""
        v = self.vocabs
        return {
            "user_id": v["user_id"].id(user_id),
            "gender": v["gender"].id(gender),
            "age_bucket": v["age_bucket"].id(age_bucket(age, self.age_buckets)),
            "occupation": v["occupation"].id(None if _missing(occupation) else str(occupation).lower()),
            "zip_prefix": v["zip_prefix"].id(zip_prefix(zipcode, self.zip_prefix_length)),
        }

    def movie(self, movie_id, title, genres, year) -> dict[str, int | list[int]]:
        """Movie features; ``movie_id=None`` (a new movie) maps to the OOV id."""
        v = self.vocabs
        return {
            "movie_id": v["movie_id"].id(movie_id),
            "genres": v["genres"].ids(split_genres(genres), self.max_genres),
            "title_words": v["title_words"].ids(self.title_tokens(title), self.title_length),
            "year_bucket": v["year_bucket"].id(year_bucket(year, self.year_bucket_width)),
        }

    def spec(self) -> FeatureSpec:
        v = self.vocabs

        def cat(name, tower, shape=()):
            return FeatureDef(name, "int64", list(shape), name, v[name].size, PAD_ID, OOV_ID, tower)

        return FeatureSpec([
            cat("user_id", "user"), cat("gender", "user"), cat("age_bucket", "user"),
            cat("occupation", "user"), cat("zip_prefix", "user"),
            cat("movie_id", "movie"), cat("genres", "movie", [self.max_genres]),
            cat("title_words", "movie", [self.title_length]), cat("year_bucket", "movie"),
            FeatureDef("rating", "float32", [], tower="label"),
        ])


def encoded_columns(frame, names: list[str]) -> dict:
    """The ``enc_<name>`` columns of a prepared users/movies table as int64 arrays ([N] or [N, L])."""
    import numpy as np

    out = {}
    for name in names:
        col = frame[ENC + name].to_numpy()
        out[name] = np.stack(col).astype(np.int64) if col.dtype == object else col.astype(np.int64)
    return out


def build_vocabularies(users: Iterable[dict], movies: Iterable[dict], settings: dict,
                       train_user_ids: Iterable[int], train_movie_ids: Iterable[int]) -> Vocabularies:
    """Vocabularies of the (cleaned) users and movies tables.

    Attribute vocabularies (gender, occupation, genres, title words, ...) come from the
    users and movies tables. The id vocabularies hold only the ids that have ratings in
    the training split: a user or movie the model never trained on gets the OOV id, so the
    cold-start test sets are encoded exactly like a brand-new user or movie at serving.
    """
    users, movies = list(users), list(movies)
    scheme = settings.get("title_tokens") or LEGACY_TITLE_TOKENS
    words: list[str] = []
    for m in movies:
        words.extend(title_tokens(m["title"], scheme))
    genres: list[str] = []
    for m in movies:
        genres.extend(split_genres(m["genres"]))
    return Vocabularies({
        "user_id": Vocabulary.build("user_id", train_user_ids),
        "gender": Vocabulary.build("gender", (u["gender"] for u in users)),
        "age_bucket": Vocabulary.build("age_bucket", (age_bucket(u["age"], settings["age_buckets"]) for u in users)),
        "occupation": Vocabulary.build("occupation", (u["occupation"] for u in users)),
        "zip_prefix": Vocabulary.build("zip_prefix", (zip_prefix(u["zip"], settings["zip_prefix_length"]) for u in users)),
        "movie_id": Vocabulary.build("movie_id", train_movie_ids),
        "genres": Vocabulary.build("genres", genres),
        "title_words": Vocabulary.build("title_words", words, settings["title_min_count"]),
        "year_bucket": Vocabulary.build("year_bucket", (year_bucket(m["year"], settings["year_bucket_width"]) for m in movies)),
    })
