"""``model.embedding_l2``: the rating network's per-example L2 on the embedding rows a batch looks up."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import load_config
from tests.conftest import ROOT
from tests.test_precision import SMALL_MODEL, SPEC, _batch


def _losses(embedding_l2: float, negatives: str = "none"):
    """(model, batch, losses) of a fresh small rating network; ``negatives``: none (no retrieval
    loss) or catalog (catalog softmax over every movie of the small spec, set by hand)."""
    import tensorflow as tf

    from recsys.models.rating_network import RatingNetwork

    tf.keras.utils.set_random_seed(0)
    sets = ["model.dropout=0.0", "model.unique_towers=false", f"model.embedding_l2={embedding_l2}"]
    sets += ["model.retrieval_negatives=catalog"] if negatives == "catalog" else ["model.retrieval_weight=0"]
    cfg = load_config(ROOT / "conf/default.yaml", SMALL_MODEL + sets).model
    model = RatingNetwork(SPEC, {"train_rating_mean": 3.5}, cfg)
    model.build_variables()  # eager: this call once failed with a per-example penalty on
    x, y = _batch(n=24, seed=5)
    if negatives == "catalog":  # every movie id but padding and OOV, with attributes drawn once
        catalog, _ = _batch(n=38, seed=9)
        catalog["movie_id"] = tf.range(2, 40, dtype=tf.int64)
        model.catalog = {k: catalog[k] for k in model.movie_features}
        model.catalog_row = tf.concat([[-1, -1], tf.range(38)], axis=0)
        x["movie_id"] = tf.maximum(x["movie_id"], 2)  # training examples have a training movie id
    return model, x, {k: float(v) for k, v in model.named_losses(x, y).items()}


@pytest.mark.parametrize("negatives", ["none", "catalog"])
def test_penalty_is_the_mean_squared_norm_of_the_rows_looked_up(negatives):
    """With catalog negatives too: the penalty covers the batch's rows, not the catalog pass's."""
    lam = 1e-2
    _, _, base = _losses(0.0, negatives)
    model, x, with_l2 = _losses(lam, negatives)
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


def test_training_step_with_the_penalty_runs_and_moves_only_looked_up_rows():
    import tensorflow as tf

    model, x, _ = _losses(1e-2)
    emb = model.user_tower.embeddings["user_id"]
    before = emb.get_weights()[0].copy()
    with tf.GradientTape() as tape:
        loss = model.named_losses(x, tf.zeros([24]) + 3.5)["regularization"]
    grad = tf.convert_to_tensor(tape.gradient(loss, emb.trainable_weights[0])).numpy()
    used = np.unique(x["user_id"].numpy())
    unused = np.setdiff1d(np.arange(before.shape[0]), used)
    assert np.abs(grad[used]).sum() > 0
    # the weight-decay part (model.l2) touches every row; the per-example part only the rows used
    l2 = model.cfg.l2
    np.testing.assert_allclose(grad[unused], 2 * l2 * before[unused], rtol=1e-4, atol=1e-9)
