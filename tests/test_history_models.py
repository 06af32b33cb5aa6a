"""The sequential model's leak-free histories and LightGCN's graph, on hand-made data.

The contract tests (tests/test_model_contract.py) train both end to end; these check the two
pieces a wrong index would silently break: a training rating sees only its user's strictly
earlier training ratings (ties in time excluded), and the normalised adjacency's values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.config import ModelConfig


def _spec(users: int, movies: int) -> dict:
    feats = [{"name": "user_id", "dtype": "int64", "shape": [], "vocab_size": users, "tower": "user"},
             {"name": "movie_id", "dtype": "int64", "shape": [], "vocab_size": movies, "tower": "movie"}]
    return {"features": feats}


# user 2 rated, in time: movie 9 at t=5, movies 3 and 7 in the same second t=10, movie 4 at t=20;
# user 3 rated movie 5 once. Encoded ids (FIRST_ID = 2 upwards), rows in no particular order.
RATINGS = pd.DataFrame({"user_idx": [2, 2, 3, 2, 2], "movie_idx": [3, 7, 5, 4, 9], "timestamp": [10, 10, 7, 20, 5]})


def test_time_ordered_histories_cut_strictly_before_each_rating():
    from recsys.models.sequential import time_ordered_histories

    t = time_ordered_histories(RATINGS.user_idx, RATINGS.movie_idx, RATINGS.timestamp, user_vocab=5, movie_vocab=12)
    assert t["sequence"].tolist() == [9, 3, 7, 4, 5]  # user 2 by time (ties by movie), then user 3
    assert t["user_end"].tolist() == [0, 0, 0, 4, 5, 5]
    ends = dict(zip((t["keys"] // 12 * 100 + t["keys"] % 12).tolist(), t["cut"].tolist()))
    # 9 sees nothing; 3 and 7 (same second) see only 9; 4 sees 9, 3, 7; user 3's 5 sees nothing
    assert ends == {209: 0, 203: 1, 207: 1, 204: 3, 305: 4}


def test_training_and_served_histories_of_the_model():
    import tensorflow as tf

    from recsys.features import OOV_ID
    from recsys.models.sequential import SequentialGRU, time_ordered_histories

    cfg = ModelConfig(kind="sequential")
    cfg.sequential.history_length = 2
    model = SequentialGRU(_spec(5, 12), {}, cfg)
    lookup = time_ordered_histories(RATINGS.user_idx, RATINGS.movie_idx, RATINGS.timestamp, 5, 12)
    model.lookup = {k: tf.constant(v) for k, v in lookup.items()}
    users = tf.constant([2, 2, 2, 2, 3, 4], tf.int64)
    movies = tf.constant([9, 7, 4, 11, 5, 6], tf.int64)  # (2, 11) and (4, 6) are not training pairs
    hist = model.histories(users, model.training_ends(users, movies)).numpy()
    start = OOV_ID
    assert hist.tolist() == [[start, 0, 0], [start, 9, 0], [start, 3, 7], [start, 0, 0], [start, 0, 0], [start, 0, 0]]
    served = model.histories(tf.constant([2, 3, 4], tf.int64), tf.constant(lookup["user_end"][[3, 4, 5]])).numpy()
    assert served.tolist() == [[start, 7, 4], [start, 5, 0], [start, 0, 0]]  # the latest 2, oldest first


def test_normalised_adjacency_by_hand():
    from recsys.models.lightgcn import normalised_adjacency

    # users 0 and 1 (vocab 2), movies 0 and 1 (nodes 2, 3); u0-m0, u0-m1, u1-m1, and u0-m1 repeated
    indices, values = normalised_adjacency([0, 0, 1, 0], [0, 1, 1, 1], user_vocab=2, movie_vocab=2)
    dense = np.zeros((4, 4))
    dense[indices[:, 0], indices[:, 1]] = values
    d = np.array([2, 1, 1, 2.0])  # degrees: u0 2, u1 1, m0 1, m1 2 (a repeated pair is one edge)
    a = np.zeros((4, 4))
    for u, m in ((0, 2), (0, 3), (1, 3)):
        a[u, m] = a[m, u] = 1
    np.testing.assert_allclose(dense, a / np.sqrt(np.outer(d, d)), rtol=1e-6)
    assert (np.diff(indices[:, 0] * 4 + indices[:, 1]) > 0).all()  # canonical order


def test_lightgcn_refuses_a_graph_above_max_edges(tmp_path):
    from recsys.errors import ArtifactError
    from recsys.models.lightgcn import LightGCN

    (tmp_path / "ratings_train").mkdir()
    RATINGS.assign(rating=4.0).to_parquet(tmp_path / "ratings_train" / "part-00000.parquet")
    cfg = ModelConfig(kind="lightgcn")
    cfg.lightgcn.max_edges = 4
    with pytest.raises(ArtifactError, match=r"5 edges, above model\.lightgcn\.max_edges \(4\)"):
        LightGCN(_spec(5, 12), {}, cfg).prepare(tmp_path)
    cfg.lightgcn.max_edges = 5
    model = LightGCN(_spec(5, 12), {}, cfg)
    model.prepare(tmp_path)
    assert model.adjacency.dense_shape.numpy().tolist() == [17, 17] and len(model.adjacency.values) == 10


def test_rating_network_history_leaves_the_rated_movie_out_in_training():
    import tensorflow as tf

    from recsys.models.rating_network import LEAVE_OUT, UserTower

    cfg = ModelConfig()
    cfg.user_history_length = 3
    feats = [{"name": "user_id", "dtype": "int64", "shape": [], "vocab_size": 4, "tower": "user", "pad_id": 0}]
    tower = UserTower(feats, cfg, "user_tower", movie_vocab=8)
    tower.heads({"user_id": tf.constant([2], tf.int64)})  # builds the layers
    tower.set_history(np.array([[0, 0, 0], [0, 0, 0], [5, 6, 0], [0, 0, 0]]))
    emb = tower.history_embedding.embeddings.numpy()
    users = tf.constant([2, 2], tf.int64)
    served = tower.extra_inputs({"user_id": users}, False)[0].numpy()
    trained = tower.extra_inputs({"user_id": users, LEAVE_OUT: tf.constant([5, 7], tf.int64)}, True)[0].numpy()
    np.testing.assert_allclose(served[0], (emb[5] + emb[6]) / 2, rtol=1e-6)
    np.testing.assert_allclose(trained[0], emb[6], rtol=1e-6)  # movie 5's own rating does not see 5
    np.testing.assert_allclose(trained[1], served[1], rtol=1e-6)  # movie 7 is not in the history


def test_lightgcn_under_xla_stops_with_one_line(train_data, tmp_path):
    import subprocess

    from tests.conftest import ENV, train_cmd

    _, overrides = train_data
    proc = subprocess.run(train_cmd(overrides, 1, tmp_path / "m", "--set", "model.kind=lightgcn", "--set", "train.xla=true"),
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "train.xla: model.kind=lightgcn cannot be XLA-compiled" in proc.stderr
    assert "Traceback" not in proc.stderr
