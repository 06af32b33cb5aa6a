"""``model.embedding_l2``: the rating network's per-example L2 on the embedding rows a batch looks up."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import load_config
from tests.conftest import ROOT
from tests.test_precision import SMALL_MODEL, SPEC, _batch


def _losses(embedding_l2: float, negatives: str = "none", unique: bool = False):
    """(model, batch, losses) of a fresh small rating network; ``negatives``: none (no retrieval
    loss) or catalog (catalog softmax over every movie of the small spec, set by hand); ``unique``:
    model.unique_towers."""
    import tensorflow as tf

    from recsys.models.rating_network import RatingNetwork

    tf.keras.utils.set_random_seed(0)
    sets = ["model.dropout=0.0", f"model.unique_towers={str(unique).lower()}", f"model.embedding_l2={embedding_l2}"]
    sets += ["model.retrieval_negatives=catalog"] if negatives == "catalog" else ["model.retrieval_weight=0"]
    cfg = load_config(ROOT / "conf/default.yaml", SMALL_MODEL + sets).model
    model = RatingNetwork(SPEC, {"train_rating_mean": 3.5}, cfg)
    model.build_variables()  # eagerly, as the trainer builds it
    x, y = _batch(n=24, seed=5)
    if negatives == "catalog":  # every movie id but padding and OOV, with attributes drawn once
        catalog, _ = _batch(n=38, seed=9)
        catalog["movie_id"] = tf.range(2, 40, dtype=tf.int64)
        model.catalog = {k: catalog[k] for k in model.movie_features}
        model.catalog_row = tf.concat([[-1, -1], tf.range(38)], axis=0)
        x["movie_id"] = tf.maximum(x["movie_id"], 2)  # training examples have a training movie id
    return model, x, {k: float(v) for k, v in model.named_losses(x, y).items()}


@pytest.mark.parametrize("negatives,unique", [("none", False), ("none", True), ("catalog", False)])
def test_penalty_is_the_mean_squared_norm_of_the_rows_looked_up(negatives, unique):
    """Per example whether the towers run per unique id or not, and with catalog negatives over the
    batch's rows, not the catalog pass's."""
    lam = 1e-2
    _, _, base = _losses(0.0, negatives, unique)
    model, x, with_l2 = _losses(lam, negatives, unique)
    assert with_l2["rating"] == base["rating"]  # the same initial weights: only the penalty differs
    # by hand: for each single-id feature (user_id, gender, movie_id; not the genre list nor the
    # title words), the mean over the batch of the squared norm of the row each example looks up
    expected = 0.0
    for tower in (model.user_tower, model.movie_tower):
        for name, layer in tower.embeddings.items():
            if name in ("user_id", "gender", "movie_id"):
                rows = layer.get_weights()[0][x[name].numpy()]
                expected += (rows ** 2).sum(axis=1).mean()
    assert expected > 0
    np.testing.assert_allclose(with_l2["regularization"] - base["regularization"], lam * expected, rtol=1e-5)


def test_penalty_gradient_is_per_use_of_each_row():
    """d/de_u of lam x mean_b |e_(u_b)|^2 is 2 lam (count_u / B) e_u: a row used twice is pulled
    twice as hard, an unused row only by the weight decay (model.l2)."""
    import tensorflow as tf

    lam, n = 1e-2, 24
    model, x, _ = _losses(lam)
    emb = model.user_tower.embeddings["user_id"]
    before = emb.get_weights()[0].copy()
    with tf.GradientTape() as tape:
        loss = model.named_losses(x, tf.zeros([n]) + 3.5)["regularization"]
    grad = tf.convert_to_tensor(tape.gradient(loss, emb.trainable_weights[0])).numpy()
    counts = np.bincount(x["user_id"].numpy(), minlength=before.shape[0])
    assert counts.max() > 1  # the batch repeats some user: the count matters
    decay = 2 * model.cfg.l2 * before
    np.testing.assert_allclose(grad - decay, 2 * lam * (counts / n)[:, None] * before, rtol=1e-4, atol=1e-9)
