"""``recsys data synth``: MovieLens-shaped files with structure a model can learn.

The hidden model (all of it seeded, so one seed gives byte-identical files):

* 18 ML-1M genres, each with a latent vector ``g`` (``factors`` wide).
* A movie has 1 to 3 genres (Drama and Comedy most common); its taste vector is the mean
  of its genres' vectors plus noise, its quality bias ``b_m ~ N(0, 0.35)``; its popularity
  is log-normal (sigma 1.6) and rises with quality, so a few movies take most ratings;
  its title is made of words from its genres' word lists (plus common words) and its
  release year (skewed to recent years).
* A user's genre preferences are the sum of gender, age-bucket and occupation effects
  plus personal noise; the taste vector is those preferences mapped through the genre
  vectors, so demographics shift what a user likes. Activity (ratings per user) is
  log-normal too, with at least ``min(20, ratings // users)`` ratings each.
* rating = clip(round(3.55 + b_u + b_m + <u, m> + N(0, noise))), in 1..5 stars
  (half stars for ``ml-latest``); timestamps increase within each user.

Beside the MovieLens files, ``expected_ratings.parquet`` holds each rating's expected value
under the hidden model, ``E[stars | user, movie]`` (the noise and the rounding integrated
out). No model can predict a rating better, in squared error, than this expectation, so its
RMSE on a test split is the data's noise floor (:func:`noise_floor_rmse`; ``recsys
evaluate`` reports it beside the models when the raw data carries the file).

Generation runs in blocks of 1,024 users, each with its own RNG stream (so output does
not depend on the chunk size) and is flushed to disk every ``chunk_ratings`` ratings, so
memory stays flat however many ratings are asked for.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.datasets.formats import ML1M_AGE_BUCKETS
from recsys.outputs import replacing

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
_GENRE_FREQ = np.array([8, 5, 2, 3, 12, 4, 2, 15, 2, 1, 4, 2, 2, 6, 3, 6, 2, 1], dtype=np.float64)
_AGE_FREQ = np.array([3, 18, 35, 20, 9, 8, 7], dtype=np.float64)
_SYLLABLES = ("ka", "lo", "mi", "ran", "te", "vos", "dur", "el", "fin", "gar", "hal", "is",
              "jor", "ke", "lun", "mar", "nor", "os", "pel", "qua", "ros", "sil", "tor", "ul")
_COMMON = ("the", "of", "a", "night", "day", "return", "last", "story", "man", "woman",
           "city", "love", "time", "world", "house", "road", "game", "secret", "life", "dark")
_BLOCK_USERS = 1024
_MU = 3.55
EXPECTED_RATINGS = "expected_ratings.parquet"  # (user_id, movie_id, expected_rating): see the module docstring


@dataclass
class SynthSummary:
    dest: Path
    format: str
    ratings: int
    users: int
    movies: int
    seconds: float


def _genre_words(rng: np.random.Generator, per_genre: int = 24) -> list[list[str]]:
    words = []
    for _ in GENRES:
        words.append([
            "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
            for _ in range(per_genre)
        ])
    return words


class _World:
    """The hidden factors shared by every user block (movies, genres, demographic effects)."""

    def __init__(self, movies: int, factors: int, seed: int):
        rng = np.random.default_rng([seed, 0])
        k = factors
        self.genre_vec = rng.normal(0, 1.0 / np.sqrt(k), size=(len(GENRES), k)) * 1.6
        n_genres = rng.choice([1, 2, 3], size=movies, p=[0.45, 0.38, 0.17])
        p = _GENRE_FREQ / _GENRE_FREQ.sum()
        # Distinct genres drawn by frequency without replacement (Gumbel top-k, vectorised).
        keys = np.log(p)[None, :] + rng.gumbel(size=(movies, len(GENRES)))
        ranked = np.argsort(-keys, axis=1)
        self.movie_genres = [np.sort(ranked[i, :n]) for i, n in enumerate(n_genres)]
        onehot = np.zeros((movies, len(GENRES)))
        for i, gs in enumerate(self.movie_genres):
            onehot[i, gs] = 1.0 / len(gs)
        self.movie_vec = (onehot @ self.genre_vec + rng.normal(0, 0.35 / np.sqrt(k), size=(movies, k))).astype(np.float32)
        self.movie_bias = rng.normal(0, 0.35, size=movies).astype(np.float32)
        log_pop = rng.normal(0, 1.6, size=movies) + 1.2 * self.movie_bias
        pop = np.exp(log_pop - log_pop.max())
        self.popularity = pop / pop.sum()
        self.pop_cdf = np.cumsum(self.popularity)
        self.pop_cdf[-1] = 1.0
        self.year = (1920 + np.floor(100 * rng.beta(4.0, 1.4, size=movies))).astype(np.int64)
        words = _genre_words(rng)
        self.titles = []
        for i, gs in enumerate(self.movie_genres):
            n = int(rng.integers(1, 5))
            title = []
            for _ in range(n):
                if rng.random() < 0.7:
                    g = gs[int(rng.integers(len(gs)))]
                    title.append(words[g][int(rng.integers(len(words[g])))])
                else:
                    title.append(_COMMON[int(rng.integers(len(_COMMON)))])
            text = " ".join(w.capitalize() for w in title)
            if n > 1 and rng.random() < 0.05:  # ML's "Title, The" form (a comma inside the title)
                text = f"{text}, The"
            self.titles.append(f"{text} ({self.year[i]})")
        # Demographic effects on genre preference.
        self.gender_eff = rng.normal(0, 0.8, size=(2, len(GENRES)))
        self.age_eff = rng.normal(0, 0.6, size=(len(ML1M_AGE_BUCKETS), len(GENRES)))
        self.occ_eff = rng.normal(0, 0.4, size=(21, len(GENRES)))


def _user_counts(total: int, users: int, movies: int, seed: int) -> np.ndarray:
    """Ratings per user: a floor for everyone plus a log-normal share of the rest, capped."""
    rng = np.random.default_rng([seed, 1])
    cap = max(1, min(movies, int(movies * 0.6)))
    if total > users * cap:
        raise ValueError(f"{total} ratings cannot fit {users} users x {cap} movies each; add users or movies")
    floor = min(20, total // users, cap)
    counts = np.full(users, floor, dtype=np.int64)
    weights = np.exp(rng.normal(0, 1.0, size=users))
    remaining = total - counts.sum()
    while remaining > 0:
        room = cap - counts
        w = np.where(room > 0, weights, 0.0)
        add = rng.multinomial(remaining, w / w.sum())
        add = np.minimum(add, room)
        counts += add
        remaining = total - counts.sum()
    return counts


def _sample_movies(rng: np.random.Generator, world: _World, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct movies for each user of a block, drawn by popularity; returns (user_idx, movie)."""
    movies = len(world.popularity)
    need = counts.copy()
    pairs_u, pairs_m = [], []
    seen = np.empty(0, dtype=np.int64)
    for _ in range(60):
        if need.sum() == 0:
            break
        draws = np.ceil(need * 1.25).astype(np.int64) + 2 * (need > 0)
        users = np.repeat(np.arange(len(counts)), draws)
        cand = np.searchsorted(world.pop_cdf, rng.random(len(users)), side="right")
        cand = np.minimum(cand, movies - 1)
        key = users.astype(np.int64) * movies + cand
        key, first = np.unique(key, return_index=True)
        fresh = ~np.isin(key, seen)
        key = key[fresh]
        key = key[np.argsort(first[fresh], kind="stable")]  # keep draw order
        users = key // movies
        order = np.argsort(users, kind="stable")
        key, users = key[order], users[order]
        rank = np.arange(len(key)) - np.searchsorted(users, users, side="left")
        keep = rank < need[users]
        key = key[keep]
        pairs_u.append(key // movies)
        pairs_m.append(key % movies)
        seen = np.union1d(seen, key)
        need -= np.bincount(key // movies, minlength=len(counts))
    for u in np.flatnonzero(need > 0):  # users rating much of the catalogue: fill uniformly
        taken = seen[(seen // movies) == u] % movies
        free = np.setdiff1d(np.arange(movies), taken)
        pick = rng.choice(free, size=need[u], replace=False)
        pairs_u.append(np.full(len(pick), u))
        pairs_m.append(pick)
    u = np.concatenate(pairs_u)
    m = np.concatenate(pairs_m)
    order = np.argsort(u, kind="stable")
    return u[order], m[order]


def _write_movies(world: _World, dest: Path, fmt: str) -> None:
    if fmt == "ml-1m":
        with open(dest / "movies.dat", "w", encoding="latin-1") as fh:
            for i, (title, gs) in enumerate(zip(world.titles, world.movie_genres)):
                fh.write(f"{i + 1}::{title}::{'|'.join(GENRES[g] for g in gs)}\n")
    else:
        import csv

        with open(dest / "movies.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["movieId", "title", "genres"])
            for i, (title, gs) in enumerate(zip(world.titles, world.movie_genres)):
                writer.writerow([i + 1, title, "|".join(GENRES[g] for g in gs)])


def _format_lines(cols: list[np.ndarray], sep: str) -> bytes:
    """Join integer/float columns into text lines, vectorised through pyarrow's CSV writer."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    arrays, names = [], []
    for i, col in enumerate(cols):
        if i:
            # "::" is two ':' delimiters around an empty (null) column.
            for _ in range(len(sep) - 1):
                arrays.append(pa.nulls(len(col), pa.int8()))
                names.append(f"n{i}_{len(arrays)}")
        arrays.append(pa.array(col))
        names.append(f"c{i}")
    sink = pa.BufferOutputStream()
    opts = pacsv.WriteOptions(include_header=False, delimiter=sep[0], quoting_style="none")
    pacsv.write_csv(pa.table(arrays, names=names), sink, opts)
    return sink.getvalue().to_pybytes()


def expected_stars(x: np.ndarray, noise: float, fmt: str) -> np.ndarray:
    """``E[stars]`` for noiseless scores ``x`` [N] when stars = clip(round(x + N(0, noise))).

    Stars step up by ``step`` at each threshold ``t`` (a half-way point between two star values),
    so ``E[stars] = lowest + step * sum_t P(x + e > t) = lowest + step * sum_t Phi((x - t) / noise)``.
    """
    from scipy.special import ndtr

    lowest, highest, step = (1.0, 5.0, 1.0) if fmt == "ml-1m" else (0.5, 5.0, 0.5)
    thresholds = np.arange(lowest + step / 2, highest, step)
    x = np.asarray(x, np.float64)[:, None]
    return (lowest + step * ndtr((x - thresholds[None, :]) / noise).sum(axis=1)).astype(np.float32)


def noise_floor_rmse(raw_dir: str | Path, pairs) -> dict | None:
    """The noise floor on ``pairs`` (a DataFrame of raw ``user_id``, ``movie_id``, ``rating``): RMSE
    of the hidden model's expected ratings, and how many pairs it covers; None when ``raw_dir`` holds
    no ``expected_ratings.parquet`` (not synthetic data). Reads the file in row groups, keeping only
    the expected values of the requested pairs (memory: the pairs plus one row group)."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(raw_dir) / EXPECTED_RATINGS
    if not path.is_file() or not all(pd.api.types.is_integer_dtype(pairs[c]) for c in ("user_id", "movie_id")):
        return None
    key = pairs.user_id.to_numpy(np.int64) * (1 << 32) + pairs.movie_id.to_numpy(np.int64)
    wanted = pd.Index(np.unique(key))
    found_keys, found_values = [], []
    reader = pq.ParquetFile(path)
    for i in range(reader.num_row_groups):
        t = reader.read_row_group(i).to_pandas()
        k = t.user_id.to_numpy(np.int64) * (1 << 32) + t.movie_id.to_numpy(np.int64)
        hit = wanted.get_indexer(k) >= 0
        found_keys.append(k[hit])
        found_values.append(t.expected_rating.to_numpy(np.float64)[hit])
    expected = pd.Series(np.concatenate(found_values), index=np.concatenate(found_keys))
    expected = expected[~expected.index.duplicated()]  # a pair rated twice has one expectation
    e = expected.reindex(key).to_numpy()
    covered = ~np.isnan(e)
    err = pairs.rating.to_numpy(np.float64)[covered] - e[covered]
    return {"rmse": float(np.sqrt(np.mean(err ** 2))) if covered.any() else float("nan"),
            "mae_of_expectation": float(np.mean(np.abs(err))) if covered.any() else float("nan"),
            "pairs": int(covered.sum()), "missing": int((~covered).sum())}


def generate(dest: str | Path, ratings: int, users: int, movies: int, fmt: str = "ml-1m",
             seed: int = 0, factors: int = 16, noise: float = 0.6, chunk_ratings: int = 1_000_000,
             progress: bool = True) -> SynthSummary:
    """Write a synthetic MovieLens dataset of exactly ``ratings`` ratings into ``dest``.

    Files: ml-1m: ratings.dat, users.dat, movies.dat; ml-latest: ratings.csv, movies.csv.
    """
    started = time.time()
    if ratings < users:
        raise ValueError(f"{ratings:,} ratings for {users:,} users: every synthetic user rates at least one movie, "
                         f"so give at least as many ratings as users (--ratings {users:,} or more, or fewer --users)")
    counts = _user_counts(ratings, users, movies, seed)
    with replacing(dest, "synth", signature=("SYNTH.json",)) as tmp:
        written = _generate_into(Path(tmp), counts, ratings, users, movies, fmt, seed, factors, noise,
                                 chunk_ratings, progress, started)
    return SynthSummary(Path(dest), fmt, written, users, movies, time.time() - started)


def _generate_into(dest: Path, counts: np.ndarray, ratings: int, users: int, movies: int, fmt: str, seed: int,
                   factors: int, noise: float, chunk_ratings: int, progress: bool, started: float) -> int:
    """Write every file of :func:`generate` into ``dest`` (a fresh directory); return the ratings written."""
    world = _World(movies, factors, seed)
    _write_movies(world, dest, fmt)
    sep = "::" if fmt == "ml-1m" else ","
    rating_path = dest / ("ratings.dat" if fmt == "ml-1m" else "ratings.csv")
    rating_fh = open(rating_path, "wb")
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected_schema = pa.schema([("user_id", pa.int64()), ("movie_id", pa.int64()), ("expected_rating", pa.float32())])
    expected_fh = pq.ParquetWriter(dest / EXPECTED_RATINGS, expected_schema)
    user_fh = open(dest / "users.dat", "wb") if fmt == "ml-1m" else None
    if fmt == "ml-latest":
        rating_fh.write(b"userId,movieId,rating,timestamp\n")
    age_p = _AGE_FREQ / _AGE_FREQ.sum()
    buffer: list[bytes] = []
    buffered = written = 0
    last_report = time.time()
    try:
        for block_start in range(0, users, _BLOCK_USERS):
            block_end = min(users, block_start + _BLOCK_USERS)
            n = block_end - block_start
            rng = np.random.default_rng([seed, 2, block_start // _BLOCK_USERS])
            gender = rng.random(n) < 0.28  # True: F
            age_idx = rng.choice(len(ML1M_AGE_BUCKETS), size=n, p=age_p)
            occ = rng.integers(0, 21, size=n)
            pref = (world.gender_eff[gender.astype(int)] + world.age_eff[age_idx] + world.occ_eff[occ]
                    + rng.normal(0, 0.7, size=(n, len(GENRES))))
            uvec = (pref @ world.genre_vec * 0.55).astype(np.float32)
            ubias = rng.normal(0, 0.3, size=n).astype(np.float32)
            uidx, midx = _sample_movies(rng, world, counts[block_start:block_end])
            # the same sums in the same order as with the noise inline, so a seed's files stay byte-identical
            noiseless = (_MU + ubias[uidx] + world.movie_bias[midx]
                         + np.einsum("ij,ij->i", uvec[uidx], world.movie_vec[midx]))
            score = noiseless + rng.normal(0, noise, size=len(uidx)).astype(np.float32)
            if fmt == "ml-1m":
                stars = np.clip(np.rint(score), 1, 5).astype(np.int64)
            else:
                stars = np.clip(np.rint(score * 2) / 2, 0.5, 5.0)
            start = rng.integers(946_684_800, 1_514_764_800, size=n)  # 2000-01-01 .. 2018-01-01
            gaps = rng.exponential(3600.0 * 24 * rng.lognormal(0.5, 1.0, size=n)[uidx] / 10)
            gaps = gaps.astype(np.int64) + 1
            # timestamps increase within each user: cumulative gaps from the user's start
            csum = np.cumsum(gaps)
            first = np.searchsorted(uidx, np.arange(n), side="left")
            offset = np.where(first < len(csum), csum[np.maximum(first - 1, 0)] * (first > 0), 0)
            ts = start[uidx] + csum - offset[uidx]
            buffer.append(_format_lines([uidx + block_start + 1, midx + 1, stars, ts], sep))
            buffered += len(uidx)
            # one row group per block of users, so the file does not depend on chunk_ratings either
            expected_fh.write_table(pa.table(
                [pa.array(uidx + block_start + 1, pa.int64()), pa.array(midx + 1, pa.int64()),
                 pa.array(expected_stars(noiseless, noise, fmt))], schema=expected_schema))
            if user_fh is not None:
                zips = rng.integers(10000, 99999, size=n)
                lines = "".join(
                    f"{block_start + i + 1}::{'F' if gender[i] else 'M'}::{ML1M_AGE_BUCKETS[age_idx[i]]}::{occ[i]}::{zips[i]}\n"
                    for i in range(n)
                )
                user_fh.write(lines.encode("latin-1"))
            if buffered >= chunk_ratings or block_end == users:
                for part in buffer:
                    rating_fh.write(part)
                written += buffered
                buffer, buffered = [], 0
                now = time.time()
                if progress and (now - last_report > 2 or block_end == users):
                    rate = written / max(now - started, 1e-9)
                    print(f"[synth] {written:,} / {ratings:,} ratings ({100 * written / ratings:.0f}%), "
                          f"{rate:,.0f} ratings/s", file=sys.stderr, flush=True)
                    last_report = now
    finally:
        rating_fh.close()
        expected_fh.close()
        if user_fh is not None:
            user_fh.close()
    (dest / "SYNTH.json").write_text(json.dumps({
        "format": fmt, "ratings": int(ratings), "users": users, "movies": movies, "seed": seed,
        "factors": factors, "noise": noise, "generator": "recsys.datasets.synth",
    }, indent=2))
    return written
