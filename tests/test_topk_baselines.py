"""Top-k baselines against hand-computed numbers on tiny matrices; tuning reads validation only."""

import math

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation import Data, Recommender, best_baselines, liked_threshold, ranking_metrics
from recsys.topk_baselines import Ease, ImplicitAls, ItemKnn, Tuned, grid


def _data(X: np.ndarray, test=None, valid=None, rating_min=1.0, rating_max=5.0) -> Data:
    """Data whose training ratings are the non-zeros of the binary matrix X [users, movies]."""
    u, m = np.nonzero(X)
    train = pd.DataFrame({"u": u, "m": m, "rating": np.full(len(u), 4.0)})
    if valid is not None:
        train = pd.concat([train, valid], ignore_index=True)
    n_u, n_m = X.shape
    users = pd.DataFrame({"user_id": np.arange(n_u)})
    movies = pd.DataFrame({"movie_id": np.arange(n_m), "genres": ["A"] * n_m, "year": [2000] * n_m})
    empty = pd.DataFrame({"u": np.zeros(0, int), "m": np.zeros(0, int), "rating": np.zeros(0)})
    return Data(users, movies, train, empty if test is None else test, {}, rating_min, rating_max, valid)


# ---------------------------------------------------------------------------- EASE


def test_ease_two_movies_by_hand():
    # movie 0 rated by users 0, 1, 2; movie 1 by users 0, 2: X^T X = [[3, 2], [2, 2]].
    # With lambda = 1, EASE's B[i, j] is the ridge weight of movie i predicting movie j:
    # B[0, 1] = 2 / (3 + 1) = 0.5 and B[1, 0] = 2 / (2 + 1) = 2/3, diagonal 0.
    X = np.array([[1, 1], [1, 0], [1, 1]])
    ease = Ease(lam=1.0, max_items=10).fit(_data(X))
    assert ease.B == pytest.approx(np.array([[0.0, 0.5], [2 / 3, 0.0]]))
    # user 1 has movie 0 only: scores [0, 0.5]
    assert ease.scores(np.array([1])) == pytest.approx(np.array([[0.0, 0.5]]))


def test_ease_matches_an_independent_ridge_regression_per_column():
    # EASE's closed form equals, column by column, ridge regression of movie j on the other
    # movies: b_{-j} = (X_{-j}^T X_{-j} + lambda I)^-1 X_{-j}^T x_j, b_j = 0 (Steck 2019, eq. 3-8).
    rng = np.random.default_rng(3)
    X = (rng.random((12, 6)) < 0.4).astype(float)
    X[0] = 1.0  # no empty column
    lam = 2.5
    B = Ease(lam=lam, max_items=10).fit(_data(X)).B
    for j in range(X.shape[1]):
        others = [i for i in range(X.shape[1]) if i != j]
        A = X[:, others]
        b = np.linalg.solve(A.T @ A + lam * np.eye(len(others)), A.T @ X[:, j])
        assert B[others, j] == pytest.approx(b, abs=1e-10)
        assert B[j, j] == 0.0


def test_ease_skips_above_its_item_limit_with_one_line():
    X = np.ones((2, 5))
    reason = Ease(lam=1.0, max_items=4).unavailable(_data(X))
    assert "5 movies > evaluate.ease.max_items 4" in reason and reason.endswith(" 0 MiB)") and "\n" not in reason
    assert Ease(lam=1.0, max_items=5).unavailable(_data(X)) is None
    tuned = Tuned("EASE", lambda lam: Ease(lam, 4), grid(lam=[1.0]))
    assert tuned.unavailable(_data(X)) == reason


# ---------------------------------------------------------------------------- ItemKNN

# users x movies:       m0 m1 m2 m3
KNN_X = np.array([[1, 1, 0, 0],   # u0
                  [1, 1, 1, 0],   # u1
                  [0, 1, 1, 0],   # u2
                  [1, 0, 0, 1]])  # u3
# raters: m0 3, m1 3, m2 2, m3 1. Cosines (co-raters / sqrt(n_i n_j)):
C01, C02, C03, C12 = 2 / 3, 1 / math.sqrt(6), 1 / math.sqrt(3), 2 / math.sqrt(6)  # 0.667 0.408 0.577 0.816
# (m1, m3) and (m2, m3) share no rater: 0.


