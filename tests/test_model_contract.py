"""Contract tests every recommender inherits (LensKit-style mixins).

* :class:`RecommenderContract`: the evaluation interface (``fit``, ``predict``, ``scores``,
  ``top_k``) that every baseline and every served model implements: shapes, exclusions, order.
* :class:`ModelContract`: every trained model (``model.kind``) on top: trained by train.py,
  exported, indexed and served; unknown ids and k bounds; served top-k equal to a numpy brute
  force computed from the raw checkpoint weights (``tf.train.load_checkpoint``, never through
  the code under test): by ``<user rank, movie rank>`` for a factorised model, by the pair
  score of every unseen movie for a model scored by pairs (NeuMF); the artifact round trip
  (moved directories included) to identical scores; strict loading; identical weights on 2
  Horovod ranks.

A new model adds one subclass with its ``kind`` and its numpy forward pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation import Bias, Data, GlobalMean, NeighbourCF, Popularity, SparkALS, SurpriseModel
from recsys.topk_baselines import Ease, ImplicitAls, ItemKnn, Tuned
from tests.conftest import BIN, ENV, ROOT, train_cmd, training_log_share


def _tiny_data() -> Data:
    rng = np.random.default_rng(0)
    n_u, n_m = 30, 20
    pairs = {(int(u), int(m)) for u, m in zip(rng.integers(0, n_u, 300), rng.integers(0, n_m, 300))}
    u, m = map(np.array, zip(*sorted(pairs)))
    r = np.clip(np.round(3 + (u % 3) - (m % 2) + rng.normal(0, 0.3, len(u))), 1, 5)
    frame = pd.DataFrame({"u": u, "m": m, "rating": r})
    return Data(pd.DataFrame({"user_id": range(n_u)}),
                pd.DataFrame({"movie_id": range(n_m), "genres": ["A"] * n_m, "year": [2000] * n_m}),
                frame.iloc[50:], frame.iloc[:50], {}, 1.0, 5.0)


class RecommenderContract:
    """Inherit and define ``make()`` (an unfitted recommender); override ``data`` for other data."""

    def make(self):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def data(self):
        return _tiny_data()

    @pytest.fixture(scope="class")
    def fitted(self, data):
        return self.make().fit(data)

    def test_scores_cover_the_catalog(self, fitted, data):
        if fitted.ranks:
            users = np.arange(min(5, data.n_users))
            assert fitted.scores(users).shape == (len(users), data.n_movies)

    def test_top_k_is_sorted_by_score_and_skips_seen(self, fitted, data):
        if not fitted.ranks:
            return
        seen = data.train.groupby("u").m.apply(np.array).to_dict()
        users = np.array(sorted(data.test.u.unique()))[:8]
        k = 3
        tops = fitted.top_k(users, k, data.seen[users])
        scores = fitted.scores(users)
        assert tops.shape == (len(users), k)
        for row, u in enumerate(users):
            assert not set(tops[row]) & set(seen.get(u, []))
            allowed = np.setdiff1d(np.arange(data.n_movies), seen.get(u, []))
            best = np.sort(scores[row, allowed])[::-1][:k]
            np.testing.assert_allclose(scores[row, tops[row]], best, rtol=1e-5, atol=1e-5)

    def test_predict_one_rating_per_pair(self, fitted, data):
        if fitted.rates:
            p = fitted.predict(data.test.u.to_numpy(), data.test.m.to_numpy())
            assert p.shape == (len(data.test),) and np.isfinite(p).all()


class TestBiasContract(RecommenderContract):
    def make(self):
        return Bias(reg=1.0, iters=10)


class TestPopularityContract(RecommenderContract):
    def make(self):
        return Popularity()


class TestItemCFContract(RecommenderContract):
    def make(self):
        return NeighbourCF(user_based=False, k=5)


class TestUserCFContract(RecommenderContract):
    def make(self):
        return NeighbourCF(user_based=True, k=5)


class TestGlobalMeanContract(RecommenderContract):
    def make(self):
        return GlobalMean()


class TestSurpriseSVDContract(RecommenderContract):
    def make(self):
        return SurpriseModel("SVD", factors=4, epochs=5, learning_rate=0.01, reg=0.05, seed=0)


class TestSurpriseSVDppContract(RecommenderContract):
    def make(self):
        return SurpriseModel("SVD++", factors=4, epochs=3, learning_rate=0.01, reg=0.05, seed=0)


class TestEaseContract(RecommenderContract):
    def make(self):
        return Ease(10.0, max_items=1000)


class TestImplicitItemKnnContract(RecommenderContract):
    def make(self):
        return ItemKnn(5, block_items=7, max_items=1000)


class TestTunedContract(RecommenderContract):
    """A tuned top-k baseline (grid on the validation split, best refitted) is a recommender too."""

    @pytest.fixture(scope="class")
    def data(self):
        d = _tiny_data()
        d.valid = d.train.iloc[-40:].reset_index(drop=True)  # the last training rows are the validation split
        return d

    def make(self):
        return Tuned("EASE", lambda lam: Ease(lam, 1000), [{"lam": 1.0}, {"lam": 100.0}])


@pytest.mark.slow
class TestSparkALSContract(RecommenderContract):
    def make(self):
        return SparkALS(rank=4, reg=0.1, iters=3, seed=0, master="local[1]", driver_memory="1g")


@pytest.mark.slow
class TestSparkImplicitALSContract(RecommenderContract):
    def make(self):
        return ImplicitAls(rank=4, reg=0.1, alpha=1.0, iters=3, seed=0, master="local[1]", driver_memory="1g")


def test_top_k_by_pairs_is_the_same_in_any_block_size_and_plans_choose_by_size():
    """Re-ranking (recsys/reranking.py): blocks of any size give the exact per-query top k by pair
    score; the plan is a full scan up to index.rerank_full_scan_max rows, else the retriever's top."""
    from types import SimpleNamespace

    from recsys.reranking import FULL_SCAN, RERANK, RerankPlan, top_k_by_pairs

    rng = np.random.default_rng(0)
    table = rng.normal(size=(3, 50)).astype(np.float32)  # the pair score of query q with row r

    def score(q, r):
        return table[q, r]

    candidates = [rng.permutation(50)[:n] for n in (50, 7, 0)]
    for block in (1, 13, 10_000):
        rows, scores = top_k_by_pairs(score, candidates, 10, block)
        for q, c in enumerate(candidates):
            best = c[np.argsort(-table[q, c], kind="stable")][:10]
            np.testing.assert_array_equal(rows[q], best)
            np.testing.assert_array_equal(scores[q], table[q, best])
    cfg = SimpleNamespace(rerank_full_scan_max=50, rerank_candidates=20, rerank_block_pairs=64)
    full, rerank = RerankPlan.choose(50, cfg), RerankPlan.choose(51, cfg)
    assert (full.method, rerank.method, rerank.candidates) == (FULL_SCAN, RERANK, 20)
    assert [list(r) for r in full.candidate_rows([np.array([0, 2])], 5, None)] == [[1] + list(range(3, 50))]
    asked = []
    rerank.candidate_rows([np.array([0])], 30, lambda n: asked.append(n) or [np.arange(n)])
    assert asked == [30]  # at least k candidates
    # a query the retriever cannot rank (all-zero vector: a cold-start id) gets every row of the collection
    mixed = rerank.candidate_rows([np.array([0]), np.array([1, 2])], 5, lambda n: [np.arange(3, 3 + n)] * 2,
                                  scan=np.array([False, True]))
    assert list(mixed[0]) == list(range(3, 23)) and list(mixed[1]) == [0] + list(range(3, 51))
    assert RerankPlan.from_json(rerank.to_json()) == rerank


