"""The item autoencoder (I-AutoRec) the rating network blends into its served rating: its tables,
its forward pass against hand-computed numpy, and the choice of its share on validation.

The blend as served (export, index, serving, from raw checkpoint weights) is checked by
``tests/test_model_contract.py::TestRatingNetworkWithAutoencodersContract``.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import AutoencoderConfig
from recsys.models.item_autoencoder import ItemAutoencoder, movie_raters_table


def test_raters_table_keeps_each_movies_latest_raters_first_and_pads():
    # movie 2: users 5 (t=10), 6 (t=30), 7 (t=20); movie 3: user 5 (t=5); cap 2; the unknown (OOV, 1)
    # user's and movie's ratings are left out
    raters, ratings = movie_raters_table(user_idx=[5, 6, 7, 5, 1, 6], movie_idx=[2, 2, 2, 3, 3, 1],
                                         rating=[1.0, 4.0, 2.5, 5.0, 3.0, 3.0], timestamp=[10, 30, 20, 5, 50, 50],
                                         movie_vocab=5, length=2)
    assert raters.tolist() == [[0, 0], [0, 0], [6, 7], [5, 0], [0, 0]]
    assert ratings.tolist() == [[0, 0], [0, 0], [4.0, 2.5], [5.0, 0], [0, 0]]


def _autoencoder(units=3, **settings):
    cfg = AutoencoderConfig(units=units, raters=4, **settings)
    ae = ItemAutoencoder(user_vocab=6, movie_vocab=5, cfg=cfg)
    raters, ratings = movie_raters_table([2, 3, 2, 4], [2, 2, 3, 3], [4.0, 1.0, 2.0, 5.0], [1, 2, 3, 4], 5, 4)
    ae.set_tables(raters, ratings)
    return ae


def test_codes_and_prediction_match_the_autorec_formula():
    import tensorflow as tf

    ae = _autoencoder()
    rng = np.random.default_rng(0)
    v, c = rng.normal(size=(6, 3)), rng.normal(size=3)
    w, b = rng.normal(size=(6, 3)), rng.normal(size=6)
    for var, value in zip(ae.fitted_variables, (v, c, w, b)):
        var.assign(value.astype(np.float32))
    r = np.zeros((5, 6))  # [movies, users]: the training ratings by hand
    r[2, 2], r[2, 3], r[3, 2], r[3, 4] = 4.0, 1.0, 2.0, 5.0
    h = 1 / (1 + np.exp(-(r @ v + c)))
    codes, known = ae.movie_codes(tf.constant([2, 3, 4, 1]))
    np.testing.assert_allclose(codes.numpy(), h[[2, 3, 4, 1]], rtol=1e-5)
    assert known.numpy().tolist() == [1, 1, 0, 0]  # movies 4 and 1 (OOV) have no training ratings
    assert ae.user_codes(tf.constant([2, 3, 4, 5, 1]))[2].numpy().tolist() == [1, 1, 1, 0, 0]
    expected = [w[2] @ h[3] + b[2], w[4] @ h[2] + b[4], w[3] @ h[3] + b[3]]
    for block in (1, 2, 10):  # movies and pairs in blocks of any size
        pred = ae.predict(np.array([2, 4, 3]), np.array([3, 2, 3]), block)
        np.testing.assert_allclose(pred, expected, rtol=1e-5)


def test_tables_above_the_ratings_limit_stop_naming_the_key():
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match=r"4 ratings, above model.autoencoder.max_ratings \(3\)"):
        _autoencoder(max_ratings=3)


def _fit(network_noise: float):
    """Fit on a rank-1 matrix of 40 users x 30 movies; validation: held-out entries whose
    'network' predictions are the truth plus ``network_noise``."""
    rng = np.random.default_rng(1)
    n_users, n_movies = 40, 30
    truth = np.clip(3 + np.outer(rng.normal(0, 1, n_users), rng.normal(0, 1, n_movies)), 1, 5)
    users, movies = np.meshgrid(np.arange(2, n_users + 2), np.arange(2, n_movies + 2), indexing="ij")
    users, movies, stars = users.ravel(), movies.ravel(), truth.ravel()
    held = rng.random(len(stars)) < 0.2
    cfg = AutoencoderConfig(units=8, l2=1.0, epochs=60, validate_every=20, raters=n_users, movies_per_step=10,
                            learning_rate=0.02)
    ae = ItemAutoencoder(user_vocab=n_users + 2, movie_vocab=n_movies + 2, cfg=cfg)
    ae.set_tables(*movie_raters_table(users[~held], movies[~held], stars[~held], np.zeros((~held).sum()),
                                      n_movies + 2, n_users))
    network = stars[held] + network_noise * rng.choice([-1.0, 1.0], held.sum())
    lines = []
    best = ae.fit((users[held], movies[held], stars[held], network), (1.0, 5.0), seed=3, log=lines.append)
    return ae, best, lines


def test_fit_blends_in_the_share_that_lowers_validation_rmse():
    ae, best, lines = _fit(network_noise=1.0)
    assert best["network_valid_rmse"] == pytest.approx(1.0, abs=0.05)  # the clipped noise
    assert best["valid_rmse"] < 0.8 * best["network_valid_rmse"] and best["share"] > 0
    assert float(ae.share.numpy()) == pytest.approx(best["share"])
    assert best["epoch"] in (20, 40, 60) and any("kept epoch" in line for line in lines)


def test_fit_keeps_the_network_alone_when_no_share_beats_it():
    ae, best, _ = _fit(network_noise=0.0)  # the 'network' is exact: any blend is worse
    assert best["share"] == 0.0 and best["epoch"] == 0 and float(ae.share.numpy()) == 0.0