@pytest.mark.parametrize("block", [1, 3, 64])
def test_item_knn_neighbour_sums_by_hand(block):
    data = _data(KNN_X)
    # k = 1: N(m0) = {m1}, N(m1) = {m2}, N(m2) = {m1}, N(m3) = {m0}
    s = ItemKnn(neighbours=1, block_items=block).fit(data).scores(np.array([2, 3]))
    assert s[0] == pytest.approx([C01, C12, C12, 0.0])  # u2 has m1, m2
    assert s[1] == pytest.approx([0.0, 0.0, 0.0, C03])  # u3 has m0, m3
    # k = 2: N(m0) = {m1, m3}, N(m1) = {m2, m0}, N(m2) = {m1, m0}, N(m3) = {m0}
    s = ItemKnn(neighbours=2, block_items=block).fit(data).scores(np.array([2, 3]))
    assert s[0] == pytest.approx([C01, C12, C12, 0.0])
    assert s[1] == pytest.approx([C03, C01, C02, C03])
    # k = 3 keeps every neighbour: score = sum of cosines to the user's other movies
    s = ItemKnn(neighbours=3, block_items=block).fit(data).scores(np.array([1]))
    assert s[0] == pytest.approx([C01 + C02, C01 + C12, C02 + C12, C03])


# ---------------------------------------------------------------------------- tuning


