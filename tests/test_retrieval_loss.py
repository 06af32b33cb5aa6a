"""The rating network's retrieval loss (in-batch softmax, logQ-corrected, in groups) against a
numpy reference written from the formula: per user, log-sum-exp over the group's movies that are
not the same movie as the positive elsewhere in the group, minus the positive's logit. Also the
exact softmax over the training catalog (``model.retrieval_negatives: catalog``) and its catalog."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.models.rating_network import catalog_retrieval_loss, retrieval_loss
from tests.conftest import training_log_share

TEMPERATURE = 0.1


def reference_losses(u, m, ids, log_q, temperature=TEMPERATURE) -> np.ndarray:
    """Per-example cross-entropy of one group (float64): negatives are the group's other movies,
    minus the other occurrences of the positive movie; logits ``<u, m> / T - log q_m``."""
    u, m, log_q = (np.asarray(a, np.float64) for a in (u, m, log_q))
    out = np.empty(len(u))
    for i in range(len(u)):
        logits = u[i] @ m.T / temperature - log_q
        keep = [j for j in range(len(u)) if j == i or ids[j] != ids[i]]
        top = logits[keep].max()
        out[i] = top + np.log(np.exp(logits[keep] - top).sum()) - logits[i]
    return out


def batch(n: int, rank: int = 6, movies: int = 5, seed: int = 0):
    """Rank vectors, ids drawn from few movies (so groups hold repeats the mask must handle), log q."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, movies + 1, n).astype(np.int32)
    log_q = np.log(rng.dirichlet(np.ones(movies + 1)))[ids].astype(np.float32)
    return (rng.normal(0, 0.3, (n, rank)).astype(np.float32), rng.normal(0, 0.3, (n, rank)).astype(np.float32),
            ids, log_q)


def _tf(*arrays):
    import tensorflow as tf

    return [tf.constant(a) for a in arrays]


@pytest.mark.parametrize("group_size", [None, 12, 13, 4096])
def test_a_group_covering_the_batch_is_the_plain_in_batch_softmax(group_size):
    u, m, ids, log_q = batch(12)
    assert len(set(ids)) < len(ids)  # repeats: the same-movie mask is exercised
    got = float(retrieval_loss(*_tf(u, m, ids, log_q), TEMPERATURE, group_size))
    np.testing.assert_allclose(got, reference_losses(u, m, ids, log_q).mean(), rtol=1e-5)


def test_several_groups_give_the_mean_of_the_groups_losses():
    u, m, ids, log_q = batch(12)
    got = float(retrieval_loss(*_tf(u, m, ids, log_q), TEMPERATURE, 4))
    per_group = [reference_losses(u[s:s + 4], m[s:s + 4], ids[s:s + 4], log_q[s:s + 4]).mean() for s in (0, 4, 8)]
    np.testing.assert_allclose(got, np.mean(per_group), rtol=1e-5)
    whole = reference_losses(u, m, ids, log_q).mean()
    assert abs(got - whole) > 1e-3  # fewer negatives per user: a different (smaller) loss


def test_a_short_last_group_is_masked_and_weighted_per_example():
    """10 examples in groups of 4: groups of 4, 4 and 2; the padding is neither a negative nor counted,
    with the batch length known while tracing or not (a validation caller's last batch)."""
    import tensorflow as tf

    u, m, ids, log_q = batch(10, seed=1)
    expected = np.concatenate([reference_losses(u[s:s + 4], m[s:s + 4], ids[s:s + 4], log_q[s:s + 4])
                               for s in (0, 4, 8)]).mean()
    eager = float(retrieval_loss(*_tf(u, m, ids, log_q), TEMPERATURE, 4))
    np.testing.assert_allclose(eager, expected, rtol=1e-5)

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32), tf.TensorSpec([None, 6], tf.float32),
                                  tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32),
                                  tf.TensorSpec([], tf.int32)])
    def unknown_length(u, m, ids, log_q, _):
        return retrieval_loss(u, m, ids, log_q, TEMPERATURE, 4), retrieval_loss(u, m, ids, log_q, TEMPERATURE, 64)

    grouped, covering = unknown_length(*_tf(u, m, ids, log_q), tf.constant(0))
    np.testing.assert_allclose(float(grouped), expected, rtol=1e-5)
    np.testing.assert_allclose(float(covering), reference_losses(u, m, ids, log_q).mean(), rtol=1e-5)