# ---------------------------------------------------------------------------- trained models


SMALL = ["train.batch_size=256", "model.hidden_units=[16]", "model.embedding_dim=8", "model.output_dim=8",
         "model.retrieval_dim=4", "model.bpr.factors=8", "model.neumf.factors=8", "model.neumf.mlp_layers=[16,8]",
         "model.sequential.history_length=5", "model.sequential.embedding_dim=8", "model.sequential.units=8",
         "model.lightgcn.factors=8", "train.threads_per_rank=1"]


def _enc(frame: pd.DataFrame, name: str) -> np.ndarray:
    col = frame["enc_" + name].to_numpy()
    return np.stack(col).astype(np.int64) if col.dtype == object else col.astype(np.int64)


def _raw_weights(model_dir) -> tuple[dict, dict]:
    """(name -> array of every model variable read straight from the checkpoint, model.json)."""
    import tensorflow as tf

    info = json.loads(open(f"{model_dir}/model.json").read())
    reader = tf.train.load_checkpoint(f"{model_dir}/{info['weights']}")
    weights = {k.removeprefix("model/").removesuffix("/.ATTRIBUTES/VARIABLE_VALUE"): reader.get_tensor(k)
               for k in reader.get_variable_to_shape_map() if k.startswith("model/")}
    return weights, info


