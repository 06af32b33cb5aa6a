"""The synthetic generator: real structure, determinism, bounded chunks, readable files."""

import hashlib

import numpy as np
import pytest

from recsys.datasets.readers import read_movielens
from recsys.datasets.synth import EXPECTED_RATINGS, expected_stars, generate, noise_floor_rmse


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    generate(d, ratings=60_000, users=600, movies=800, fmt="ml-1m", seed=3, chunk_ratings=5_000, progress=False)
    return d, read_movielens(d)


def _als(train, n_users, n_movies, k=8, reg=5.0, iters=12):
    """Plain biased matrix factorisation by alternating least squares (numpy)."""
    u, m, r = train
    mu = r.mean()
    rng = np.random.default_rng(0)
    P = rng.normal(0, 0.1, (n_users, k + 2)); Q = rng.normal(0, 0.1, (n_movies, k + 2))
    P[:, k + 1] = 1.0; Q[:, k] = 1.0  # columns k/k+1 carry user and movie biases
    by_u = [np.flatnonzero(u == i) for i in range(n_users)]
    by_m = [np.flatnonzero(m == j) for j in range(n_movies)]
    for _ in range(iters):
        for i, idx in enumerate(by_u):
            if len(idx):
                A = Q[m[idx]][:, [*range(k), k]]; y = r[idx] - mu - Q[m[idx], k + 1]
                sol = np.linalg.solve(A.T @ A + reg * np.eye(k + 1), A.T @ y)
                P[i, :k] = sol[:k]; P[i, k] = sol[k]
        for j, idx in enumerate(by_m):
            if len(idx):
                A = P[u[idx]][:, [*range(k), k + 1]]; y = r[idx] - mu - P[u[idx], k]
                sol = np.linalg.solve(A.T @ A + reg * np.eye(k + 1), A.T @ y)
                Q[j, :k] = sol[:k]; Q[j, k + 1] = sol[k]
    return lambda uu, mm: mu + (P[uu] * Q[mm]).sum(1)


