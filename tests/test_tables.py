"""The ``tables`` format (CSV/TSV/Parquet with a column mapping) and script-aware title tokens.

The Douban-shaped fixture is written here, in the shape of the Douban tables of the seed
work: tab-separated with headers, Chinese titles, genres separated by runs of spaces,
dates like ``2018/9/5 19:42`` (Asia/Shanghai), a repeated (user, movie) pair and bad lines.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from recsys.config import load_config
from recsys.datasets.readers import read_tables
from recsys.errors import ConfigError, DataError
from recsys.features import OOV_ID, PAD_ID, title_tokens
from tests.conftest import ROOT, write

SCHEME = {"words": "letters", "cjk": "bigram"}
TITLES = ["大话西游", "霸王别姬", "活着", "阳光灿烂的日子", "让子弹飞", "无间道", "花样年华", "卧虎藏龙", "英雄",
          "功夫", "西游降魔篇", "大话西游之大圣娶亲", "英雄本色", "功夫熊猫", "千与千寻", "饮食男女", "喜剧之王",
          "少林足球", "唐伯虎点秋香", "东成西就"]
GENRES = ["剧情   爱情", "喜剧", "动作  武侠", "剧情", "喜剧   动作", "爱情 剧情   喜剧"]
SHANGHAI = ZoneInfo("Asia/Shanghai")


def write_douban(d: Path, users: int = 30, seed: int = 0) -> dict:
    """Douban-shaped movies.txt, ratings.txt, users.txt in ``d``; returns what the files hold.

    Returns a dict with the good rating lines (user, movie, stars, epoch s), the bad lines by
    expected reason, and the repeated pair's lines.
    """
    rng = np.random.default_rng(seed)
    movie_ids = [26670818 + 7919 * i for i in range(len(TITLES))]  # Douban-sized ids, not small integers
    movies = ["Movieid\tTitle\tGenres"]
    for i, (mid, title) in enumerate(zip(movie_ids, TITLES)):
        movies.append(f"{mid}\t{title}\t{GENRES[i % len(GENRES)]}")
    movies.append("notanid\t坏行\t剧情")  # bad_id
    write(d / "movies.txt", "\n".join(movies) + "\n")
    user_rows = ["UserID\tGender\tAge\tJobID"]
    for u in range(1, users + 1):
        user_rows.append(f"{u}\t{'MF'[u % 2]}\t{18 + u % 40}\t{u % 7}")
    user_rows.append("31\tM\t25")  # wrong_field_count
    write(d / "users.txt", "\n".join(user_rows) + "\n")
    ratings = ["RatingID\tUserID\tMovieID\tRatings\ttimestamps\ttime"]
    good = []
    base = dt.datetime(2018, 9, 5, 19, 42)
    for u in range(1, users + 1):
        for mid in rng.choice(movie_ids, size=12, replace=False):
            when = base + dt.timedelta(days=int(rng.integers(0, 400)), minutes=int(rng.integers(0, 1440)))
            stars = int(rng.integers(1, 6))
            text = f"{when.year}/{when.month}/{when.day} {when.hour}:{when.minute:02d}"
            ratings.append(f"{1359352573 + len(ratings)}\t{u}\t{mid}\t{stars}\t{text}\t{when.year}")
            good.append((u, int(mid), float(stars), int(when.replace(tzinfo=SHANGHAI).timestamp())))
    # the repeated pair: user 1 rates its first movie again, later; the later rating is kept
    u, mid, _, ts = good[0]
    later = dt.datetime.fromtimestamp(ts + 86400 * 30, SHANGHAI)
    ratings.append(f"1\t{u}\t{mid}\t5\t{later.year}/{later.month}/{later.day} {later.hour}:{later.minute:02d}\t2018")
    bad = {
        "bad_timestamp": ["2\t3\t%d\t4\t2018/13/45 25:00\t2018" % movie_ids[0], "3\t3\t%d\t4\tyesterday\t2018" % movie_ids[1]],
        "bad_rating": ["4\t2\t%d\tfive\t2018/9/5 19:42\t2018" % movie_ids[2]],
        "missing_field": ["5\t\t%d\t3\t2018/9/5 19:42\t2018" % movie_ids[3]],
        "wrong_field_count": ["6\t2\t%d\t3\t2018/9/5 19:42" % movie_ids[4]],
        "unknown_movie": ["7\t2\t999\t3\t2018/9/5 19:42\t2018"],
        "unknown_user": ["8\t999\t%d\t3\t2018/9/5 19:42\t2018" % movie_ids[5]],
    }
    for lines in bad.values():
        ratings.extend(lines)
    write(d / "ratings.txt", "\n".join(ratings) + "\n")
    return {"good": good, "bad": bad, "repeated": (u, mid, ts, int(later.timestamp())), "movie_ids": movie_ids}


def douban_cfg(raw: Path, base: Path, *extra: str):
    return load_config(ROOT / "conf/douban.yaml", [
        f"paths.raw={raw}", f"paths.prepared={base}/prepared", f"paths.model={base}/model",
        f"paths.vectors={base}/vectors", f"paths.index={base}/index", f"paths.report={base}/report",
        "prepare.shards.train=2", "prepare.shards.test=1", "prepare.examples_per_record=16", *extra])


# ------------------------------------------------------------------ tokens (fast)


def test_title_tokens_fit_the_script():
    assert title_tokens("大话西游", SCHEME) == ["大话", "话西", "西游"]
    assert title_tokens("活", SCHEME) == ["活"]
    assert title_tokens("千と千尋の神隠し (2001)", SCHEME)[:2] == ["千と", "と千"]
    assert title_tokens("기생충", SCHEME) == ["기생", "생충"]
    assert title_tokens("功夫 Kung Fu Hustle", SCHEME) == ["功夫", "kung", "fu", "hustle"]
    assert title_tokens("大话西游", {"words": "letters", "cjk": "unigram"}) == ["大", "话", "西", "游"]
    # scripts written with spaces: words, whatever the alphabet
    assert title_tokens("Брат 2 (1997)", SCHEME) == ["брат", "2"]
    assert title_tokens("Misérables, Les (1995)", SCHEME) == ["misérables", "les"]
    # a manifest without tokenizer settings keeps the Latin-word tokenizer it was built with
    assert title_tokens("大话西游") == [] and title_tokens("Toy Story (1995)") == ["toy", "story"]


# ------------------------------------------------------------------ mapping and reader (fast)


def test_reader_accounts_every_douban_row(tmp_path):
    info = write_douban(tmp_path)
    cfg = douban_cfg(tmp_path, tmp_path / "out")
    t = read_tables(tmp_path, cfg.data.tables)
    acc = t.accounting()
    n_bad_parse = sum(len(v) for k, v in info["bad"].items() if k not in ("unknown_movie", "unknown_user"))
    assert acc["ratings"]["rows_read"] == len(info["good"]) + 1 + sum(len(v) for v in info["bad"].values())
    assert acc["ratings"]["rows_read"] == acc["ratings"]["rows_kept"] + sum(acc["ratings"]["rejected"].values())
    assert sum(acc["ratings"]["rejected"].values()) == n_bad_parse
    assert acc["ratings"]["rejected"] == {k: len(v) for k, v in info["bad"].items()
                                          if k not in ("unknown_movie", "unknown_user")}
    assert acc["movies"]["rejected"] == {"bad_id": 1} and acc["users"]["rejected"] == {"wrong_field_count": 1}
    first = t.ratings.iloc[0]
    assert tuple(first) == info["good"][0]  # date read in Asia/Shanghai
    m = t.movies.set_index("movie_id").loc[info["movie_ids"][0]]
    assert m["title"] == "大话西游" and m["genres"] == "剧情|爱情"


def test_header_and_mapping_disagree_one_error(tmp_path):
    write_douban(tmp_path)
    cfg = douban_cfg(tmp_path, tmp_path / "out")
    cfg.data.tables.ratings.ignore = ["RatingID"]  # 'time' is now in the header but not in the mapping
    with pytest.raises(DataError) as err:
        read_tables(tmp_path, cfg.data.tables)
    msg = str(err.value)
    assert "ratings.txt" in msg and "'time'" in msg and "RatingID, UserID, MovieID, Ratings, timestamps, time" in msg
    cfg = douban_cfg(tmp_path, tmp_path / "out", "data.tables.movies.title=Name")
    with pytest.raises(DataError, match=r"movies.txt: column 'Name' .*not in the header; columns found: Movieid, Title, Genres"):
        read_tables(tmp_path, cfg.data.tables)


def test_mapping_mistakes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="timezone.*Mars/Olympus"):
        douban_cfg(tmp_path, tmp_path / "o", "data.tables.ratings.timezone=Mars/Olympus")
    with pytest.raises(ConfigError, match="unsupported directive '%Q'"):
        douban_cfg(tmp_path, tmp_path / "o", "data.tables.ratings.timestamp_format=%Y-%Q")
    with pytest.raises(ConfigError, match="genre_separator"):
        douban_cfg(tmp_path, tmp_path / "o", "data.tables.movies.genre_separator=(")
    with pytest.raises(ConfigError, match="ratings.file is empty"):
        douban_cfg(tmp_path, tmp_path / "o", "data.tables.ratings.file=")


# ------------------------------------------------------------------ Spark prepare (slow)


@pytest.fixture(scope="module")
def spark():
    from recsys.spark import get_spark

    session = get_spark("recsys-tables-tests", "local[2]", "1g", 4)
    yield session
    session.stop()


def _prepared_ratings(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("ratings_*"))], ignore_index=True)


@pytest.mark.slow
def test_douban_prepare_accounts_every_row_and_agrees_with_the_reader(spark, tmp_path):
    from recsys.prepare.job import run_prepare

    info = write_douban(tmp_path / "raw")
    cfg = douban_cfg(tmp_path / "raw", tmp_path)
    m = run_prepare(cfg, spark)
    acc = m["accounting"]
    expected = {k: len(v) for k, v in info["bad"].items()}
    expected["duplicate"] = 1
    assert acc["ratings"]["rejected"] == expected
    assert acc["ratings"]["rows_read"] == len(info["good"]) + 1 + sum(len(v) for v in info["bad"].values())
    assert all(a["balanced"] for a in acc.values()) and acc["ratings"]["header_lines"] == 1
    assert acc["movies"]["rejected"] == {"bad_id": 1} and acc["users"]["rejected"] == {"wrong_field_count": 1}
    # the native Spark parser and the Python reader read the same rows: same ids, stars, epoch seconds
    kept = _prepared_ratings(tmp_path / "prepared")[["user_id", "movie_id", "rating", "timestamp"]]
    u, mid, old_ts, new_ts = info["repeated"]
    reader = read_tables(tmp_path / "raw", cfg.data.tables).ratings
    reader = reader[(reader.movie_id != 999) & (reader.user_id != 999)]
    reader = reader[~((reader.user_id == u) & (reader.movie_id == mid) & (reader.timestamp == old_ts))]
    key = ["user_id", "movie_id"]
    both = kept.sort_values(key).reset_index(drop=True), reader.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(both[0].astype("float64"), both[1].astype("float64"))
    assert kept[(kept.user_id == u) & (kept.movie_id == mid)].timestamp.tolist() == [new_ts]
    q = pd.read_parquet(tmp_path / "prepared" / "quarantine" / "ratings")
    assert set(q.reason) == set(expected) and q.text.str.len().min() > 0
    # tokenizer settings and the bigram vocabulary are in the manifest and vocabularies.json
    assert m["feature_settings"]["title_tokens"] == SCHEME
    vocab = __import__("json").loads((tmp_path / "prepared" / "vocabularies.json").read_text())["title_words"]
    assert {"大话", "西游", "功夫"} <= set(vocab)
    assert m["config"]["data"]["tables"]["ratings"]["timezone"] == "Asia/Shanghai"


@pytest.mark.slow
def test_ratings_alone_csv_and_parquet_give_the_same_rows(spark, tmp_path):
    """Ratings only (no users, no movies): id-only features; CSV with quotes == Parquet."""
    from recsys.prepare.job import run_prepare

    rows = [(10_000_000_000 + u, 7_000_000_000 + mv, float(1 + (u * mv) % 5), 1_500_000_000 + u * 100 + mv)
            for u in range(20) for mv in range(15) if (u + mv) % 3]
    frame = pd.DataFrame(rows, columns=["who", "what", "stars", "when"])
    csv_text = "who,what,stars,when\n" + "".join(f'"{a}",{b},{c},{d}\n' for a, b, c, d in rows) + "x,1,2,3\n1,2,3\n"
    write(tmp_path / "csv" / "r.csv", csv_text)
    (tmp_path / "pq").mkdir()
    frame.to_parquet(tmp_path / "pq" / "r.parquet", index=False)
    mapping = ["data.format=tables", "data.tables.ratings.user_id=who", "data.tables.ratings.movie_id=what",
               "data.tables.ratings.rating=stars", "data.tables.ratings.timestamp=when",
               "prepare.split.validation_fraction=0"]
    out, acc = {}, {}
    for kind, name in (("csv", "r.csv"), ("pq", "r.parquet")):
        cfg = load_config(ROOT / "conf/default.yaml", [f"paths.raw={tmp_path / kind}", f"paths.prepared={tmp_path}/p-{kind}",
                                                       f"data.tables.ratings.file={name}", *mapping])
        m = run_prepare(cfg, spark)
        out[kind] = _prepared_ratings(tmp_path / f"p-{kind}").sort_values(["user_id", "movie_id"]).reset_index(drop=True)
        acc[kind] = m["accounting"]
        assert m["source"]["format"] == "tables" and list(acc[kind]) == ["ratings"]
        assert {f["name"]: f["vocab_size"] for f in m["features"]["features"]}["title_words"] == 2  # no titles
    assert acc["pq"]["ratings"]["rows_read"] == acc["pq"]["ratings"]["rows_kept"] == len(rows)
    assert acc["csv"]["ratings"]["rows_read"] == len(rows) + 2 and acc["csv"]["ratings"]["balanced"]
    cols = ["user_id", "movie_id", "rating", "timestamp"]
    pd.testing.assert_frame_equal(out["csv"][cols], out["pq"][cols])
    assert out["csv"].user_id.min() == 10_000_000_000 and out["csv"].movie_id.max() == 7_000_000_014
    q = pd.read_parquet(tmp_path / "p-csv" / "quarantine" / "ratings")
    assert sorted(q.reason) == ["bad_id", "wrong_field_count"]


# ------------------------------------------------------------------ end to end (slow)


@pytest.mark.slow
def test_douban_trains_and_serves_a_new_chinese_title(spark, tmp_path):
    from recsys.export import export_vectors
    from recsys.prepare.job import run_prepare
    from recsys.serving import Recommender, build_serving_dir

    write_douban(tmp_path / "raw", users=40)
    overrides = ["train.epochs=1", "train.batch_size=64", "model.hidden_units=[16]", "model.embedding_dim=8",
                 "model.output_dim=8", "model.retrieval_dim=4", "train.threads_per_rank=1",
                 "prepare.split.validation_fraction=0.1"]
    cfg = douban_cfg(tmp_path / "raw", tmp_path, *overrides)
    run_prepare(cfg, spark)
    sets = [a for o in [f"paths.raw={tmp_path / 'raw'}", f"paths.prepared={tmp_path}/prepared",
                        f"paths.model={tmp_path}/model", *overrides] for a in ("--set", o)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "conf/douban.yaml"), *sets],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export_vectors(cfg.paths.model, cfg.paths.prepared, cfg.paths.vectors)
    build_serving_dir(cfg)
    rec = Recommender.load(cfg.paths.index, model_dir=cfg.paths.model)
    title = "西游英雄传"  # not in the data; its bigrams 西游 and 英雄 are
    _, enc = rec._cold()
    ids = enc.movie(None, title, "剧情|喜剧", None)["title_words"]
    real = [i for i in ids if i != PAD_ID]
    assert len(real) == 4 and sum(i != OOV_ID for i in real) >= 2
    assert ids[0] == enc.vocabs["title_words"].id("西游") != OOV_ID
    similar = rec.similar_to_new_movie(title, ["剧情", "喜剧"], k=5)
    assert len(similar) == 5 and all(r["title"] in TITLES for r in similar)
    m_vec = rec.new_movie_vector(title, ["剧情", "喜剧"])["similarity"]
    other = rec.new_movie_vector("霸王别姬", ["剧情", "喜剧"])["similarity"]
    assert not np.allclose(m_vec, other)  # the title tokens reach the movie tower
