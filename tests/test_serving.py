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
from tests.conftest import ROOT, training_log_share

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
                 "prepare.examples_per_record=32", "model.autoencoder.epochs=20",  # the blends, fitted briefly
                 "model.history_autoencoder.epochs=20"]
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
    retrieval score plus the popularity prior (times the temperature) for a model trained with the
    retrieval loss, plus the history autoencoder's ``s k_u k_m (<h_u, W_m> + d_m)`` from its tables."""
    import tensorflow as tf

    from recsys.features import encoded_columns
    from recsys.models import load_model

    tm = load_model(cfg.paths.model)
    model = tm.model
    out = np.empty((len(user_rows), len(movies)), np.float32)
    rank = np.empty_like(out)
    mcols = encoded_columns(movies, tm.tower_names("movie"))
    log_share = training_log_share(cfg.paths.prepared, mcols["movie_id"])  # the served popularity term's q_m
    ucols = encoded_columns(user_rows, tm.tower_names("user"))
    for i in range(len(user_rows)):
        x = {n: tf.constant(np.repeat(v[i], len(movies)), tf.int64) for n, v in ucols.items()}
        x.update({n: tf.constant(v, tf.int64) for n, v in mcols.items()})
        out[i] = model.score(x).numpy()
        u, _, mv, _ = (t.numpy() for t in (*model.user_tower(x), *model.movie_tower(x)))
        _, _, u_r = model.user_tower.heads(x)
        _, _, m_r = model.movie_tower.heads(x)
        prior = model.movie_prior(x["movie_id"]).numpy()[:, 0] + model.cfg.retrieval_popularity * log_share
        rank[i] = (u * mv).sum(1) + (u_r.numpy() * m_r.numpy()).sum(1) + model.cfg.retrieval_temperature * prior
        dae = model.history_autoencoder
        if dae is not None:
            uid, mid = int(ucols["user_id"][i]), mcols["movie_id"]
            rank[i] += float(dae.share.numpy()) * dae.user_known.numpy()[uid] * dae.movie_known.numpy()[mid] * (
                dae.decoder.numpy()[mid] @ dae.codes.numpy()[uid] + dae.decoder_bias.numpy()[mid])
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
    assert rec.info["kind"] == "rating" and rec.rates
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
    scores = rec.offset + rec._us @ rec._ms.T
    ranking = rec._ur @ rec._mr.T
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