def test_gradients_reach_only_the_own_group():
    """A movie vector gets gradient only from the users of its own group (and is finite)."""
    import tensorflow as tf

    u, m, ids, log_q = _tf(*batch(8, seed=2))
    m = tf.Variable(m)
    with tf.GradientTape() as tape:
        loss = retrieval_loss(u, m, ids, log_q, TEMPERATURE, 4)
    grad = tape.gradient(loss, m).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    with tf.GradientTape() as tape:
        first = retrieval_loss(u[:4], m[:4], ids[:4], log_q[:4], TEMPERATURE)
    np.testing.assert_allclose(grad[:4], tape.gradient(first, m).numpy()[:4] / 2, rtol=1e-5, atol=1e-7)


def test_catalog_loss_is_the_softmax_over_every_catalog_movie():
    """``model.retrieval_negatives: catalog``: log-sum-exp over all M catalog movies minus the
    positive's logit, no sampling correction, averaged over the batch."""
    rng = np.random.default_rng(3)
    u, catalog = rng.normal(0, 0.3, (5, 4)).astype(np.float32), rng.normal(0, 0.3, (7, 4)).astype(np.float32)
    rows = np.array([0, 6, 3, 3, 1], np.int32)  # the catalog row of each example's movie
    logits = u.astype(np.float64) @ catalog.T.astype(np.float64) / TEMPERATURE
    expected = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(5), rows])
    assert float(catalog_retrieval_loss(*_tf(u, catalog, rows), TEMPERATURE)) == pytest.approx(expected, rel=1e-5)


