"""Export, FAISS indexes and the Recommender on the real MovieLens-100K with a trained model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.config import load_config
from recsys.features import OOV_ID
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """ML-100K fetched, prepared, trained for 2 epochs, exported and indexed."""
    from recsys.datasets.fetch import fetch_dataset
    from recsys.export import export_vectors
    from recsys.prepare.job import run_prepare
    from recsys.serving import build_serving_dir
    from recsys.spark import get_spark

    base = tmp_path_factory.mktemp("served")
    raw = ROOT / "data" / "raw" / "ml-100k"
    fetch_dataset("ml-100k", raw)  # reuses verified files when present
    overrides = [f"paths.raw={raw}", f"paths.prepared={base}/prepared", f"paths.model={base}/model",
                 f"paths.vectors={base}/vectors", f"paths.index={base}/index", "train.epochs=2",
                 "prepare.examples_per_record=32"]
    cfg = load_config(ROOT / "conf/ml-100k.yaml", overrides)
    spark = get_spark("recsys-serving-tests", "local[2]", "1g", 4)
    try:
        run_prepare(cfg, spark)
    finally:
        spark.stop()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "conf/ml-100k.yaml"),
                           *[a for o in overrides for a in ("--set", o)]], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export_vectors(cfg.paths.model, cfg.paths.prepared, cfg.paths.vectors)
    build_serving_dir(cfg)
    return cfg


@pytest.fixture(scope="module")
def rec(served):
    from recsys.serving import Recommender

    return Recommender.load(served.paths.index)


def _model_scores(cfg, user_rows: pd.DataFrame, movies: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: the trained model's full forward pass on every (user, movie) pair.

    Returns (predicted ratings, ranking scores) [users, movies]: the ranking score is the
    retrieval score for a model trained with the retrieval loss, else the rating itself."""
    import tensorflow as tf

    from recsys.export import TrainedModel
    from recsys.features import encoded_columns

    tm = TrainedModel(cfg.paths.model)
    out = np.empty((len(user_rows), len(movies)), np.float32)
    rank = np.empty_like(out)
    mcols = encoded_columns(movies, tm.tower_names("movie"))
    ucols = encoded_columns(user_rows, tm.tower_names("user"))
    for i in range(len(user_rows)):
        x = {n: tf.constant(np.repeat(v[i], len(movies)), tf.int64) for n, v in ucols.items()}
        x.update({n: tf.constant(v, tf.int64) for n, v in mcols.items()})
        out[i] = tm.model(x, training=False).numpy()
        rank[i] = tm.model.retrieval_score(x).numpy() if tm.ranking == "retrieval" else out[i]
    return out, rank


def test_real_ml100k_ids_are_encoded_one_to_one(served):
    # every rated user and movie of the real files has its own embedding row (an id column
    # read as float once sent them all to OOV: the model then learnt from attributes alone)
    prepared = Path(served.paths.prepared)
    train = pd.read_parquet(prepared / "ratings_train")
    for raw, enc in (("user_id", "user_idx"), ("movie_id", "movie_idx")):
        assert (train[enc] != OOV_ID).all()
        assert train[raw].nunique() == train[enc].nunique() > 900
    users = pd.read_parquet(prepared / "users.parquet")
    assert users.user_id.dtype == np.int64 and users.enc_user_id.nunique() > 900