def test_export_foldin_refines_each_users_rank_vector_from_its_movies(served, tmp_path):
    """export.foldin_weight > 0: every user's rank vector becomes u + w (|u| / |x*|) x*, x* the
    implicit-ALS step over the exported movie rank vectors and the user's train + validation movies
    (found here as the least-squares solution of the dense weighted objective, written as one
    stacked system); score vectors, movie vectors and the version stay as exported without it."""
    import dataclasses

    from recsys.export import export_vectors, load_vectors

    settings = dataclasses.replace(served.export, foldin_weight=0.5)
    # batches of 100 users: the rows checked below lie in three different batches
    info = export_vectors(served.paths.model, served.paths.prepared, tmp_path / "vectors", batch=100, settings=settings)
    plain, folded = load_vectors(served.paths.vectors), load_vectors(tmp_path / "vectors")
    assert info["foldin"] == {"weight": 0.5, "unobserved_weight": settings.foldin_unobserved_weight,
                              "ridge": settings.foldin_ridge, "users": 943}
    assert load_vectors(served.paths.vectors)["info"]["foldin"] is None
    np.testing.assert_array_equal(plain["users"]["ids"], folded["users"]["ids"])
    # the towers run in batches of another size here: the same vectors up to float32 rounding
    np.testing.assert_allclose(plain["users"]["score"], folded["users"]["score"], rtol=1e-5, atol=1e-6)
    for name in ("score", "rank", "similarity"):
        np.testing.assert_allclose(plain["movies"][name], folded["movies"][name], rtol=1e-5, atol=1e-6)
    prepared = Path(served.paths.prepared)
    seen = pd.concat([pd.read_parquet(prepared / f"ratings_{s}", columns=["user_id", "movie_id"])
                      for s in ("train", "valid")])
    V = plain["movies"]["rank"].astype(np.float64)
    mrow = pd.Series(np.arange(len(V)), index=plain["movies"]["ids"])
    w0, lam = settings.foldin_unobserved_weight, settings.foldin_ridge
    for row in (0, 500, 942):
        user = plain["users"]["ids"][row]
        rated = np.zeros(len(V), bool)
        rated[mrow.loc[seen.movie_id[seen.user_id == user]].to_numpy()] = True
        root = np.sqrt(np.where(rated, 1.0, w0))
        # argmin_x sum_m weight_m (rated_m - <V_m, x>)^2 + lam |x|^2
        system = np.vstack([root[:, None] * V, np.sqrt(lam) * np.eye(V.shape[1])])
        step = np.linalg.lstsq(system, np.r_[root * rated, np.zeros(V.shape[1])], rcond=None)[0]
        u = plain["users"]["rank"][row].astype(np.float64)
        want = u + 0.5 * np.linalg.norm(u) / np.linalg.norm(step) * step
        np.testing.assert_allclose(folded["users"]["rank"][row], want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
        assert np.abs(folded["users"]["rank"][row] - u).max() > 1e-2
    # the index built from them says so, and serves the folded vectors
    from recsys.serving import Recommender, build_serving_dir

    paths = dataclasses.replace(served.paths, vectors=str(tmp_path / "vectors"), index=str(tmp_path / "index"))
    build_serving_dir(dataclasses.replace(served, paths=paths))
    rec = Recommender.load(tmp_path / "index")
    assert "implicit-ALS fold-in, weight 0.5" in rec.ranked_by
    assert json.loads((tmp_path / "index" / "index.json").read_text())["foldin"] == info["foldin"]
    user = int(plain["users"]["ids"][500])
    exclude = [np.flatnonzero(np.isin(plain["movies"]["ids"], seen.movie_id[seen.user_id == user]))]
    top = rec.top_k_rows(np.array([500]), 10, exclude)[0]
    scores = folded["movies"]["rank"].astype(np.float64) @ folded["users"]["rank"][500].astype(np.float64)
    scores[exclude[0]] = -np.inf
    np.testing.assert_array_equal(np.sort(top), np.sort(np.argsort(-scores)[:10]))


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
    assert info["indexes"]["movies_ip"]["vectors"] == "movie rank" and info["kind"] == "rating"
    d, k = served.model.output_dim, served.model.autoencoder.units
    assert k > 0  # conf/ml-100k.yaml: the score vectors carry the item autoencoder's blend
    # [u, b_u, 1] and the blend's [a W_u, a d_u, -a [u, b_u, 1], -a mu]
    assert info["indexes"]["users_ip"]["dimension"] == (d + 2) + k + 1 + (d + 2) + 1
    # [m, m_r, T prior] and the history autoencoder's [W_m, d_m]
    assert info["indexes"]["movies_ip"]["dimension"] == (served.model.output_dim + served.model.retrieval_dim + 1
                                                         + served.model.history_autoencoder.units + 1)
    assert (Path(served.paths.index) / info["model"] / "model.json").is_file()  # the artifact travels inside


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite_info(directory: Path, change) -> None:
    """Edit index.json and re-seal it (new file checksums, new self-checksum): what a careless
    hand edit or a mixed-up deployment would produce, with every checksum 'valid'."""
    from recsys.checksums import json_digest
    from recsys.export import sha256_file

    info = json.loads((directory / "index.json").read_text())
    change(info)
    info["files"] = {name: sha256_file(directory / name) for name in info["files"]}
    info["sha256"] = json_digest(info)
    (directory / "index.json").write_text(json.dumps(info))


CORRUPTIONS = {
    "flipped_faiss_byte": (lambda d: _flip(d / "movies_ip.faiss", -40), "movies_ip.faiss does not match its sha256"),
    "truncated_faiss": (lambda d: (d / "users_ip.faiss").write_bytes((d / "users_ip.faiss").read_bytes()[:1000]),
                        "users_ip.faiss does not match its sha256"),
    "truncated_faiss_resealed": (lambda d: ((d / "users_ip.faiss").write_bytes((d / "users_ip.faiss").read_bytes()[:1000]),
                                           _rewrite_info(d, lambda i: None)), "users_ip.faiss: FAISS cannot read it"),
    "missing_parquet": (lambda d: (d / "movies.parquet").unlink(), "movies.parquet listed in .* is missing"),
    "edited_index_json": (lambda d: (d / "index.json").write_text((d / "index.json").read_text().replace(
        '"score_offset": ', '"score_offset": 1')), "index.json was altered after it was written"),
    "index_json_not_json": (lambda d: (d / "index.json").write_text("{not json"), "index.json: not valid JSON"),
    "swapped_faiss_files": (lambda d: ((d / "movies_cos.faiss").replace(d / "tmp"), (d / "movies_ip.faiss").replace(
        d / "movies_cos.faiss"), (d / "tmp").replace(d / "movies_ip.faiss"), _rewrite_info(d, lambda i: None)),
        r"movies_ip.faiss holds 1682 x \d+ vectors; .* says 1682 x movie rank"),
    "count_mismatch": (lambda d: _rewrite_info(d, lambda i: i["indexes"]["users_ip"].update(count=900)),
                       r"users_ip.faiss holds 943 x"),
    "movie_table_of_other_catalog": (lambda d: (pd.read_parquet(d / "movies.parquet").iloc[:-1].to_parquet(
        d / "movies.parquet"), _rewrite_info(d, lambda i: None)), r"movies.parquet has 1681 rows; .*1682"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_serving_artifacts_are_refused(served, tmp_path, case):
    """Altered, truncated, swapped or mismatched files: a clear ArtifactError at load, never wrong answers."""
    import shutil

    from recsys.errors import ArtifactError
    from recsys.serving import Recommender

    copy = tmp_path / "index"
    shutil.copytree(served.paths.index, copy)
    damage, message = CORRUPTIONS[case]
    damage(copy)
    with pytest.raises(ArtifactError, match=message):
        Recommender.load(copy)


def test_vectors_and_model_of_another_version_are_refused(served, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    from recsys.errors import ArtifactError
    from recsys.export import load_vectors, sha256_file
    from recsys.models import load_model
    from recsys.models.contract import MODEL_JSON, write_weights
    from recsys.serving import Recommender

    # vectors: users.parquet from another model version, vectors.json re-sealed around it
    vec = tmp_path / "vectors"
    shutil.copytree(served.paths.vectors, vec)
    t = pq.read_table(vec / "users.parquet")
    t = t.set_column(t.column_names.index("model_version"), "model_version", pa.array(["0123456789abcdef"] * len(t)))
    pq.write_table(t, vec / "users.parquet")
    info = json.loads((vec / "vectors.json").read_text())
    info["files"]["users.parquet"] = sha256_file(vec / "users.parquet")
    (vec / "vectors.json").write_text(json.dumps(info))
    with pytest.raises(ArtifactError, match="users.parquet holds vectors of model version"):
        load_vectors(vec)
    # cold start: a model directory whose weights are not the ones the index was built from
    model = tmp_path / "model"
    shutil.copytree(served.paths.model, model)
    tm = load_model(model)
    tm.model.user_tower.bias.kernel.assign_add(tf.ones_like(tm.model.user_tower.bias.kernel))
    write_weights(tm.model, model / tm.info["weights"])
    info = json.loads((model / MODEL_JSON).read_text())  # re-sealed: a valid artifact of another version
    info["files"] = {name: sha256_file(model / name) for name in info["files"]}
    (model / MODEL_JSON).write_text(json.dumps(info))
    # refused at load (naming both versions), not at the first cold-start query
    with pytest.raises(ArtifactError, match=rf"the model in {model} is version \w{{16}}, but .*index.json was built "
                                            r"from version \w{16}: .* or rebuild the index"):
        Recommender.load(served.paths.index, model_dir=model)


def test_concurrent_lookups_equal_sequential(rec):
    """16 threads, 100,000 mixed queries (known users, predictions, similar movies, fans,
    new-user profiles): no errors, every answer identical to the sequential one."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    users = rec.users.user_id.to_numpy()
    movies = rec.movies.movie_id.to_numpy()
    kinds = rng.choice(["recommend", "predict", "similar", "who", "profile"], size=100_000,
                       p=[0.45, 0.3, 0.15, 0.095, 0.005])
    u, m, k = rng.choice(users, 100_000), rng.choice(movies, 100_000), rng.integers(1, 21, 100_000)
    occupations = ["student", "engineer", "writer", "retired"]

    def ask(i):
        kind = kinds[i]
        if kind == "recommend":
            return [r["movie_id"] for r in rec.recommend(int(u[i]), k=int(k[i]))]
        if kind == "predict":
            return round(rec.predict(int(u[i]), int(m[i])), 5)
        if kind == "similar":
            return [r["movie_id"] for r in rec.similar_movies(int(m[i]), k=int(k[i]))]
        if kind == "who":
            return [r["user_id"] for r in rec.users_for_movie(int(m[i]), k=int(k[i]))]
        return [r["movie_id"] for r in rec.recommend_for_profile(gender="MF"[i % 2], age=int(18 + i % 50),
                                                                 occupation=occupations[i % 4], k=int(k[i]))]

    t0 = time.perf_counter()
    sequential = [ask(i) for i in range(len(kinds))]
    t1 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        threaded = list(pool.map(ask, range(len(kinds)), chunksize=64))
    t2 = time.perf_counter()
    mismatches = [i for i in range(len(kinds)) if sequential[i] != threaded[i]]
    assert not mismatches, [(kinds[i], sequential[i], threaded[i]) for i in mismatches[:5]]
    print(f"100,000 mixed queries: sequential {len(kinds) / (t1 - t0):,.0f}/s, 16 threads {len(kinds) / (t2 - t1):,.0f}/s")


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


_REBUILD = """
import sys
from recsys.config import load_config
from recsys.export import export_vectors
from recsys.serving import build_serving_dir
cfg = load_config(sys.argv[1], sys.argv[3:])
if sys.argv[2] == "export":
    export_vectors(cfg.paths.model, cfg.paths.prepared, cfg.paths.vectors)
else:
    build_serving_dir(cfg)
"""


@pytest.mark.parametrize("stage", ["export", "index"])
@pytest.mark.parametrize("crash_at", ["written", "swapped"])
def test_export_and_index_killed_mid_swap_leave_a_loadable_output(served, stage, crash_at):
    """Export / index build re-run in a process SIGKILLed at each step of the swap: the vectors and
    the index still load and verify (the previous or the new one, both complete), and the next run
    removes what the killed one left behind."""
    import signal

    from recsys.export import load_vectors
    from recsys.serving import Recommender

    sets = [f"paths.{k}={v}" for k, v in served.to_dict()["paths"].items()] + ["train.epochs=2",
                                                                                "prepare.examples_per_record=32"]
    out = Path(served.paths.vectors if stage == "export" else served.paths.index)
    args = [sys.executable, "-c", _REBUILD, str(ROOT / "conf/ml-100k.yaml"), stage, *sets]
    proc = subprocess.run(args, env=dict(os.environ, PYTHONPATH=str(ROOT), RECSYS_CRASH_AT=crash_at),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(load_vectors(served.paths.vectors)["movies"]["ids"]) == 1682
    loaded = Recommender.load(served.paths.index)
    assert len(loaded.recommend(42, k=10)) == 10
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # the kill's leftovers
    proc = subprocess.run(args, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []
    assert len(Recommender.load(served.paths.index).recommend(42, k=10)) == 10


def test_index_and_vectors_refuse_a_folder_of_other_files(served, tmp_path):
    from recsys.errors import ArtifactError
    from recsys.export import export_vectors
    from recsys.serving import build_serving_dir

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("months of work")
    with pytest.raises(ArtifactError, match=r"paths.index \(.*mine\) is not empty and was not written by recsys index"):
        build_serving_dir(load_config(ROOT / "conf/ml-100k.yaml",
                                      [f"paths.model={served.paths.model}", f"paths.prepared={served.paths.prepared}",
                                       f"paths.vectors={served.paths.vectors}", f"paths.index={folder}"]))
    with pytest.raises(ArtifactError, match=r"paths.vectors \(.*mine\) is not empty and was not written by recsys export"):
        export_vectors(served.paths.model, served.paths.prepared, folder)
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"] and (folder / "thesis.tex").read_text() == "months of work"