def test_rating_network_catalog_negatives_hold_each_training_movie_once(train_data):
    """The catalog of ``model.retrieval_negatives: catalog`` is the prepared movies table's rows
    with a training id, each id once, and every training id maps to its own row; a catalog above
    ``model.retrieval_catalog_max`` stops with one line naming both."""
    import json

    import pandas as pd

    from recsys.config import load_config
    from recsys.errors import ConfigError
    from recsys.features import OOV_ID, encoded_columns
    from recsys.models import build_model
    from tests.conftest import ROOT

    base, overrides = train_data
    prepared = base / "prepared"
    manifest = json.loads((prepared / "manifest.json").read_text())
    cfg = load_config(ROOT / "conf/default.yaml", overrides + ["model.retrieval_negatives=catalog"]).model
    model = build_model(manifest["features"], manifest["stats"], cfg)
    model.prepare(prepared)
    catalog_ids = model.catalog["movie_id"].numpy()
    train_ids = np.unique(pd.read_parquet(prepared / "ratings_train", columns=["movie_idx"]).movie_idx)
    assert sorted(catalog_ids.tolist()) == train_ids.tolist()  # every training movie, once, no OOV row
    row = model.catalog_row.numpy()
    np.testing.assert_array_equal(catalog_ids[row[train_ids]], train_ids)
    movies = pd.read_parquet(prepared / "movies.parquet")
    enc = encoded_columns(movies, ["movie_id", "title_words"])
    first = {int(m): i for i, m in reversed(list(enumerate(enc["movie_id"])))}  # a movie's features, from its id
    some = train_ids[:5]
    np.testing.assert_array_equal(model.catalog["title_words"].numpy()[row[some]],
                                  enc["title_words"][[first[int(m)] for m in some]])
    assert OOV_ID not in catalog_ids

    # the losses: the batch's movie vectors gathered from the catalog pass are the ones the towers
    # give the batch (the rating loss is unchanged), and the retrieval loss is the softmax over it
    import tensorflow as tf

    from recsys.prepare.tfrecords import read_shards

    cfg.dropout = 0.0  # deterministic towers, so the two passes can be compared
    model = build_model(manifest["features"], manifest["stats"], cfg)
    model.prepare(prepared)
    data = read_shards([str(prepared / s["path"]) for s in manifest["splits"]["train"]["shards"]],
                       manifest["features"]["features"])
    x = {k: tf.constant(v[:48]) for k, v in data.items() if k != "rating"}
    y = tf.constant(data["rating"][:48])
    losses = {k: float(v) for k, v in model.named_losses(x, y).items()}
    catalog_tables = model.catalog, model.log_q
    user_rank = model.user_vectors(x)["rank"].numpy().astype(np.float64)
    # training=True: the loss's rank vectors, without the served popularity term
    catalog_rank = model.movie_vectors(model.catalog, training=True)["rank"].numpy().astype(np.float64)
    logits = user_rank @ catalog_rank.T / cfg.retrieval_temperature
    positive = logits[np.arange(48), row[x["movie_id"].numpy()]]
    expected = cfg.retrieval_weight * np.mean(np.log(np.exp(logits).sum(1)) - positive)
    assert losses["retrieval"] == pytest.approx(expected, rel=1e-4)
    # served (training=False) rank vectors add T * g * log q_m, q_m counted with pandas
    log_q = training_log_share(prepared, model.catalog["movie_id"].numpy())
    served_rank = model.movie_vectors(model.catalog)["rank"].numpy().astype(np.float64)
    assert cfg.retrieval_popularity > 0
    np.testing.assert_allclose(served_rank[:, :-1], catalog_rank[:, :-1], rtol=1e-6)
    np.testing.assert_allclose(served_rank[:, -1] - catalog_rank[:, -1],
                               cfg.retrieval_temperature * cfg.retrieval_popularity * log_q, rtol=1e-4, atol=1e-6)
    from recsys.models.data import movie_log_sampling_probability

    assert model.log_q is None  # an exact softmax has no sampling correction to read
    model.catalog = None  # the same weights with in-batch negatives: the same rating loss
    model.log_q = tf.constant(movie_log_sampling_probability(prepared, manifest["features"]["features"]), tf.float32)
    in_batch = {k: float(v) for k, v in model.named_losses(x, y).items()}
    assert in_batch["rating"] == pytest.approx(losses["rating"], rel=1e-5)
    # no loss reads the served popularity prior: a huge g leaves both modes' losses as they were
    cfg.retrieval_popularity = 1000.0
    assert {k: float(v) for k, v in model.named_losses(x, y).items()} == pytest.approx(in_batch, rel=1e-6)
    model.catalog, model.log_q = catalog_tables
    assert {k: float(v) for k, v in model.named_losses(x, y).items()} == pytest.approx(losses, rel=1e-6)
    assert model.movie_vectors(model.catalog)["rank"].numpy()[:, -1].max() < served_rank[:, -1].min()  # served: it moves

    # a movies table that lacks a training movie is a damaged artifact: one line naming the id
    from recsys.errors import ArtifactError

    damaged = base / "damaged-movies"
    damaged.mkdir(exist_ok=True)
    movies[enc["movie_id"] != train_ids[0]].to_parquet(damaged / "movies.parquet")
    with pytest.raises(ArtifactError, match=rf"has no row for 1 training movie id\(s\) \(e\.g\. encoded id {train_ids[0]}\)"):
        model._training_catalog(damaged)

    cfg.retrieval_catalog_max = len(train_ids) - 1
    with pytest.raises(ConfigError, match=rf"{len(train_ids):,} training movies is above model\.retrieval_catalog_max"):
        build_model(manifest["features"], manifest["stats"], cfg).prepare(prepared)


@pytest.mark.slow
def test_catalog_negatives_train_at_two_ranks_under_xla(train_data, tmp_path):
    """``model.retrieval_negatives: catalog`` under horovodrun -np 2 with train.xla: the catalog
    pass compiles (its shapes are static), its gradients reach Horovod's allreduce, and the
    retrieval loss falls."""
    import json
    import subprocess

    from tests.conftest import ENV, train_cmd

    _, overrides = train_data
    model_dir = tmp_path / "catalog"
    cmd = train_cmd(overrides, 2, model_dir, "--set", "model.retrieval_negatives=catalog", "--set", "train.xla=true",
                    "--set", "train.epochs=3", "--set", "train.early_stopping_patience=3")
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((model_dir / "model.json").read_text())
    assert summary["ranks"] == 2 and summary["config"]["model"]["retrieval_negatives"] == "catalog"
    retrieval = [h["train_retrieval"] for h in summary["history"]]
    assert len(retrieval) == 3 and np.isfinite(retrieval).all() and retrieval[-1] < retrieval[0], retrieval
