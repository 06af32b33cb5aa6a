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


# ---------------------------------------------------------------------------- bounded memory


def _random_case(seed=0, n_u=40, n_m=25):
    """Random train/test pairs (disjoint per user) with 1-5 star ratings; some users have no test."""
    rng = np.random.default_rng(seed)
    cells = rng.permutation(n_u * n_m)
    train_cells, test_cells = cells[:n_u * n_m // 3], cells[n_u * n_m // 3:n_u * n_m // 3 + n_u * 3]
    test_cells = test_cells[test_cells // n_m < n_u - 5]  # the last 5 users have no test rating
    frame = lambda c: pd.DataFrame({"u": c // n_m, "m": c % n_m, "rating": rng.integers(1, 6, len(c)).astype(float)})  # noqa: E731
    movies = pd.DataFrame({"movie_id": np.arange(n_m) + 100, "genres": [["A", "A|B", "B|C", ""][i % 4] for i in range(n_m)],
                           "year": 1990 + np.arange(n_m)})
    return Data(pd.DataFrame({"user_id": np.arange(n_u) + 1}), movies, frame(train_cells), frame(test_cells), {}, 1.0, 5.0)


class RandomScores(Recommender):
    """Fixed random scores (no ties) for every user and movie."""

    label = "random"

    def __init__(self, n_u, n_m, seed=1):
        self.table = np.random.default_rng(seed).normal(size=(n_u, n_m))
        self.largest_block = 0  # the most users scored in one call

    def scores(self, users):
        self.largest_block = max(self.largest_block, len(users))
        return self.table[users]


def _straightforward_ranking(table, data, ks, liked=4.0):
    """Top-K metrics from their definitions, one user at a time with Python sets: rank every
    unseen movie by score, compare the first k with the user's test movies."""
    seen, test, good = {}, {}, {}
    for u, m in zip(data.train.u, data.train.m):
        seen.setdefault(u, set()).add(m)
    for u, m, r in zip(data.test.u, data.test.m, data.test.rating):
        test.setdefault(u, set()).add(m)
        if r >= liked:
            good.setdefault(u, set()).add(m)
    out = {}
    for variant, relevant in (("", test), ("_rel4", good)):
        for k in ks:
            acc = {}
            for u, rel in relevant.items():
                ranked = [m for m in sorted(range(data.n_movies), key=lambda m: -table[u, m]) if m not in seen.get(u, ())]
                hits = [m in rel for m in ranked[:k]]
                h = sum(hits)
                p, r = h / k, h / len(rel)
                dcg = sum(1 / math.log2(i + 2) for i, x in enumerate(hits) if x)
                idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
                ap = sum(sum(hits[:i + 1]) / (i + 1) for i, x in enumerate(hits) if x) / min(k, len(rel))
                for name, v in (("precision", p), ("recall", r), ("f1", 2 * p * r / (p + r) if h else 0.0),
                                ("ndcg", dcg / idcg), ("hit_rate", float(h > 0)), ("map", ap)):
                    acc.setdefault(name, []).append(v)
            for name, v in acc.items():
                out[f"{name}@{k}{variant}"] = sum(v) / len(v)
    return out


def test_ranking_in_one_user_blocks_equals_one_block_and_the_definitions():
    from recsys.evaluation import block_rows

    data = _random_case()
    rec = RandomScores(data.n_users, data.n_movies)
    tiny = 1e-9  # GiB: far below one user's row of scores, so every block holds one user
    assert block_rows(data.n_movies, 256, tiny) == 1 and block_rows(data.n_movies, 256, None) == 256
    small, users_s, tops_s = ranking_metrics(rec, data, ks=(1, 3, 5), block_memory_gb=tiny)
    assert rec.largest_block == 1
    whole, users_w, tops_w = ranking_metrics(rec, data, ks=(1, 3, 5), block=10_000)
    assert rec.largest_block == len(users_w)
    assert users_s.tolist() == users_w.tolist() == sorted(set(data.test.u))
    assert (tops_s == tops_w).all()
    reference = _straightforward_ranking(rec.table, data, (1, 3, 5))
    assert set(small) == set(reference)
    for key, value in reference.items():
        assert small[key] == pytest.approx(value, rel=1e-12), key
        assert whole[key] == pytest.approx(value, rel=1e-12), key
    # the tops skip seen movies and follow the scores
    for row, u in enumerate(users_s):
        seen = set(data.train.m[data.train.u == u])
        unseen = [m for m in np.argsort(-rec.table[u]) if m not in seen]
        assert tops_s[row].tolist() == unseen[:5]


class CountingBias(Bias):
    """Bias that records the most pairs predicted in one call."""

    largest_block = 0

    def predict(self, u, m):
        self.largest_block = max(self.largest_block, len(u))
        return super().predict(u, m)


def test_rating_errors_streamed_one_pair_at_a_time_equal_the_whole_array():
    data = _random_case()
    bias = CountingBias(reg=1.0, iters=5).fit(data)
    tiny = 1e-9  # GiB: one pair per block
    m = rating_metrics(bias, data.test, 1.0, 5.0, block_memory_gb=tiny)
    assert bias.largest_block == 1
    err = np.clip(bias.mu + bias.bu[data.test.u] + bias.bm[data.test.m], 1, 5) - data.test.rating.to_numpy()
    assert m["n"] == len(data.test)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-12)
    assert m["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-12)


def test_sampled_users_are_a_seeded_subset_with_a_confidence_interval():
    from recsys.evaluation import confidence_interval

    data = _random_case()
    rec = RandomScores(data.n_users, data.n_movies)
    every: dict = {}
    _, users_all, _ = ranking_metrics(rec, data, ks=(10,), per_user=every)
    sample: dict = {}
    rank, users, _ = ranking_metrics(rec, data, ks=(10,), sample_users=12, seed=3, per_user=sample)
    again = ranking_metrics(rec, data, ks=(10,), sample_users=12, seed=3)[1]
    assert len(users) == 12 and set(users) <= set(users_all) and users.tolist() == again.tolist()
    picked = every["ndcg@10"][np.searchsorted(users_all, users)]
    assert rank["ndcg@10"] == pytest.approx(np.nanmean(picked))
    lo, hi = confidence_interval(sample["ndcg@10"])
    v = picked[~np.isnan(picked)]
    half = 1.959964 * np.std(v, ddof=1) / math.sqrt(len(v))
    assert (lo, hi) == pytest.approx((v.mean() - half, v.mean() + half))


def _write_prepared(data: Data, directory, n_valid: int = 0):
    """A prepared directory (manifest, users, movies, ratings_train/valid/test) holding ``data``;
    the last ``n_valid`` training ratings are the validation split."""
    import json

    from recsys.checksums import sha256_file
    from recsys.prepare.job import MANIFEST_VERSION

    directory.mkdir()
    data.users.to_parquet(directory / "users.parquet")
    data.movies.to_parquet(directory / "movies.parquet")
    n_fit = len(data.train) - n_valid
    splits = {}
    for split, frame in (("train", data.train.iloc[:n_fit]), ("valid", data.train.iloc[n_fit:]), ("test", data.test)):
        (directory / f"ratings_{split}").mkdir()
        part = f"ratings_{split}/part-0.parquet"
        pd.DataFrame({"user_id": data.users.user_id.to_numpy()[frame.u], "movie_id": data.movies.movie_id.to_numpy()[frame.m],
                      "rating": frame.rating}).to_parquet(directory / part)
        splits[split] = {"shards": [{"table": part, "table_sha256": sha256_file(directory / part)}]}
    # the manifest fields evaluation reads and verifies (version, table checksums, rating scale)
    manifest = {"manifest_version": MANIFEST_VERSION, "stats": {"rating_min": 1.0, "rating_max": 5.0},
                "tables": {name: {"path": name, "sha256": sha256_file(directory / name)}
                           for name in ("users.parquet", "movies.parquet")},
                "splits": splits}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_evaluate_under_a_tiny_memory_knob_gives_the_same_report(tmp_path):
    import json

    from recsys.config import EvaluateConfig
    from recsys.evaluation import evaluate

    data = _random_case(n_u=30, n_m=20)
    _write_prepared(data, tmp_path / "prepared")
    runs = {}
    for name, memory in (("tiny", 1e-9), ("roomy", 1.0)):
        ev = EvaluateConfig(block_memory_gb=memory)
        ev.ease.lambdas, ev.item_knn.neighbours = [1.0, 10.0], [2, 5]
        runs[name] = evaluate(tmp_path / "prepared", {}, tmp_path / name, include_slow=False, settings=ev)["results"]
    assert set(runs["tiny"]) == set(runs["roomy"]) and not any("skipped" in r for r in runs["tiny"].values())
    for label, row in runs["roomy"].items():
        small = runs["tiny"][label]
        for section in ("test", "ranking"):
            for key, value in row.get(section, {}).items():
                assert small[section][key] == pytest.approx(value, rel=1e-12, nan_ok=True), (label, key)
        for key in ("coverage@10", "diversity@10", "novelty@10", "ranking_users"):
            assert small.get(key) == pytest.approx(row.get(key)), (label, key)
    assert runs["roomy"]["popularity"]["ranking_users"] == data.test.u.nunique()
    assert json.loads((tmp_path / "tiny" / "metrics.json").read_text())["results"]["user+item bias"]["ndcg@10_ci95"]


def test_report_gives_the_synthetic_data_noise_floor_when_the_raw_data_has_it(tmp_path):
    """The raw folder of synthetic data holds each pair's expected rating: the report's noise floor
    is the RMSE of those expectations on the test pairs; without the file there is no floor."""
    import json

    from recsys.config import EvaluateConfig
    from recsys.datasets.synth import EXPECTED_RATINGS
    from recsys.evaluation import evaluate

    data = _random_case(n_u=30, n_m=20)
    _write_prepared(data, tmp_path / "prepared")
    ev = EvaluateConfig()
    ev.ease.lambdas, ev.item_knn.neighbours = [10.0], [5]
    plain = evaluate(tmp_path / "prepared", {}, tmp_path / "plain", include_slow=False, settings=ev)
    assert "noise_floor" not in plain and "Noise floor" not in (tmp_path / "plain" / "report.md").read_text()
    raw = tmp_path / "raw"
    raw.mkdir()
    users, movies = data.users.user_id.to_numpy(), data.movies.movie_id.to_numpy()
    every = pd.DataFrame({"user_id": np.repeat(users, len(movies)), "movie_id": np.tile(movies, len(users))})
    every["expected_rating"] = np.float32(3.0) + (every.user_id % 3).astype(np.float32) * 0.5
    every.to_parquet(raw / EXPECTED_RATINGS)
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    manifest["source"] = {"raw_dir": str(raw)}
    (tmp_path / "prepared" / "manifest.json").write_text(json.dumps(manifest))
    out = evaluate(tmp_path / "prepared", {}, tmp_path / "synthetic", include_slow=False, settings=ev)
    expected = 3.0 + (users[data.test.u.to_numpy()] % 3) * 0.5
    want = float(np.sqrt(np.mean((data.test.rating.to_numpy() - expected) ** 2)))
    assert out["noise_floor"]["pairs"] == len(data.test)
    assert out["noise_floor"]["rmse"] == pytest.approx(want, rel=1e-6)
    assert f"test RMSE {want:.4f}" in (tmp_path / "synthetic" / "report.md").read_text()


def test_baselines_past_their_limits_skip_with_one_line_naming_the_knob(tmp_path, capsys):
    from recsys.config import EvaluateConfig
    from recsys.evaluation import evaluate

    data = _random_case(n_u=30, n_m=20)
    _write_prepared(data, tmp_path / "prepared", n_valid=40)
    ev = EvaluateConfig(sample_users=5)
    ev.rating_knn.max_cells, ev.ease.max_items, ev.svd.max_ratings = 500, 19, 100
    ev.item_knn.neighbours = [2]
    results = evaluate(tmp_path / "prepared", {}, tmp_path / "report", include_slow=False, settings=ev)["results"]
    n_train = len(data.train)
    assert results["Surprise SVD"]["skipped"] == (f"{n_train:,} training ratings > evaluate.svd.max_ratings 100 "
                                                  "(single-threaded SGD over Python-held ratings)")
    assert "evaluate.rating_knn.max_cells 500" in results["user-based KNN (ratings, cosine)"]["skipped"]
    assert "30 users x 20 movies = 600 cells" in results["item-based KNN (ratings, cosine)"]["skipped"]
    assert "20 movies > evaluate.ease.max_items 19" in results["EASE"]["skipped"]
    for r in results.values():
        assert "\n" not in r.get("skipped", "")
    err = capsys.readouterr().err
    assert f"Surprise SVD: skipped: {n_train:,} training ratings > evaluate.svd.max_ratings 100" in err
    report = (tmp_path / "report" / "report.md").read_text()
    assert "EASE skipped: 20 movies > evaluate.ease.max_items 19" in report
    assert f"over 5 of {data.test.u.nunique()} users with test ratings (a seeded sample" in report
    assert results["popularity"]["ranking_users"] == 5
    assert "a seeded sample of 5 validation users" in err  # tuning ranks the same number of users
    # the similarity matrix counts too: 30 x 30 users > 800 cells, 20 x 20 movies fit
    ev.rating_knn.max_cells = 800
    user_knn, item_knn = NeighbourCF(True, 5, 800), NeighbourCF(False, 5, 800)
    assert "900 similarity cells > evaluate.rating_knn.max_cells 800" in user_knn.unavailable(data)
    assert item_knn.unavailable(data) is None


def test_item_knn_skips_above_its_movie_limit_with_one_line():
    from recsys.config import EvaluateConfig
    from recsys.topk_baselines import ItemKnn, topk_baselines

    data = _random_case(n_u=30, n_m=20)
    assert ItemKnn(5, 4, 20).unavailable(data) is None
    reason = ItemKnn(5, 4, 19).unavailable(data)
    assert reason.startswith("20 movies > evaluate.item_knn.max_items 19 (") and "\n" not in reason
    ev = EvaluateConfig()
    ev.item_knn.max_items = 19
    tuned = {r.label: r for r in topk_baselines(ev, include_slow=False)}["ItemKNN (implicit, cosine)"]
    assert tuned.unavailable(data) == reason


@pytest.mark.parametrize("override, key", [("evaluate.block_memory_gb=0", "evaluate.block_memory_gb"),
                                           ("evaluate.sample_users=-1", "evaluate.sample_users"),
                                           ("evaluate.svdpp.max_ratings=-5", "evaluate")])
def test_bad_memory_and_sample_settings_name_the_key(override, key):
    from recsys.config import load_config
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match=f"key '{key}"):
        load_config(None, [override])