def test_flat_top10_equals_brute_force_model_scoring(served, rec):
    prepared = Path(served.paths.prepared)
    users = pd.read_parquet(prepared / "users.parquet")
    movies = pd.read_parquet(prepared / "movies.parquet")
    seen = pd.concat([pd.read_parquet(prepared / f"ratings_{s}") for s in ("train", "valid")])
    seen_by_user = seen.groupby("user_id").movie_id.apply(set).to_dict()
    movie_ids = movies.movie_id.to_numpy()
    sample = users.iloc[:: max(1, len(users) // 60)]  # full forward passes: 60 users x 1,682 movies
    model_scores, ranking = _model_scores(served, sample, movies)
    assert rec.info["ranking"] == "retrieval"   # the default config trains with the retrieval loss
    checked = 0
    for (_, u), scores, rank in zip(sample.iterrows(), model_scores, ranking):
        unseen = np.array([m not in seen_by_user.get(u.user_id, set()) for m in movie_ids])
        order = np.argsort(-np.where(unseen, rank, -np.inf), kind="stable")[:10]
        got = rec.recommend(int(u.user_id), k=10)
        got_rows = [int(np.flatnonzero(movie_ids == r["movie_id"])[0]) for r in got]
        assert [r["movie_id"] for r in got] == movie_ids[order].tolist() or \
            np.allclose(np.sort(rank[got_rows]), np.sort(rank[order]), rtol=1e-4, atol=1e-3)  # exact ties may swap
        np.testing.assert_allclose([r["score"] for r in got], scores[got_rows], atol=1e-4)
        assert rec.predict(int(u.user_id), int(movie_ids[0])) == pytest.approx(float(scores[0]), abs=1e-4)
        checked += 1
    assert checked == len(sample)


def test_every_user_top10_equals_numpy_brute_force(rec):
    """All 943 users: FAISS Flat top-10 == numpy scoring of every unseen movie with the exported vectors."""
    scores = rec.mu + rec._bu[:, None] + rec._bm[None, :] + rec._u @ rec._m.T
    ranking = rec._rm[None, :] + rec._u @ rec._m.T
    seen_by_user = pd.read_parquet(rec.directory / "seen.parquet").groupby("user_id").movie_id.apply(np.array)
    for row, user_id in enumerate(rec.users.user_id):
        seen = seen_by_user.get(int(user_id), np.empty(0))
        mask = np.isin(rec.movies.movie_id.to_numpy(), seen)
        top = np.argsort(-np.where(mask, -np.inf, ranking[row]), kind="stable")[:10]
        got = rec.recommend(int(user_id), k=10)
        got_rows = [int(np.flatnonzero(rec.movies.movie_id.to_numpy() == r["movie_id"])[0]) for r in got]
        np.testing.assert_allclose(ranking[row, got_rows], ranking[row, top], atol=1e-4)
        np.testing.assert_allclose([r["score"] for r in got], scores[row, got_rows], atol=1e-4)
        assert len(got) == 10 and not set(r["movie_id"] for r in got) & set(seen.tolist())


def test_cold_start_profiles_and_new_movies(rec):
    a = [r["movie_id"] for r in rec.recommend_for_profile(gender="F", age=22, occupation="student", k=20)]
    b = [r["movie_id"] for r in rec.recommend_for_profile(gender="M", age=60, occupation="retired", k=20)]
    assert a != b
    # a new movie's neighbours share its genres more often than a random movie does
    genres = rec.movies.genres.str.split("|")
    share, base = [], []
    for g in ("Horror", "Children's", "Documentary", "Western", "Musical"):
        sims = rec.similar_to_new_movie(title="Untitled Night", genres=[g], year=1996, k=20)
        share.append(np.mean([g in r["genres"].split("|") for r in sims]))
        base.append(genres.apply(lambda x: g in x).mean())
    assert np.mean(share) > 2 * np.mean(base), (share, base)
    users = rec.users_for_new_movie(title="Untitled Night", genres=["Horror"], k=5)
    assert len(users) == 5 and all("user_id" in u for u in users)


def test_lists_errors_and_index_metadata(served, rec):
    assert len(rec.similar_movies(1, k=10)) == 10 and 1 not in [r["movie_id"] for r in rec.similar_movies(1, k=10)]
    assert len(rec.users_for_movie(1, k=7)) == 7
    liked = rec.also_liked(1, k=10)
    assert len(liked) == 10 and 1 not in [r["movie_id"] for r in liked]
    frame = rec.recommend(1, k=5, as_frame=True)
    assert list(frame.columns) == ["movie_id", "title", "genres", "score"] and len(frame) == 5
    from recsys.serving import UnknownIdError

    with pytest.raises(UnknownIdError, match="unknown user id 99999"):
        rec.recommend(99999)
    with pytest.raises(UnknownIdError, match="unknown movie id -3"):
        rec.similar_movies(-3)
    with pytest.raises(ValueError, match="k must be an integer from 1 to 1682"):
        rec.recommend(1, k=0)
    with pytest.raises(ValueError, match="occupation must be one of"):
        rec.recommend_for_profile(occupation="astronaut")
    info = json.loads((Path(served.paths.index) / "index.json").read_text())
    assert info["indexes"]["movies_ip"]["type"] == "flat" and info["indexes"]["movies_ip"]["recall_at_k"] == 1.0
    assert info["indexes"]["movies_ip"]["vectors"] == "[m, prior]" and info["ranking"] == "retrieval" and info["dimension"] == served.model.output_dim


def test_corrupt_index_is_refused(served, tmp_path):
    import shutil

    from recsys.errors import ArtifactError
    from recsys.serving import Recommender

    copy = tmp_path / "index"
    shutil.copytree(served.paths.index, copy)
    data = bytearray((copy / "movies_ip.faiss").read_bytes())
    data[-40] ^= 0xFF  # a flipped byte in the vector data: FAISS itself would load it
    (copy / "movies_ip.faiss").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="movies_ip.faiss does not match its sha256"):
        Recommender.load(copy)


def test_approximate_index_reaches_target_recall():
    from recsys.indexing import build_index, exact_topk, recall_at_k

    rng = np.random.default_rng(0)
    base = rng.normal(size=(20_000, 16)).astype(np.float32)
    queries = rng.normal(size=(500, 16)).astype(np.float32)
    for factory in ("HNSW32", "IVF64,Flat"):
        built = build_index(base, queries, flat_max=1000, factory=factory, target_recall=0.95, k=10, sample=300)
        assert built.recall >= 0.95 and built.search_param
        _, found = built.index.search(queries[:200], 10)
        assert recall_at_k(found, exact_topk(base, queries[:200], 10)) >= 0.9


def test_cli_prints_titles(served):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sets = [a for o in (f"paths.index={served.paths.index}",) for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "recommend", "--user", "42", "-k", "3", *sets],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "top 3 for user 42" in proc.stdout and proc.stdout.count("\n") == 5
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "similar", "--movie", "1", "--json", *sets],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 10
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "recommend", "--user", "99999", *sets],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown user id 99999")
