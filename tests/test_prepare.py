"""The Spark prepare job on small hand-made and synthetic inputs (one SparkSession here)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.config import load_config
from recsys.datasets.synth import generate
from recsys.errors import DataError
from recsys.features import OOV_ID, Vocabularies
from recsys.prepare.job import run_prepare
from recsys.prepare.tfrecords import read_shards
from tests.conftest import ROOT, write

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark():
    from recsys.spark import get_spark

    session = get_spark("recsys-tests", "local[2]", "1g", 4)
    yield session
    session.stop()


def _cfg(raw, out, *extra):
    return load_config(ROOT / "conf/default.yaml", [f"paths.raw={raw}", f"paths.prepared={out}",
                                                    "prepare.shards.train=3", "prepare.shards.test=2",
                                                    "prepare.examples_per_record=16",
                                                    "prepare.split.validation_fraction=0", *extra])


def _quarantine(out):
    return pd.read_parquet(Path(out) / "quarantine" / "ratings")


def test_cleaning_rules_and_accounting(spark, tmp_path):
    raw = tmp_path / "raw"
    write(raw / "users.dat", "1::F::25::1::12345\n2::M::35::12::54321\n3::M::1::10::99999\n")
    write(raw / "movies.dat", "10::Alpha (1990)::Drama\n20::Beta (2001)::Comedy|Drama\n30::Gamma (1995)::Action\n")
    write(raw / "ratings.dat", "\n".join([
        "1::10::4::100", "1::20::3::100", "2::10::5::100", "2::20::2::100", "3::10::1::100", "3::30::4::100",
        "1::30::0::100",       # rating_out_of_scale (0)
        "2::30::6::100",       # rating_out_of_scale (6)
        "9::10::3::100",       # unknown_user
        "1::99::3::100",       # unknown_movie
        "3::20::2::100",       # duplicate pair, older: quarantined
        "3::20::5::200",       # duplicate pair, latest: kept
        "2::10::abc::100",     # bad_rating
        "1::10",               # wrong_field_count
    ]) + "\n")
    out = tmp_path / "prepared"
    m = run_prepare(_cfg(raw, out), spark)
    acc = m["accounting"]["ratings"]
    assert acc["rows_read"] == 14 and acc["rows_kept"] == 7 and acc["balanced"]
    assert acc["rejected"] == {"rating_out_of_scale": 2, "unknown_user": 1, "unknown_movie": 1, "duplicate": 1,
                               "bad_rating": 1, "wrong_field_count": 1}
    q = _quarantine(out)
    assert len(q) == 7 and set(q["reason"]) == set(acc["rejected"])
    assert q[q.reason == "duplicate"]["text"].tolist() == ["3::20::2::100"]
    kept = pd.concat([pd.read_parquet(out / f"ratings_{s}") for s in ("train", "test") if (out / f"ratings_{s}").exists()])
    assert kept[(kept.user_id == 3) & (kept.movie_id == 20)]["rating"].tolist() == [5.0]


def test_min_ratings_filters(spark, tmp_path):
    raw = tmp_path / "raw"
    generate(raw, 3000, 60, 120, seed=5, progress=False)
    out = tmp_path / "prepared"
    m = run_prepare(_cfg(raw, out, "prepare.min_ratings_per_movie=20", "prepare.min_ratings_per_user=30"), spark)
    acc = m["accounting"]["ratings"]
    assert acc["rejected"]["movie_below_min_ratings"] > 0 and acc["balanced"]
    kept = pd.concat([pd.read_parquet(out / "ratings_train"), pd.read_parquet(out / "ratings_test")])
    assert kept.groupby("user_id").size().min() >= 30
    # the movie rule applies first, then the user rule (one pass each, as documented)
    q = _quarantine(out)
    later = q[q.reason == "user_below_min_ratings"]["text"].str.split("::").str[1].astype(int)
    assert pd.concat([kept.movie_id, later]).value_counts().min() >= 20


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    generate(raw, 6000, 80, 150, seed=9, progress=False)
    return raw


def test_shards_read_back_exactly_and_repeatably(spark, synth_raw, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ma = run_prepare(_cfg(synth_raw, a), spark)
    mb = run_prepare(_cfg(synth_raw, b), spark)
    assert ma["splits"] == mb["splits"]  # same records, byte for byte (sha256 per shard)
    train = ma["splits"]["train"]
    counts = [s["examples"] for s in train["shards"]]
    assert len(counts) == 3 and max(counts) - min(counts) <= 4
    feats = ma["features"]["features"]
    data = read_shards([str(a / s["path"]) for s in train["shards"]], feats)
    assert len(data["rating"]) == train["examples"]
    for f in feats:
        assert data[f["name"]].shape[1:] == tuple(f["shape"])
        assert data[f["name"]].dtype == (np.float32 if f["dtype"] == "float32" else np.int64)
        if f["vocab_size"]:
            assert data[f["name"]].min() >= 0 and data[f["name"]].max() < f["vocab_size"]
    # the shards hold exactly the rows of the Parquet copy
    pq = pd.read_parquet(a / "ratings_train")
    assert sorted(zip(pq.user_idx, pq.movie_idx)) == sorted(zip(data["user_id"], data["movie_id"]))
    # every training user and movie has its own id: never OOV, one encoded id per raw id
    for raw, enc in (("user_id", "user_idx"), ("movie_id", "movie_idx")):
        assert (pq[enc] != OOV_ID).all(), f"training {raw}s encoded as OOV"
        pairs = pq[[raw, enc]].drop_duplicates()
        assert pairs[raw].is_unique and pairs[enc].is_unique
    assert ma["stats"]["train_rating_mean"] == pytest.approx(pq.rating.mean())


@pytest.mark.parametrize("strategy", ["random", "user_stratified", "temporal"])
def test_split_strategies(spark, synth_raw, tmp_path, strategy):
    out = tmp_path / "p"
    run_prepare(_cfg(synth_raw, out, f"prepare.split.strategy={strategy}", "prepare.split.test_fraction=0.25"), spark)
    train, test = pd.read_parquet(out / "ratings_train"), pd.read_parquet(out / "ratings_test")
    assert len(train) + len(test) == 6000
    assert abs(len(test) / 6000 - 0.25) < 0.03
    assert not set(zip(train.user_id, train.movie_id)) & set(zip(test.user_id, test.movie_id))
    per_user = pd.concat([train.assign(t=0), test.assign(t=1)]).groupby("user_id")
    if strategy in ("user_stratified", "temporal"):
        n = per_user.size(); k = per_user["t"].sum()
        assert (k == np.floor(n * 0.25 + 0.5)).all()  # round half up, as documented
    if strategy == "temporal":
        last_train = train.groupby("user_id").timestamp.max()
        first_test = test.groupby("user_id").timestamp.min()
        assert (first_test >= last_train.reindex(first_test.index)).all()


def test_temporal_validation_sits_between_train_and_test_in_time(spark, synth_raw, tmp_path):
    out = tmp_path / "p"
    run_prepare(_cfg(synth_raw, out, "prepare.split.strategy=temporal", "prepare.split.test_fraction=0.2",
                     "prepare.split.validation_fraction=0.25"), spark)
    train, valid, test = (pd.read_parquet(out / f"ratings_{s}") for s in ("train", "valid", "test"))
    n = pd.concat([train, valid, test]).groupby("user_id").size()
    n_test = np.floor(n * 0.2 + 0.5)
    assert (valid.groupby("user_id").size().reindex(n.index, fill_value=0) == np.floor((n - n_test) * 0.25 + 0.5)).all()
    for earlier, later in ((train, valid), (valid, test)):
        last, first = earlier.groupby("user_id").timestamp.max(), later.groupby("user_id").timestamp.min()
        assert (first >= last.reindex(first.index).fillna(-1)).all()


def test_cold_holdouts_are_encoded_as_unknown(spark, synth_raw, tmp_path):
    out = tmp_path / "p"
    m = run_prepare(_cfg(synth_raw, out, "prepare.split.cold_user_fraction=0.1",
                         "prepare.split.cold_movie_fraction=0.1"), spark)
    assert m["split"]["cold_users"] == 8 and m["split"]["cold_movies"] == 15
    feats = m["features"]["features"]
    cu = read_shards([str(out / s["path"]) for s in m["splits"]["cold_users"]["shards"]], feats)
    cm = read_shards([str(out / s["path"]) for s in m["splits"]["cold_movies"]["shards"]], feats)
    assert len(cu["rating"]) > 0 and (cu["user_id"] == OOV_ID).all()
    assert len(cm["rating"]) > 0 and (cm["movie_id"] == OOV_ID).all()
    train = pd.read_parquet(out / "ratings_train")
    cold_u = pd.read_parquet(out / "ratings_cold_users").user_id.unique()
    assert len(cold_u) == 8 and not set(cold_u) & set(train.user_id)
    vocabs = Vocabularies.load(out / "vocabularies.json")
    assert vocabs["user_id"].size == train.user_id.nunique() + 2


def test_failed_run_keeps_previous_output(spark, synth_raw, tmp_path):
    out = tmp_path / "p"
    run_prepare(_cfg(synth_raw, out), spark)
    before = (out / "manifest.json").read_text()
    empty = tmp_path / "empty"
    write(empty / "ratings.dat", "")
    write(empty / "users.dat", "1::F::25::1::12345\n")
    write(empty / "movies.dat", "10::Alpha (1990)::Drama\n")
    with pytest.raises(DataError, match="ratings.dat: the ratings file has no data lines"):
        run_prepare(_cfg(empty, out), spark)
    assert (out / "manifest.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.tmp-")]


def test_job_reports_missing_input_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "jobs/prepare.py", "--config", "conf/ml-100k.yaml",
                           "--set", f"paths.raw={tmp_path}/nowhere"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: raw data directory not found: {tmp_path}/nowhere " \
                                  "(run `recsys data fetch ml-100k` or set paths.raw)"


HOSTILE = ["1::2::3::4", "1::2::3", "1::2::3::4::5", "::2::3::4", "x::2::3::4", "-1::2::3::4", "1::-2::3::4",
           "1::2::::4", "1::2::abc::4", "1::2::nan::4", "1::2::inf::4", "1::2::3::", "1::2::3::-5", "1::2::3::abc",
           "1::2::3.5::4.0", " 1 :: 2 :: 3 :: 4 ", "3.0::2::3::4", "1,2,3,4", "\ufeff1::2::3::4", "1::2::3::1e12"]


@pytest.mark.parametrize("fmt, sep", [("ml-1m", "::"), ("ml-100k", "\t"), ("ml-latest", ","), ("recbole", "\t")])
def test_native_rating_parser_agrees_with_python_parser(spark, tmp_path, fmt, sep):
    from recsys.datasets.formats import FORMATS, HEADER, RowError, decode_line
    from recsys.prepare.reading import parse_ratings_native, read_lines

    lines = [l.replace("::", sep) for l in HOSTILE]
    path = write(tmp_path / "r.txt", "\n".join(lines) + "\n")
    got = parse_ratings_native(read_lines(spark, str(path)), fmt).collect()
    assert len(got) == len(lines)
    parse = FORMATS[fmt].parsers["ratings"]
    for line, row in zip(lines, got):
        try:
            out = parse(decode_line(line.encode("utf-8")))
            want = ("header", None) if out is HEADER else ("ok", None)
        except RowError as err:
            want = ("rejected", err.reason)
        assert (row["status"], row["reason"]) == want, line
        if want[0] == "ok":
            assert (row["user_id"], row["movie_id"], row["rating"], row["timestamp"]) == tuple(out), line