@pytest.mark.slow
class ModelContract(RecommenderContract):
    """Inherit with ``kind`` and ``numpy_vectors``; the fixtures train, export and index the model."""

    kind = "?"
    extra_sets: tuple[str, ...] = ()  # more --set overrides of this model's config

    def numpy_vectors(self, weights, users: pd.DataFrame, movies: pd.DataFrame, info: dict):
        """From the raw checkpoint values ``weights`` (name -> array): (user rank [U, R], movie rank
        [M, R], scores [U, M]) for the prepared users and movies tables, in numpy alone."""
        raise NotImplementedError

    def numpy_ranking(self, user_rank: np.ndarray, movie_rank: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """[U, M] what served lists order movies by: ``<user rank, movie rank>`` (a factorised model)."""
        return user_rank @ movie_rank.T

    @pytest.fixture(scope="class")
    def served(self, request, train_data, tmp_path_factory):
        from recsys.config import load_config
        from recsys.export import export_vectors
        from recsys.serving import build_serving_dir

        base, overrides = train_data
        tmp = tmp_path_factory.mktemp(f"contract-{self.kind}")
        own = SMALL + [f"model.kind={self.kind}", *self.extra_sets]
        sets = overrides + own + [f"paths.model={tmp}/model", f"paths.vectors={tmp}/vectors", f"paths.index={tmp}/index"]
        proc = subprocess.run(train_cmd(sets, 1, tmp / "model", "--set", "train.epochs=2",
                                        *[a for o in own for a in ("--set", o)]),
                              env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        request.cls.overrides = sets + own
        cfg = load_config(ROOT / "conf/default.yaml", sets)
        export_vectors(cfg.paths.model, cfg.paths.prepared, cfg.paths.vectors)
        build_serving_dir(cfg)
        return cfg

    @pytest.fixture(scope="class")
    def rec(self, served):
        from recsys.serving import Recommender

        return Recommender.load(served.paths.index)

    @pytest.fixture(scope="class")
    def data(self, served):
        from recsys.evaluation import load_data

        return load_data(served.paths.prepared)

    @pytest.fixture(scope="class")
    def fitted(self, served, data):
        from recsys.evaluation import ServedModel

        return ServedModel(served.paths.index).fit(data)

    def test_vector_widths_from_config_match_the_served_vectors(self, served, rec):
        """``vector_widths`` (from the config alone: the FAISS factory checks read it) is what export
        writes and serving holds."""
        from recsys.models import model_class

        widths = model_class(self.kind).vector_widths(served.model)
        assert (widths["score"], widths["rank"]) == (rec._ms.shape[1], rec._mr.shape[1])
        assert (rec._us.shape[1], rec._ur.shape[1]) == (widths["score"], widths["rank"])

    def test_unknown_ids_and_k_bounds(self, rec):
        from recsys.serving import UnknownIdError

        with pytest.raises(UnknownIdError, match="unknown user id 99999"):
            rec.recommend(99999)
        with pytest.raises(UnknownIdError, match="unknown movie id -3"):
            rec.similar_movies(-3)
        with pytest.raises(UnknownIdError, match="unknown movie id 99999"):
            rec.predict(int(rec.users.user_id.iloc[0]), 99999)
        n = len(rec.movies)
        for bad in (0, n + 1, 2.5, True):
            with pytest.raises(ValueError, match=f"k must be an integer from 1 to {n}"):
                rec.recommend(int(rec.users.user_id.iloc[0]), k=bad)
        everything = rec.recommend(int(rec.users.user_id.iloc[0]), k=n, exclude_seen=False)
        assert len(everything) == n and len({r["movie_id"] for r in everything}) == n

    def test_served_top_k_equals_numpy_brute_force_from_raw_weights(self, served, rec):
        prepared = served.paths.prepared
        users = pd.read_parquet(f"{prepared}/users.parquet")
        movies = pd.read_parquet(f"{prepared}/movies.parquet")
        weights, info = _raw_weights(served.paths.model)
        user_rank, movie_rank, scores = self.numpy_vectors(weights, users, movies, info)
        ranking = self.numpy_ranking(user_rank, movie_rank, scores)
        seen = pd.concat([pd.read_parquet(f"{prepared}/ratings_{s}") for s in ("train", "valid")])
        seen_by_user = seen.groupby("user_id").movie_id.apply(set).to_dict()
        movie_ids = movies.movie_id.to_numpy()
        for row, user_id in enumerate(users.user_id):
            unseen = ~np.isin(movie_ids, list(seen_by_user.get(user_id, ())))
            top = np.argsort(-np.where(unseen, ranking[row], -np.inf), kind="stable")[:10]
            got = rec.recommend(int(user_id), k=10)
            got_rows = [int(np.flatnonzero(movie_ids == r["movie_id"])[0]) for r in got]
            assert len(got) == min(10, unseen.sum()) and unseen[got_rows].all()
            # the same movies up to exact ties: the ranking scores of both lists agree
            np.testing.assert_allclose(ranking[row, got_rows], ranking[row, top[:len(got)]], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose([r["score"] for r in got], scores[row, got_rows], rtol=1e-4, atol=1e-4)

    def test_artifact_round_trip_and_moved_directories_give_identical_scores(self, served, rec, tmp_path):
        from recsys.features import encoded_columns
        from recsys.models import load_model
        from recsys.serving import Recommender

        movies = pd.read_parquet(f"{served.paths.prepared}/movies.parquet")
        users = pd.read_parquet(f"{served.paths.prepared}/users.parquet")
        original = load_model(served.paths.model)
        shutil.copytree(served.paths.model, tmp_path / "moved-model")
        shutil.rmtree(tmp_path / "moved-model" / "checkpoints")  # the artifact alone, no training state
        again = load_model(tmp_path / "moved-model")
        for a, b in ((original.movie_vectors(encoded_columns(movies, original.tower_names("movie"))),
                      again.movie_vectors(encoded_columns(movies, again.tower_names("movie")))),
                     (original.user_vectors(encoded_columns(users, original.tower_names("user"))),
                      again.user_vectors(encoded_columns(users, again.tower_names("user"))))):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
        pairs = (encoded_columns(users.iloc[np.arange(20) % len(users)], original.tower_names("user")),
                 encoded_columns(movies.iloc[np.arange(20) % len(movies)], original.tower_names("movie")))
        np.testing.assert_array_equal(original.pair_scores(*pairs), again.pair_scores(*pairs))
        # the exported vectors are the artifact's
        np.testing.assert_allclose(rec._ms, original.movie_vectors(encoded_columns(movies, original.tower_names("movie")))["score"],
                                   rtol=1e-6, atol=1e-6)
        # a moved index directory still serves known and cold-start users, identically
        shutil.copytree(served.paths.index, tmp_path / "moved-index")
        moved = Recommender.load(tmp_path / "moved-index")
        user = int(rec.users.user_id.iloc[1])
        assert moved.recommend(user, k=5) == rec.recommend(user, k=5)
        assert moved.recommend_for_profile(gender="F", age=30, k=5) == rec.recommend_for_profile(gender="F", age=30, k=5)
        assert moved._model_dir == tmp_path / "moved-index" / "model"

    def test_loading_with_missing_or_unexpected_variables_fails_naming_them(self, served):
        import tensorflow as tf

        from recsys.errors import ArtifactError
        from recsys.models import load_model
        from recsys.models.contract import read_weights

        model = load_model(served.paths.model).model
        path = f"{served.paths.model}/best/weights"
        extra = tf.train.Checkpoint(model=model, stray=tf.Variable(1.0)).write(f"{served.paths.model}/../extra/w")
        with pytest.raises(ArtifactError, match=r"unexpected \['stray/"):
            read_weights(model, extra)
        partial = tf.Module()
        for layer in model.layers[1:]:  # every top-level layer but the first
            setattr(partial, layer.name, layer)
        short = tf.train.Checkpoint(model=partial).write(f"{served.paths.model}/../short/w")
        first = model.layers[0].name
        with pytest.raises(ArtifactError, match=rf"missing \[[^\]]*'model/{first}/"):  # among the missing
            read_weights(model, short)
        read_weights(model, path)  # the real weights still load

    def test_identical_weights_on_two_ranks_after_several_steps(self, served, tmp_path):
        script = tmp_path / "check.py"
        sets = self.overrides
        script.write_text(f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
import tensorflow as tf, horovod.tensorflow as hvd
from recsys.config import load_config
import recsys.training as T
cfg = load_config({str(ROOT / 'conf/default.yaml')!r}, {sets!r} + ['paths.model={tmp_path}/m', 'train.epochs=1'])
T.train(cfg, max_steps=5)
digest = sum(float(tf.reduce_sum(tf.abs(v))) for v in T.LAST_RUN.model.trainable_variables)
print('DIGEST', hvd.rank(), int(T.LAST_RUN.step_var.numpy()), repr(digest), flush=True)
""")
        proc = subprocess.run([os.path.join(BIN, "horovodrun"), "-np", "2", sys.executable, str(script)], env=ENV,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        digests = sorted(line.split()[-3:] for line in proc.stdout.splitlines() if "DIGEST" in line)
        assert len(digests) == 2 and digests[0][1:] == digests[1][1:] and digests[0][1] == "5", digests


def _dense(w: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    return x @ w[f"{prefix}/kernel"] + w[f"{prefix}/bias"]


def _rating_tower(w: dict, tower: str, frame: pd.DataFrame, spec: dict, title_pad: int) -> tuple:
    """(vector, bias, retrieval vector) of one tower of the rating network, in numpy."""
    parts = []
    for f in (f for f in spec["features"] if f["tower"] == tower and f["name"] != "title_words"):
        table, ids = w[f"{tower}_tower/embeddings/{f['name']}/embeddings"], _enc(frame, f["name"])
        if f["shape"]:  # padded list: mean over non-padding entries
            mask = (ids != f["pad_id"])[..., None]
            parts.append((table[ids] * mask).sum(1) / np.maximum(mask.sum(1), 1))
        else:
            parts.append(table[ids])
    if tower == "movie":
        ids = _enc(frame, "title_words")
        x = w["movie_tower/title/words/embeddings"][ids] * (ids != title_pad)[..., None]  # [N, L, E]
        i = 0
        while f"movie_tower/title/convs/{i}/kernel" in w:
            kern, b = w[f"movie_tower/title/convs/{i}/kernel"], w[f"movie_tower/title/convs/{i}/bias"]
            h = kern.shape[0]
            conv = np.stack([np.einsum("nhe,hef->nf", x[:, t:t + h], kern) for t in range(x.shape[1] - h + 1)], 1) + b
            parts.append(np.maximum(conv, 0).max(1))
            i += 1
    x = np.concatenate(parts, -1)
    i = 0
    while f"{tower}_tower/hidden/{i}/kernel" in w:
        x = np.maximum(_dense(w, f"{tower}_tower/hidden/{i}", x), 0)
        i += 1
    id_name = "user_id" if tower == "user" else "movie_id"
    bias = _dense(w, f"{tower}_tower/bias", x)[:, 0] + w[f"{tower}_tower/id_bias/embeddings"][_enc(frame, id_name), 0]
    return _dense(w, f"{tower}_tower/vector", x), bias, _dense(w, f"{tower}_tower/retrieval_vector", x)


class TestRatingNetworkContract(ModelContract):
    kind = "rating"

    def numpy_vectors(self, w, users, movies, info):
        spec = info["feature_spec"]
        title_pad = next(f["pad_id"] for f in spec["features"] if f["name"] == "title_words")
        u, b_u, u_r = _rating_tower(w, "user", users, spec, title_pad)
        m, b_m, m_r = _rating_tower(w, "movie", movies, spec, title_pad)
        mu, temp = info["stats"]["train_rating_mean"], info["model_config"]["retrieval_temperature"]
        mid = _enc(movies, "movie_id")
        assert info["model_config"]["retrieval_popularity"] > 0  # the default: the popularity term is tested
        prior = (w["movie_prior/embeddings"][mid, 0]
                 + info["model_config"]["retrieval_popularity"] * training_log_share(_prepared(self.overrides), mid))
        scores = mu + b_u[:, None] + b_m[None, :] + u @ m.T
        user_rank = np.hstack([u, u_r, np.ones((len(u), 1))])
        movie_rank = np.hstack([m, m_r, temp * prior[:, None]])
        return user_rank, movie_rank, scores


class TestRatingNetworkWithAutoencodersContract(TestRatingNetworkContract):
    """The rating network with both autoencoders, each checked from the raw weights and the
    prepared tables (not from the checkpoint's own tables or codes):

    - the item autoencoder: served ratings ``N + a k_u k_m (A - N)``, with I-AutoRec's
      ``A = <W_u, sigmoid(V^T r_m + c)> + d_u`` from the training ratings;
    - the history autoencoder: served top-k by the network's rank score plus
      ``s k_u k_m <[h_u, 1], [W_m, d_m]>``, with Mult-DAE's code ``h_u = tanh(x_u / |x_u| W_e + c)``
      from each user's training and validation movies (its refit's histories)."""

    extra_sets = ("model.autoencoder.units=16", "model.autoencoder.epochs=40", "model.autoencoder.validate_every=5",
                  "model.autoencoder.l2=10", "model.autoencoder.raters=500", "model.autoencoder.movies_per_step=16",
                  "model.autoencoder.learning_rate=0.01",
                  "model.history_autoencoder.units=8", "model.history_autoencoder.epochs=20",
                  "model.history_autoencoder.validate_every=5", "model.history_autoencoder.users_per_step=16",
                  "model.history_autoencoder.learning_rate=0.01")

    def numpy_vectors(self, w, users, movies, info):
        user_rank, movie_rank, network = super().numpy_vectors(w, users, movies, info)
        prepared = _prepared(self.overrides)
        train = pd.read_parquet(f"{prepared}/ratings_train")
        uid, mid = _enc(users, "user_id"), _enc(movies, "movie_id")
        k_u, k_m = np.isin(uid, train.user_idx)[:, None], np.isin(mid, train.movie_idx)[:, None]

        # the item autoencoder's rating
        n_users, n_movies = w["autoencoder/encoder"].shape[0], w["autoencoder/raters"].shape[0]
        r = np.zeros((n_movies, n_users))
        r[train.movie_idx, train.user_idx] = train.rating
        assert train.groupby("movie_idx").size().max() <= 500  # every rating is in its movie's column
        h = _sigmoid(r @ w["autoencoder/encoder"] + w["autoencoder/encoder_bias"])  # [movie vocab, K]
        auto = w["autoencoder/decoder"][uid] @ h[mid].T + w["autoencoder/decoder_bias"][uid][:, None]
        share = float(w["autoencoder/share"])
        assert share > 0 and info["autoencoder"]["share"] == pytest.approx(share)  # the blend is served
        scores = np.where(k_u & k_m.T, network + share * (auto - network), network)

        # the history autoencoder's rank entries
        both = pd.concat([train, pd.read_parquet(f"{prepared}/ratings_valid")])  # the refit's histories
        x = np.zeros((w["history_autoencoder/codes"].shape[0], w["history_autoencoder/encoder"].shape[0]))
        x[both.user_idx, both.movie_idx] = 1.0
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        code = np.tanh(x / np.where(norm > 0, norm, 1.0) @ w["history_autoencoder/encoder"]
                       + w["history_autoencoder/encoder_bias"])  # [user vocab, H]
        decoder, bias = w["history_autoencoder/decoder"], w["history_autoencoder/decoder_bias"]
        known = np.unique(train.movie_idx)  # the decoder is served centred over the training movies
        np.testing.assert_allclose(decoder[known].mean(axis=0), 0.0, atol=1e-5)
        assert abs(bias[known].mean()) < 1e-5
        s = float(w["history_autoencoder/share"])
        assert s > 0 and info["history_autoencoder"]["share"] > 0  # the blend is served
        user_rank = np.hstack([user_rank, s * k_u * np.hstack([code[uid], np.ones((len(uid), 1))])])
        movie_rank = np.hstack([movie_rank, k_m * np.hstack([decoder[mid], bias[mid][:, None]])])
        return user_rank, movie_rank, scores


class TestBPRContract(ModelContract):
    kind = "bpr"

    def numpy_vectors(self, w, users, movies, info):
        uid, mid = _enc(users, "user_id"), _enc(movies, "movie_id")
        u = w["user_factors/embeddings"][uid] * (uid >= 2)[:, None]  # OOV / padding: the zero vector
        m = w["movie_factors/embeddings"][mid] * (mid >= 2)[:, None]
        b = w["movie_bias/embeddings"][mid, 0] * (mid >= 2)
        user_rank, movie_rank = np.hstack([u, np.ones((len(u), 1))]), np.hstack([m, b[:, None]])
        return user_rank, movie_rank, user_rank @ movie_rank.T


def _neumf(w: dict, user_ids: np.ndarray, movie_ids: np.ndarray) -> tuple:
    """NeuMF in numpy from raw weights: (user rank [U, F], movie rank [M, F], logits [U, M]) for
    every pair of the encoded ``user_ids`` and ``movie_ids`` (ids below 2, padding / OOV: zero embeddings)."""
    def rows(table, ids):
        return w[f"{table}/embeddings"][ids] * (ids >= 2)[:, None]

    p, p_mlp = rows("user_gmf", user_ids), rows("user_mlp", user_ids)  # [U, F]
    q, q_mlp = rows("movie_gmf", movie_ids), rows("movie_mlp", movie_ids)  # [M, F]
    n_u, n_m, f = len(p), len(q), p.shape[1]
    x = np.concatenate([np.broadcast_to(p_mlp[:, None], (n_u, n_m, f)),
                        np.broadcast_to(q_mlp[None], (n_u, n_m, f))], -1)  # [U, M, 2F]
    i = 0
    while f"mlp/hidden/{i}/kernel" in w:
        x = np.maximum(_dense(w, f"mlp/hidden/{i}", x), 0)
        i += 1
    logits = _dense(w, "fusion", np.concatenate([p[:, None] * q[None], x], -1))[..., 0]  # [U, M]
    return p * w["fusion/kernel"][:f, 0], q, logits


class TestNeuMFContract(ModelContract):
    """NeuMF is not factorised: lists are re-ranked by its pair score (a full scan of this catalog),
    so the reference scores every unseen movie with a numpy forward pass from the raw weights."""

    kind = "neumf"

    def numpy_vectors(self, w, users, movies, info):
        return _neumf(w, _enc(users, "user_id"), _enc(movies, "movie_id"))

    def numpy_ranking(self, user_rank, movie_rank, scores):
        return scores

    def test_index_and_report_say_full_scan(self, rec, fitted):
        n = len(rec.movies)
        assert rec.info["factorised"] is False
        assert rec.info["reranking"]["movies"]["method"] == "full_scan"
        assert fitted.ranked_by == rec.ranked_by == f"pair score, full scan of {n:,} movies"

    def test_candidate_path_ranks_the_retrievers_top_by_pair_score(self, served, data, tmp_path):
        """Above index.rerank_full_scan_max movies, a list is the top by pair score among the retriever's
        top index.rerank_candidates unseen movies, in serving and evaluation alike."""
        from recsys.config import load_config
        from recsys.evaluation import ServedModel
        from recsys.serving import Recommender, build_serving_dir

        candidates, k = 30, 10
        cfg = load_config(ROOT / "conf/default.yaml", self.overrides + [
            f"paths.index={tmp_path}/index", "index.rerank_full_scan_max=50", f"index.rerank_candidates={candidates}"])
        build_serving_dir(cfg)  # from the class's exported vectors
        rec = Recommender.load(cfg.paths.index)
        n = len(rec.movies)
        assert n > 50 and rec.info["reranking"]["movies"]["method"] == "rerank"
        assert rec.ranked_by.startswith(f"pair score, re-ranked top {candidates} of {n:,} movies from the retriever")

        users = pd.read_parquet(f"{cfg.paths.prepared}/users.parquet")
        movies = pd.read_parquet(f"{cfg.paths.prepared}/movies.parquet")
        w, _ = _raw_weights(cfg.paths.model)
        user_rank, movie_rank, logits = _neumf(w, _enc(users, "user_id"), _enc(movies, "movie_id"))
        retrieval = user_rank @ movie_rank.T
        seen = pd.concat([pd.read_parquet(f"{cfg.paths.prepared}/ratings_{s}") for s in ("train", "valid")])
        seen_by_user = seen.groupby("user_id").movie_id.apply(set).to_dict()
        movie_ids = movies.movie_id.to_numpy()
        for row in range(0, len(users), 10):
            user_id = int(users.user_id.iloc[row])
            unseen = ~np.isin(movie_ids, list(seen_by_user.get(user_id, ())))
            pool = np.argsort(-np.where(unseen, retrieval[row], -np.inf), kind="stable")[:min(candidates, unseen.sum())]
            best = pool[np.argsort(-logits[row, pool], kind="stable")][:k]
            got = rec.recommend(user_id, k=k)
            got_rows = [int(np.flatnonzero(movie_ids == r["movie_id"])[0]) for r in got]
            assert set(got_rows) <= set(pool.tolist()) and len(got) == k
            np.testing.assert_allclose([r["score"] for r in got], logits[row, best], rtol=1e-4, atol=1e-4)
        # evaluation ranks through the same path: the same lists for the same exclusions
        model = ServedModel(cfg.paths.index).fit(data)
        assert model.ranked_by == rec.ranked_by
        block = np.array(sorted(data.test.u.unique()))[:5]
        tops = model.top_k(block, k, data.seen[block])
        for i, u in enumerate(block):
            served_list = rec.recommend(int(data.users.user_id.iloc[u]), k=k)
            assert [int(data.movies.movie_id.iloc[m]) for m in tops[i]] == [r["movie_id"] for r in served_list]


def _prepared(overrides: list[str]) -> str:
    """The prepared directory the contract's model trained on."""
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("paths.prepared="))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gru(w: dict, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keras's GRU (reset gate after the recurrent product, gates z, r, h) over ``x`` [B, T, E]:
    the last state [B, H]; a masked step [B, T] keeps the previous state."""
    kernel, recurrent, bias = w["gru/cell/kernel"], w["gru/cell/recurrent_kernel"], w["gru/cell/bias"]
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    for t in range(x.shape[1]):
        xi, hr = x[:, t] @ kernel + bias[0], h @ recurrent + bias[1]
        z = _sigmoid(xi[:, :units] + hr[:, :units])
        r = _sigmoid(xi[:, units:2 * units] + hr[:, units:2 * units])
        candidate = np.tanh(xi[:, 2 * units:] + r * hr[:, 2 * units:])
        h = np.where(mask[:, t:t + 1], z * h + (1 - z) * candidate, h)
    return h


class TestSequentialContract(ModelContract):
    """The GRU reads each user's latest training movies: the reference builds those histories
    from the prepared training table with pandas (validation and test ratings never in them) and
    checks the checkpoint's served table against them before running the GRU in numpy."""

    kind = "sequential"

    def numpy_vectors(self, w, users, movies, info):
        length = info["model_config"]["sequential"]["history_length"]
        train = pd.read_parquet(f"{_prepared(self.overrides)}/ratings_train")
        table = np.zeros_like(w["user_history"])
        table[:, 0] = 1  # the start token (the OOV id)
        for user, rows in train.sort_values(["timestamp", "movie_idx"]).groupby("user_idx"):
            latest = rows.movie_idx.to_numpy()[-length:]
            table[user, 1:1 + len(latest)] = latest
        np.testing.assert_array_equal(w["user_history"], table)
        hist = table[_enc(users, "user_id")]
        state = _gru(w, w["input_embedding/embeddings"][hist], hist != 0)
        u = _dense(w, "project", state)
        mid = _enc(movies, "movie_id")
        m = w["movie_embedding/embeddings"][mid] * (mid >= 2)[:, None]
        b = w["movie_bias/embeddings"][mid, 0] * (mid >= 2)
        user_rank, movie_rank = np.hstack([u, np.ones((len(u), 1))]), np.hstack([m, b[:, None]])
        return user_rank, movie_rank, user_rank @ movie_rank.T


class TestLightGCNContract(ModelContract):
    """The served tables are the propagation of the layer-0 embeddings: the reference propagates
    them in numpy over a dense adjacency built with pandas from the prepared training table."""

    kind = "lightgcn"

    def numpy_vectors(self, w, users, movies, info):
        layers = info["model_config"]["lightgcn"]["layers"]
        e_u, e_m = w["user_embedding/embeddings"], w["movie_embedding/embeddings"]
        n_u, n = len(e_u), len(e_u) + len(e_m)
        edges = pd.read_parquet(f"{_prepared(self.overrides)}/ratings_train")[["user_idx", "movie_idx"]].drop_duplicates()
        a = np.zeros((n, n))
        a[edges.user_idx, n_u + edges.movie_idx] = a[n_u + edges.movie_idx, edges.user_idx] = 1
        d = a.sum(1)
        inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1)), 0)
        a_hat = a * inv[:, None] * inv[None, :]
        e = np.vstack([e_u, e_m])
        total, layer = e.copy(), e
        for _ in range(layers):
            layer = a_hat @ layer
            total += layer
        total /= layers + 1
        uid, mid = _enc(users, "user_id"), _enc(movies, "movie_id")
        u = total[uid] * (uid >= 2)[:, None]
        m = total[n_u + mid] * (mid >= 2)[:, None]
        return u, m, u @ m.T
