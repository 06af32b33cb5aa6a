"""The history autoencoder (Mult-DAE) the rating network blends into its served rank vectors: its
history table, its served parts against hand-computed numpy, and the choice of its epoch and
share by validation NDCG@10.

The blend as served (export, index, serving, from raw checkpoint weights) is checked by
``tests/test_model_contract.py::TestRatingNetworkWithAutoencodersContract``.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import HistoryAutoencoderConfig
from recsys.models.history_autoencoder import HistoryAutoencoder, history_matrix


def test_history_matrix_is_binary_one_entry_per_pair_without_the_unknown_ids():
    # user 2 rated movie 3 twice; the unknown (OOV, 1) user's and movie's pairs are left out
    x = history_matrix(user_idx=[2, 2, 3, 1, 3, 2], movie_idx=[3, 3, 2, 2, 1, 4], user_vocab=5, movie_vocab=6)
    dense = np.zeros((5, 6))
    dense[2, 3] = dense[3, 2] = dense[2, 4] = 1.0
    np.testing.assert_array_equal(x.toarray(), dense)
    assert x.nnz == 3


def test_known_flags_and_served_parts_match_the_formula():
    import tensorflow as tf

    layer = HistoryAutoencoder(user_vocab=5, movie_vocab=6, cfg=HistoryAutoencoderConfig(units=3))
    layer.set_history(history_matrix([2, 2, 3], [3, 4, 2], 5, 6))
    assert layer.user_known.numpy().tolist() == [0, 0, 1, 1, 0]
    assert layer.movie_known.numpy().tolist() == [0, 0, 1, 1, 1, 0]
    users, movies = tf.constant([2, 4, 1]), tf.constant([3, 5, 1, 2])
    # share 0 (before fit): zeros, the network alone
    assert not layer.blends
    assert not layer.user_part(users).numpy().any() and not layer.movie_part(movies).numpy().any()
    rng = np.random.default_rng(0)
    codes, decoder, bias = rng.normal(size=(5, 3)), rng.normal(size=(6, 3)), rng.normal(size=6)
    for var, value in ((layer.codes, codes), (layer.decoder, decoder), (layer.decoder_bias, bias),
                       (layer.share, np.float32(0.7))):
        var.assign(np.asarray(value, np.float32))
    got = layer.user_part(users).numpy() @ layer.movie_part(movies).numpy().T  # [3 users, 4 movies]
    k_u, k_m = np.array([1.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0, 1.0])  # user 4, OOV and movie 5 unknown
    expected = 0.7 * k_u[:, None] * k_m[None, :] * (codes[[2, 4, 1]] @ decoder[[3, 5, 1, 2]].T + bias[[3, 5, 1, 2]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_pairs_above_the_limit_stop_naming_the_key():
    from recsys.errors import ConfigError

    layer = HistoryAutoencoder(5, 6, HistoryAutoencoderConfig(units=2, max_ratings=2))
    with pytest.raises(ConfigError, match=r"3 \(user, movie\) pairs, above model.history_autoencoder.max_ratings \(2\)"):
        layer.set_history(history_matrix([2, 2, 3], [3, 4, 2], 5, 6))


class _Ranking:
    """The served validation ranking of a hand-made network score table plus the layer's blend:
    NDCG@10 over the validation users (training movies excluded), and the network's spread. Every
    ``ndcg()`` call records the layer's served codes and encoder, to check what they were made from."""

    def __init__(self, layer, network, train, valid):
        self.layer, self.network, self.train, self.valid = layer, network, train, valid
        self.seen = []

    def _scores(self):
        import tensorflow as tf

        users, movies = np.arange(self.network.shape[0]), np.arange(self.network.shape[1])
        return self.network + (self.layer.user_part(tf.constant(users)).numpy()
                               @ self.layer.movie_part(tf.constant(movies)).numpy().T)

    def ndcg(self):
        from recsys.evaluation import ndcg_at_k

        if float(self.layer.share.numpy()) > 0:
            self.seen.append([v.numpy().copy() for v in (self.layer.codes, self.layer.encoder, self.layer.encoder_bias)])
        scores = np.where(self.train.toarray() > 0, -np.inf, self._scores())
        users = np.unique(self.valid[0])
        return float(np.mean([ndcg_at_k(np.argsort(-scores[u], kind="stable")[:10],
                                        set(self.valid[1][self.valid[0] == u].tolist()), 10) for u in users]))

    def spread(self):
        return float((self.network - self.network.mean(axis=1, keepdims=True)).std())


