"""The rating network's towers run once per unique user / movie id of a training batch: the losses
and every gradient equal the per-example computation's (no dropout, so both are deterministic)."""

from __future__ import annotations

import numpy as np

from recsys.config import load_config
from tests.conftest import ROOT
from tests.test_precision import SMALL_MODEL, SPEC


def _batch_with_repeats(n: int = 48, seed: int = 3):
    """A batch whose attributes are functions of the id (as prepare writes them), ids repeated, and
    two rows with the unknown (OOV) user id but different attributes (cold users)."""
    import tensorflow as tf

    from recsys.features import OOV_ID

    rng = np.random.default_rng(seed)
    users = rng.integers(2, 8, n)
    users[:2] = OOV_ID
    movies = rng.integers(2, 10, n)
    gender = 1 + users % 3
    gender[:2] = [1, 3]  # two cold users: same id, different attributes
    genres = np.stack([1 + (movies + k) % 7 for k in range(3)], axis=1)
    titles = np.stack([1 + (movies * (k + 2)) % 49 for k in range(6)], axis=1)
    x = {k: tf.constant(v, tf.int64) for k, v in
         {"user_id": users, "gender": gender, "movie_id": movies, "genres": genres, "title_words": titles}.items()}
    return x, tf.constant(rng.uniform(1, 5, n), tf.float32)


def test_towers_per_unique_id_equal_towers_per_example():
    import tensorflow as tf

    from recsys.models.rating_network import RatingNetwork

    x, y = _batch_with_repeats()
    results = {}
    for unique in (True, False):
        tf.keras.utils.set_random_seed(0)
        cfg = load_config(ROOT / "conf/default.yaml", SMALL_MODEL + ["model.dropout=0.0", "model.retrieval_group_size=16",
                                                                     f"model.unique_towers={str(unique).lower()}"]).model
        model = RatingNetwork(SPEC, {"train_rating_mean": 3.5}, cfg)
        model.build_variables()
        model.log_q = tf.constant(np.log(np.linspace(0.01, 0.05, 40)), tf.float32)
        with tf.GradientTape() as tape:
            losses = model.named_losses(x, y)
            total = tf.add_n(list(losses.values()))
        grads = tape.gradient(total, model.trainable_variables)
        results[unique] = ({k: v.numpy() for k, v in losses.items()},
                           [tf.convert_to_tensor(g).numpy() for g in grads if g is not None], len(grads))
    (l_u, g_u, n_u), (l_p, g_p, n_p) = results[True], results[False]
    assert set(l_u) == {"rating", "retrieval", "regularization"} and l_u.keys() == l_p.keys()
    for k in l_u:
        np.testing.assert_allclose(l_u[k], l_p[k], rtol=1e-5)
    assert n_u == n_p and len(g_u) == len(g_p) > 10
    for a, b in zip(g_u, g_p):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
