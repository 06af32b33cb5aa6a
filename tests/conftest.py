"""Shared fixtures: small MovieLens files in every format, written byte for byte."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# the environment of train.py / horovodrun subprocesses; BIN holds horovodrun
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
BIN = os.path.dirname(sys.executable)


def write(path: Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    """Three users, four movies in the original ML-100K files (latin-1, an accented title)."""
    d = tmp_path / "ml-100k"
    write(d / "u.data", "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n3\t4\t1\t881250952\n")
    write(d / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n")
    flags = lambda on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    item = (
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags({3, 4, 5})}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x|{flags({1, 2, 16})}\n"
        f"3|Misérables, Les (1995)|01-Jan-1995||http://x|{flags({8, 12})}\n"
        f"4|Unknown Film (1997)|||http://x|{flags({0})}\n"
    )
    write(d / "u.item", item, encoding="latin-1")
    return d


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    """ML-1M '::' files (latin-1), with an accented title and a title containing ':'-free text."""
    d = tmp_path / "ml-1m"
    write(d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    write(d / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                            "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
                            "2000::Amélie (2001)::Comedy|Romance\n", encoding="latin-1")
    return d


@pytest.fixture
def mllatest_dir(tmp_path: Path) -> Path:
    """ml-latest quoted CSV (UTF-8): a title with commas inside quotes, half stars, no users."""
    d = tmp_path / "ml-latest"
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n7,2,0.5,964982224\n")
    write(d / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n'
                            '2,"American President, The (1995)",Comedy|Drama|Romance\n'
                            '3,Jumanji (1995),(no genres listed)\n')
    return d


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    """RecBole atomic files as shipped in the recbole wheel."""
    d = tmp_path / "recbole"
    write(d / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    write(d / "ml-100k.user", "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n196\t49\tM\twriter\t55105\n186\t39\tF\texecutive\t00000\n")
    write(d / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                              "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n")
    return d


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """A small synthetic dataset (12,000 ratings) through the real Spark prepare, shared by the
    training and fault-tolerance tests: ``(base dir, the --set overrides that point at it)``."""
    from recsys.config import load_config
    from recsys.datasets.synth import generate
    from recsys.prepare.job import run_prepare
    from recsys.spark import get_spark

    base = tmp_path_factory.mktemp("train")
    generate(base / "raw", 12_000, 150, 200, seed=4, progress=False)
    overrides = [f"paths.raw={base / 'raw'}", f"paths.prepared={base / 'prepared'}", "prepare.shards.train=4",
                 "prepare.examples_per_record=16", "prepare.split.validation_fraction=0.1"]
    spark = get_spark("recsys-train-tests", "local[2]", "1g", 4)
    try:
        run_prepare(load_config(ROOT / "conf/default.yaml", overrides), spark)
    finally:
        spark.stop()
    return base, overrides


def train_cmd(overrides, ranks, model_dir, *extra, launcher: tuple[str, ...] = ()):
    """``[horovodrun -np N [launcher...]] python train.py`` with a small, fast model on ``overrides``' data."""
    sets = [a for o in overrides + [f"paths.model={model_dir}", "train.batch_size=256", "model.hidden_units=[32]",
                                    "model.embedding_dim=8", "model.output_dim=8", "train.threads_per_rank=1"]
            for a in ("--set", o)]
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "conf/default.yaml"), *sets, *extra]
    if ranks > 1 or launcher:
        cmd = [os.path.join(BIN, "horovodrun"), "-np", str(ranks), *launcher, *cmd]
    return cmd


def training_log_share(prepared, movie_ids):
    """[N] float64: log of each encoded movie id's share of the prepared training ratings, counted
    with pandas (an id without a rating counts as half of one): the reference for the rating
    network's served popularity prior ``g log q_m``."""
    import pandas as pd

    counts = pd.read_parquet(Path(prepared) / "ratings_train", columns=["movie_idx"]).movie_idx.value_counts()
    return np.log(counts.reindex(movie_ids).fillna(0).clip(lower=0.5).to_numpy() / counts.sum())