class Poison:
    """A test split that fails the test if anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"tuning read the test split (.{name})")

    def __len__(self):
        raise AssertionError("tuning read the test split (len)")

    def __getitem__(self, key):
        raise AssertionError("tuning read the test split ([])")


def _split_data(test):
    rng = np.random.default_rng(7)
    X = (rng.random((40, 15)) < 0.3).astype(int)
    X[:, 0] = 1
    u, m = np.nonzero(X)
    order = rng.permutation(len(u))
    valid_rows = order[:60]
    keep = np.ones((40, 15), bool)
    keep[u[valid_rows], m[valid_rows]] = False
    valid = pd.DataFrame({"u": u[valid_rows], "m": m[valid_rows], "rating": np.full(60, 5.0)})
    return _data(X * keep, test=test, valid=valid), X * keep, valid


def test_tuning_reads_only_the_validation_split():
    test_a = pd.DataFrame({"u": [0, 1, 2], "m": [1, 2, 3], "rating": [5.0, 5.0, 5.0]})
    test_b = pd.DataFrame({"u": np.arange(40), "m": np.arange(40) % 15, "rating": np.full(40, 1.0)})
    runs = []
    for test in (Poison(), test_a, test_b):
        data, _, _ = _split_data(test)
        tuned = Tuned("ItemKNN", lambda neighbours: ItemKnn(neighbours, 4), grid(neighbours=[1, 3, 8]),
                      block_users=7).fit(data)
        runs.append(tuned.tuning)
    assert [t["chosen"] for t in runs] == [runs[0]["chosen"]] * 3
    assert [[x["ndcg@10"] for x in t["trials"]] for t in runs] == [[x["ndcg@10"] for x in runs[0]["trials"]]] * 3
    assert runs[0]["budget"] == 3 and len(runs[0]["trials"]) == 3


def test_tuning_scores_each_point_on_validation_after_fitting_on_train_only():
    data, X_train_only, valid = _split_data(Poison())
    tuned = Tuned("EASE", lambda lam: Ease(lam, 100), grid(lam=[0.5, 50.0]), block_users=16).fit(data)
    # the same numbers from a Data that holds only train-without-validation and validation
    alone = _data(X_train_only, test=valid)
    for trial in tuned.tuning["trials"]:
        rec = Ease(trial["params"]["lam"], 100).fit(alone)
        assert trial["ndcg@10"] == pytest.approx(ranking_metrics(rec, alone, ks=(10,))[0]["ndcg@10"])
    best = max(tuned.tuning["trials"], key=lambda t: t["ndcg@10"])["params"]
    assert tuned.tuning["chosen"] == best
    # the chosen point is refitted on train + validation: validation pairs count as interactions
    full = Ease(best["lam"], 100).fit(data)
    assert tuned.scores(np.arange(5)) == pytest.approx(full.scores(np.arange(5)))
    assert full.X.nnz == X_train_only.sum() + len(valid)


def test_no_validation_split_uses_the_first_point_and_says_so(capsys):
    data = _data(KNN_X)
    tuned = Tuned("ItemKNN", lambda neighbours: ItemKnn(neighbours, 4), grid(neighbours=[2, 1])).fit(data)
    assert tuned.tuning["chosen"] == {"neighbours": 2} and tuned.tuning["trials"] == []
    assert "no validation split" in capsys.readouterr().err


def test_grid_is_every_combination():
    assert grid(rank=[8, 16], reg=[0.1], alpha=[1.0, 10.0]) == [
        {"rank": 8, "reg": 0.1, "alpha": 1.0}, {"rank": 8, "reg": 0.1, "alpha": 10.0},
        {"rank": 16, "reg": 0.1, "alpha": 1.0}, {"rank": 16, "reg": 0.1, "alpha": 10.0}]


# ---------------------------------------------------------------------------- report


class Fixed(Recommender):
    label, rates = "fixed", False

    def scores(self, users):
        return np.tile(np.arange(5, 0, -1, dtype=float), (len(users), 1))  # movie 0 first


def test_liked_variant_follows_the_rating_scale():
    X = np.zeros((1, 5), int)
    test = pd.DataFrame({"u": [0, 0], "m": [0, 1], "rating": [4.0, 3.5]})
    half_stars = _data(X, test=test, rating_min=0.5, rating_max=5.0)
    assert liked_threshold(half_stars) == pytest.approx(3.875)  # 0.5 + 0.75 * 4.5
    rank = ranking_metrics(Fixed(), half_stars, ks=(1, 2))[0]
    assert rank["recall@2_rel4"] == 1.0 and rank["precision@2_rel4"] == 0.5  # only movie 0 is liked
    ten_point = _data(X, test=pd.DataFrame({"u": [0, 0], "m": [0, 1], "rating": [7.0, 8.0]}),
                      rating_min=1.0, rating_max=10.0)
    assert liked_threshold(ten_point) == pytest.approx(7.75)
    rank = ranking_metrics(Fixed(), ten_point, ks=(1,))[0]
    assert rank["hit_rate@1_rel4"] == 0.0 and rank["hit_rate@1"] == 1.0  # movie 0 (7 of 10) is not liked


def test_best_baseline_and_the_models_difference():
    results = {
        "ours": {"kind": "model", "test": {"rmse": 0.90}, "ranking": {"ndcg@10": 0.30}},
        "SVD": {"kind": "rating prediction", "test": {"rmse": 0.93}, "ranking": {"ndcg@10": 0.10}},
        "bias": {"kind": "rating prediction", "test": {"rmse": 0.95}, "ranking": {"ndcg@10": 0.12}},
        "EASE": {"kind": "top-k", "ranking": {"ndcg@10": 0.40}},
        "huge": {"kind": "top-k", "skipped": "too big"},
    }
    best = best_baselines(results, ["ours"])
    assert best["rmse"]["baseline"] == "SVD" and best["rmse"]["models"]["ours"]["difference"] == pytest.approx(-0.03)
    assert best["ndcg@10"]["baseline"] == "EASE" and best["ndcg@10"]["models"]["ours"]["difference"] == pytest.approx(-0.10)
    assert best["ndcg@10"]["higher_is_better"] and not best["rmse"]["higher_is_better"]
    assert "huge" not in {e["baseline"] for e in best.values()}


# ---------------------------------------------------------------------------- Spark implicit ALS


@pytest.mark.slow
def test_implicit_als_ranks_the_users_own_taste_group_first():
    # two taste groups: users 0-9 watch movies 0-5, users 10-19 watch movies 6-11; each user
    # misses one movie of their group, which implicit ALS must rank above the other group's
    X = np.zeros((20, 12), int)
    X[:10, :6] = 1
    X[10:, 6:] = 1
    for u in range(20):
        X[u, (u % 6) + (0 if u < 10 else 6)] = 0
    als = ImplicitAls(rank=4, reg=0.05, alpha=10.0, iters=10, seed=0).fit(_data(X))
    s = als.scores(np.arange(20))
    assert s.shape == (20, 12)
    for u in range(20):
        held = (u % 6) + (0 if u < 10 else 6)
        other = np.arange(6, 12) if u < 10 else np.arange(6)
        assert s[u, held] > s[u, other].max()


# ---------------------------------------------------------------------------- config


def test_every_baseline_takes_its_settings_from_the_config():
    from pathlib import Path

    from recsys.config import load_config
    from recsys.evaluation import Bias, NeighbourCF, SparkALS, SurpriseModel, baselines

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "conf/ml-100k.yaml", [
        "evaluate.bias.reg=3.0", "evaluate.rating_knn.neighbours=7", "evaluate.svd.factors=11",
        "evaluate.als.rank=5", "evaluate.ease.lambdas=[10.0, 20.0]", "evaluate.item_knn.neighbours=[3]",
        "evaluate.implicit_als.ranks=[4]", "evaluate.implicit_als.regs=[0.2]", "evaluate.implicit_als.alphas=[2.0, 4.0]",
        "evaluate.seed=9"])
    recs = {r.label: r for r in baselines(True, cfg.evaluate)}
    assert isinstance(recs["user+item bias"], Bias) and recs["user+item bias"].reg == 3.0
    assert isinstance(recs["item-based KNN (ratings, cosine)"], NeighbourCF) and recs["item-based KNN (ratings, cosine)"].k == 7
    svd = recs["Surprise SVD"]
    assert isinstance(svd, SurpriseModel) and svd.params["n_factors"] == 11 and svd.seed == 9
    als = recs["Spark MLlib ALS (explicit)"]
    assert isinstance(als, SparkALS) and als.rank == 5 and als.seed == 9
    assert recs["EASE"].grid == [{"lam": 10.0}, {"lam": 20.0}]
    assert recs["ItemKNN (implicit, cosine)"].grid == [{"neighbours": 3}]
    ials = recs["Spark MLlib ALS (implicit)"]
    assert ials.grid == [{"rank": 4, "reg": 0.2, "alpha": 2.0}, {"rank": 4, "reg": 0.2, "alpha": 4.0}]
    assert ials.make(**ials.grid[1]).alpha == 4.0 and ials.make(**ials.grid[1]).seed == 9
    kinds = {label: r.kind for label, r in recs.items()}
    assert kinds["Surprise SVD"] == "rating prediction" and kinds["EASE"] == "top-k" and kinds["popularity"] == "top-k"
    # the fast set leaves out only the slow ones
    assert set(recs) - {r.label for r in baselines(False, cfg.evaluate)} == {
        "Surprise SVD++", "Spark MLlib ALS (explicit)", "Spark MLlib ALS (implicit)"}


def test_the_msr_protocol_config_is_a_per_user_75_25_split():
    from pathlib import Path

    from recsys.config import load_config

    root = Path(__file__).resolve().parents[1]
    msr, default = load_config(root / "conf/ml-100k-msr.yaml"), load_config(root / "conf/ml-100k.yaml")
    split = msr.prepare.split
    assert (split.strategy, split.test_fraction) == ("user_stratified", 0.25) and split.validation_fraction > 0
    assert msr.paths.raw == default.paths.raw and msr.paths.prepared != default.paths.prepared
    assert msr.paths.model != default.paths.model and msr.paths.report != default.paths.report


@pytest.mark.parametrize("override, fragment", [
    ("evaluate.ease.lambdas=[]", "evaluate.ease.lambdas"),
    ("evaluate.item_knn.neighbours=[0]", "evaluate.item_knn.neighbours"),
    ("evaluate.tune_metric=auc", "evaluate.tune_metric"),
    ("evaluate.liked_share=0", "evaluate.liked_share"),
])
def test_bad_evaluate_settings_name_the_key(override, fragment):
    from recsys.config import load_config
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])