def _blocks(seed=0):
    """Two groups of 20 users, each liking its own 12 of 24 movies (ids from 2): each user rated 8
    of its group's movies in training and 2 more in validation. User 42 has validation ratings
    alone, and movie 26 is in validation alone."""
    rng = np.random.default_rng(seed)
    train_u, train_m, valid_u, valid_m = [], [], [], []
    for u in range(2, 42):
        liked = rng.permutation(np.arange(2, 14) + (12 if u >= 22 else 0))
        train_u += [u] * 8; train_m += liked[:8].tolist()
        valid_u += [u] * 2; valid_m += liked[8:10].tolist()
    valid_u += [42, 42, 2]; valid_m += [3, 26, 26]
    return (history_matrix(train_u, train_m, 43, 27),
            (np.array(valid_u), np.array(valid_m)))


def _fit(network_knows: bool, seed: int = 3):
    train, valid = _blocks()
    cfg = HistoryAutoencoderConfig(units=4, epochs=30, validate_every=10, users_per_step=8, learning_rate=0.02,
                                   share_grid=[0.5, 2.0])
    layer = HistoryAutoencoder(43, 27, cfg)
    layer.set_history(train)
    network = np.random.default_rng(1).normal(size=(43, 27))  # noise: no signal about the groups
    if network_knows:  # the validation movies on top: NDCG@10 1, nothing can beat it
        network[valid[0], valid[1]] += 100.0
    ranking = _Ranking(layer, network, train, valid)
    lines = []
    chosen = layer.fit(valid, ranking, seed=seed, log=lines.append)
    return layer, ranking, chosen, lines, train


def test_fit_keeps_the_network_alone_where_no_share_beats_it():
    layer, ranking, chosen, lines, _ = _fit(network_knows=True)
    assert chosen["network_valid_ndcg@10"] == pytest.approx(1.0)
    assert chosen["share"] == 0 and chosen["epoch"] == 0 and float(layer.share.numpy()) == 0
    assert any("no share beat the network alone" in line for line in lines)
    # no entries served, and no last-epoch tables left behind
    assert not layer.user_part(np.array([2, 30])).numpy().any()
    assert not any(v.numpy().any() for v in (layer.codes, layer.decoder, layer.decoder_bias, layer.encoder))


def test_fit_blends_the_share_and_epoch_validation_chose_from_training_movies_alone():
    layer, ranking, chosen, lines, train = _fit(network_knows=False)
    # the autoencoder learns the two groups: the blend ranks them far above the noise
    assert chosen["share"] in (0.5, 2.0) and chosen["epoch"] in (10, 20, 30)
    assert chosen["valid_ndcg@10"] > chosen["network_valid_ndcg@10"] + 0.2
    assert any("refitted on train + validation" in line for line in lines)
    # while choosing, every served code was the encoding of the user's training movies alone
    assert len(ranking.seen) == 3 * 2  # 3 validations x 2 shares
    x = train.toarray()
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    for codes, encoder, bias in ranking.seen:
        want = np.tanh(x / np.where(norm > 0, norm, 1.0) @ encoder + bias) * (norm > 0)
        np.testing.assert_allclose(codes, want, rtol=1e-4, atol=1e-5)
    # served scale s = b * spread(network) / spread(autoencoder), recorded with the spreads
    assert float(layer.share.numpy()) == pytest.approx(chosen["scale"]) == pytest.approx(
        chosen["share"] * chosen["network_spread"] / chosen["autoencoder_spread"])
    # a user with validation ratings alone (42) and a movie in validation alone (26) are not known:
    # no entries, so the network alone ranks them
    assert not layer.user_part(np.array([42])).numpy().any() and layer.user_part(np.array([2])).numpy().any()
    assert not layer.movie_part(np.array([26])).numpy().any() and layer.movie_part(np.array([3])).numpy().any()


def test_fit_is_reproducible_for_a_seed():
    first, second = _fit(False, seed=5)[0], _fit(False, seed=5)[0]
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