def test_exact_counts_and_valid_values(synth):
    d, t = synth
    assert len(t.ratings) == 60_000 and len(t.users) == 600 and len(t.movies) == 800
    assert set(np.unique(t.ratings["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert not any(r.rejected for r in t.reads.values())
    assert not t.ratings.duplicated(["user_id", "movie_id"]).any()
    assert (t.ratings.groupby("user_id").size() >= 20).all()
    # timestamps increase within each user
    assert (t.ratings.groupby("user_id")["timestamp"].diff().dropna() > 0).all()


def test_matrix_factorisation_beats_global_mean(synth):
    _, t = synth
    r = t.ratings.sample(frac=1.0, random_state=0)
    u = r["user_id"].to_numpy() - 1; m = r["movie_id"].to_numpy() - 1; y = r["rating"].to_numpy(np.float64)
    cut = int(0.8 * len(r))
    predict = _als((u[:cut], m[:cut], y[:cut]), 600, 800)
    rmse_mean = np.sqrt(np.mean((y[cut:] - y[:cut].mean()) ** 2))
    rmse_mf = np.sqrt(np.mean((y[cut:] - np.clip(predict(u[cut:], m[cut:]), 1, 5)) ** 2))
    assert rmse_mf < 0.85 * rmse_mean, (rmse_mf, rmse_mean)


@pytest.mark.parametrize("fmt", ["ml-1m", "ml-latest"])
def test_expected_stars_equal_a_simulation_of_the_rounding(fmt):
    x = np.array([-0.5, 0.9, 1.5, 2.26, 3.55, 4.4, 4.95, 6.0])
    rng = np.random.default_rng(0)
    e = rng.normal(0, 0.6, size=(400_000, 1))
    stars = np.clip(np.rint(x + e), 1, 5) if fmt == "ml-1m" else np.clip(np.rint((x + e) * 2) / 2, 0.5, 5.0)
    np.testing.assert_allclose(expected_stars(x, 0.6, fmt), stars.mean(axis=0), atol=0.005)


def test_noise_floor_is_unbiased_and_below_a_fitted_model(synth):
    d, t = synth
    r = t.ratings.sample(frac=1.0, random_state=0)
    cut = int(0.8 * len(r))
    test = r.iloc[cut:]
    floor = noise_floor_rmse(d, test[["user_id", "movie_id", "rating"]])
    import pandas as pd

    expected = pd.read_parquet(d / EXPECTED_RATINGS)
    assert len(expected) == len(t.ratings)
    joined = test.merge(expected, on=["user_id", "movie_id"], how="left")
    assert floor["pairs"] == len(test) and floor["missing"] == 0
    residual = joined.rating.to_numpy() - joined.expected_rating.to_numpy()
    assert abs(residual.mean()) < 0.02  # the expectation is unbiased
    assert floor["rmse"] == pytest.approx(float(np.sqrt(np.mean(residual ** 2))), rel=1e-5)
    u = r["user_id"].to_numpy() - 1; m = r["movie_id"].to_numpy() - 1; y = r["rating"].to_numpy(np.float64)
    predict = _als((u[:cut], m[:cut], y[:cut]), 600, 800)
    rmse_mf = np.sqrt(np.mean((y[cut:] - np.clip(predict(u[cut:], m[cut:]), 1, 5)) ** 2))
    assert 0.4 < floor["rmse"] < rmse_mf, (floor, rmse_mf)  # noise 0.6 stars, less where clipping
    assert noise_floor_rmse(d / "nowhere", test) is None


def test_popularity_is_long_tailed(synth):
    _, t = synth
    per_movie = np.sort(t.ratings.groupby("movie_id").size().to_numpy())[::-1]
    top10 = per_movie[: len(per_movie) // 10].sum() / per_movie.sum()
    assert top10 > 0.4, top10
    per_user = t.ratings.groupby("user_id").size()
    assert per_user.max() > 4 * per_user.median()


def test_demographics_shift_genre_preferences(synth):
    _, t = synth
    df = t.ratings.merge(t.users, on="user_id").merge(t.movies, on="movie_id")
    df = df.assign(genre=df["genres"].str.split("|")).explode("genre")
    by = df.groupby(["genre", "gender"])["rating"].mean().unstack()
    # some genre is liked differently by women and men (hidden gender effect)
    assert (by["F"] - by["M"]).abs().max() > 0.15


def test_title_words_correlate_with_genres(synth):
    _, t = synth
    mv = t.movies.assign(word=t.movies["title"].str.replace(r" \(\d{4}\)$", "", regex=True).str.lower().str.split())
    mv = mv.explode("word").assign(genre=lambda x: x["genres"].str.split("|")).explode("genre")
    common = {"the", "of", "a", "night", "day", "return", "last", "story", "man", "woman", "city", "love", "time",
              "world", "house", "road", "game", "secret", "life", "dark", "the,"}
    mv = mv[~mv["word"].isin(common)]
    top_share = mv.groupby("word")["genre"].agg(lambda g: g.value_counts(normalize=True).iloc[0])
    # a word belongs to one genre's list: its most common genre covers far more than 1/18
    assert top_share.median() > 0.3


def test_deterministic_per_seed_and_independent_of_chunk_size(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, 8_000, 100, 300, seed=11, chunk_ratings=1_000, progress=False)
    generate(b, 8_000, 100, 300, seed=11, chunk_ratings=100_000, progress=False)
    generate(c, 8_000, 100, 300, seed=12, progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a)["ratings.dat"] != _digest(c)["ratings.dat"]


def test_ml_latest_output_reads_back(tmp_path):
    generate(tmp_path, 5_000, 80, 200, fmt="ml-latest", seed=1, progress=False)
    t = read_movielens(tmp_path)
    assert t.format == "ml-latest" and len(t.ratings) == 5_000
    assert set(np.unique(t.ratings["rating"])) <= set(np.arange(0.5, 5.01, 0.5))
    assert not any(r.rejected for r in t.reads.values())


def test_impossible_request_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot fit"):
        generate(tmp_path, 10_000, 2, 10, progress=False)


def _cli(args, cwd):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    return subprocess.run([sys.executable, "-m", "recsys.cli", "data", "synth", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_synth_default_dest_is_its_own_folder(tmp_path):
    """With the ML-100K config (the CLI's default), synthetic files never land in data/raw/ml-100k."""
    from tests.conftest import ROOT

    proc = _cli(["--config", str(ROOT / "conf/ml-100k.yaml"), "--ratings", "2000", "--users", "50", "--movies", "80"],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data/raw/synth/ratings.dat").is_file() and not (tmp_path / "data/raw/ml-100k").exists()
    assert "to data/raw/synth" in proc.stdout
    # a config made for synthetic data keeps its own paths.raw
    proc = _cli(["--config", str(ROOT / "conf/synth-25m.yaml"), "--ratings", "2000", "--users", "50", "--movies", "80"],
                tmp_path)
    assert proc.returncode == 0 and (tmp_path / "data/raw/synth-25m/ratings.dat").is_file(), proc.stderr


def test_two_formats_in_one_folder_are_refused(ml100k_dir):
    from recsys.datasets.formats import detect_format
    from recsys.errors import DataError

    generate(ml100k_dir.parent / "synth", ratings=2000, users=50, movies=80, progress=False)
    (ml100k_dir / "ratings.dat").write_bytes((ml100k_dir.parent / "synth" / "ratings.dat").read_bytes())
    with pytest.raises(DataError, match=r"more than one MovieLens format: ml-100k \(u.data\) and ml-1m \(ratings.dat\)"):
        detect_format(ml100k_dir)
    assert detect_format(ml100k_dir, "ml-100k").name == "ml-100k"  # naming the format settles it


def test_too_few_ratings_for_the_users_is_one_line_and_writes_nothing(tmp_path):
    from tests.conftest import ROOT

    dest = tmp_path / "big"
    proc = _cli(["--ratings", "1000", "--config", str(ROOT / "conf/synth-25m.yaml"), "--dest", str(dest)], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: 1,000 ratings for 160,000 users: every synthetic user rates at least one movie, so give "
                     "at least as many ratings as users (--ratings 160,000 or more, or fewer --users)"], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no dest, no temporary copy
