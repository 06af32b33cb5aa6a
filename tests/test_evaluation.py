"""Metrics against hand-computed numbers, and the baselines' contract, on tiny data."""

import math

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation import Bias, Data, GlobalMean, NeighbourCF, Popularity, Recommender, beyond_accuracy, \
    ranking_metrics, rating_metrics


def _data():
    users = pd.DataFrame({"user_id": [1, 2]})
    movies = pd.DataFrame({"movie_id": [10, 20, 30, 40, 50], "genres": ["A", "A|B", "B", "C", "C"],
                           "year": [1990, 1991, 1992, 1993, 1994]})
    train = pd.DataFrame({"u": [0, 0, 1], "m": [0, 1, 0], "rating": [5.0, 3.0, 4.0]})
    test = pd.DataFrame({"u": [0, 0, 1], "m": [2, 4, 3], "rating": [4.0, 2.0, 5.0]})
    return Data(users, movies, train, test, {}, 1.0, 5.0)


class Fixed(Recommender):
    label = "fixed"

    def scores(self, users):
        table = np.array([[9, 8, 7, 6, 5], [1, 2, 3, 4, 5]], float)  # user 0 prefers low ids, user 1 high
        return table[users]

    def predict(self, u, m):
        return np.full(len(u), 3.0)


def test_ranking_metrics_by_hand():
    data = _data()
    rank, users, tops = ranking_metrics(Fixed(), data, ks=(2,))
    # user 0: seen {0, 1} -> top-2 = [2, 3]; relevant {2, 4}: 1 hit at rank 1
    # user 1: seen {0}    -> top-2 = [4, 3]; relevant {3}:    1 hit at rank 2
    assert tops[:, :2].tolist() == [[2, 3], [4, 3]]
    assert rank["precision@2"] == pytest.approx(0.5)
    assert rank["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    ndcg0 = 1.0 / (1 + 1 / math.log2(3))
    ndcg1 = (1 / math.log2(3)) / 1.0
    assert rank["ndcg@2"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert rank["hit_rate@2"] == 1.0
    assert rank["map@2"] == pytest.approx((1.0 / 2 + 0.5 / 1) / 2)
    # rated >= 4 only: user 0 relevant {2}, user 1 {3}
    assert rank["recall@2_rel4"] == pytest.approx(1.0)


def test_rating_metrics_and_clipping():
    data = _data()
    m = rating_metrics(GlobalMean().fit(data), data.test, 1.0, 5.0)
    mu = 4.0
    err = np.array([mu - 4, mu - 2, mu - 5])
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2))) and m["mae"] == pytest.approx(np.mean(np.abs(err)))


def test_beyond_accuracy_by_hand():
    data = _data()
    tops = np.array([[2, 3], [4, 3]])
    out = beyond_accuracy(tops, data)
    assert out["coverage@10"] == pytest.approx(3 / 5)
    assert out["diversity@10"] == pytest.approx((1.0 + 0.0) / 2)  # B vs C: 1; C vs C: 0


@pytest.mark.parametrize("rec", [Bias(reg=0.0, iters=30), Popularity(), NeighbourCF(True, k=5), NeighbourCF(False, k=5)])
def test_baselines_honour_the_contract(rec):
    rng = np.random.default_rng(0)
    n_u, n_m = 30, 20
    pairs = {(int(u), int(m)) for u, m in zip(rng.integers(0, n_u, 300), rng.integers(0, n_m, 300))}
    u, m = map(np.array, zip(*sorted(pairs)))
    r = np.clip(np.round(3 + (u % 3) - (m % 2) + rng.normal(0, 0.3, len(u))), 1, 5)
    train = pd.DataFrame({"u": u, "m": m, "rating": r})
    data = Data(pd.DataFrame({"user_id": range(n_u)}),
                pd.DataFrame({"movie_id": range(n_m), "genres": ["A"] * n_m, "year": [2000] * n_m}),
                train, train.iloc[:50], {}, 1.0, 5.0)
    rec.fit(data)
    if rec.ranks:
        assert rec.scores(np.arange(5)).shape == (5, n_m)
    if rec.rates:
        p = rec.predict(train.u.to_numpy(), train.m.to_numpy())
        assert p.shape == (len(train),)
        # fitted on these ratings: clearly better than the global mean on them
        assert np.sqrt(np.mean((p - r) ** 2)) < 0.8 * np.std(r)
