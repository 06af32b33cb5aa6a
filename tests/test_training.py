"""The rating network and Horovod training on a small synthetic prepared dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recsys.config import load_config
from tests.conftest import BIN, ENV, ROOT, train_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(train_data):
    return train_data


def _train_cmd(base, overrides, ranks, model_dir, *extra):
    return train_cmd(overrides, ranks, model_dir, *extra)


def test_two_ranks_train_in_lockstep_and_learn(prepared, tmp_path):
    base, overrides = prepared
    model_dir = tmp_path / "m2"
    proc = subprocess.run(_train_cmd(base, overrides, 2, model_dir, "--set", "train.epochs=3"), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((model_dir / "model.json").read_text())
    assert summary["ranks"] == 2
    rmse = [h["train_rmse"] for h in summary["history"]]
    assert rmse[-1] < rmse[0]  # loss decreases
    # only rank 0 logs epochs
    assert proc.stderr.count("epoch 1/3") == 1


def test_rank_shards_are_disjoint_and_steps_equal():
    from recsys.training import shard_files_for_rank

    shards = [{"path": f"train/part-{i:05d}.tfrecord", "records": 100 + i % 2} for i in range(8)]
    a, _ = shard_files_for_rank(shards, ROOT, 0, 2)
    b, _ = shard_files_for_rank(shards, ROOT, 1, 2)
    assert not set(a) & set(b) and len(a) == len(b) == 4
    c, by_record = shard_files_for_rank(shards[:3], ROOT, 0, 2)
    assert by_record and len(c) == 3  # uneven count: every rank reads all files, keeps every 2nd record
    lopsided = [dict(s, records=1000 if i == 0 else 10) for i, s in enumerate(shards)]
    d, by_record = shard_files_for_rank(lopsided, ROOT, 0, 2)
    assert by_record and len(d) == 8  # divisible count, unequal sizes: sharded by record too


def test_identical_weights_on_both_ranks(prepared, tmp_path):
    """After a few steps under horovodrun -np 2, every rank holds the same variables."""
    base, overrides = prepared
    script = tmp_path / "check.py"
    script.write_text(f"""
import os, sys, json
sys.path.insert(0, {str(ROOT)!r})
os.environ['TF_USE_LEGACY_KERAS'] = '1'
import numpy as np, tensorflow as tf, horovod.tensorflow as hvd
from recsys.config import load_config
from recsys.training import train
cfg = load_config({str(ROOT / 'conf/default.yaml')!r}, {overrides + [f'paths.model={tmp_path}/m', 'train.epochs=1', 'model.hidden_units=[16]', 'model.embedding_dim=4', 'model.output_dim=4', 'train.batch_size=128']!r})
import recsys.model as M
orig_init = M.RatingModel.__init__
models = []
def init(self, *a, **k):
    orig_init(self, *a, **k); models.append(self)
M.RatingModel.__init__ = init
train(cfg, max_steps=5)
digest = float(sum(float(tf.reduce_sum(tf.abs(v))) for v in models[0].trainable_variables))
print('DIGEST', hvd.rank(), round(digest, 3), flush=True)
""")
    proc = subprocess.run([os.path.join(BIN, "horovodrun"), "-np", "2", sys.executable, str(script)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    digests = sorted(line.split()[-2:] for line in proc.stdout.splitlines() if "DIGEST" in line)
    assert len(digests) == 2 and digests[0][1] == digests[1][1], digests


def test_resume_continues_from_checkpoint(prepared, tmp_path):
    base, overrides = prepared
    model_dir = tmp_path / "m1"
    first = subprocess.run(_train_cmd(base, overrides, 1, model_dir, "--set", "train.epochs=1"), env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(_train_cmd(base, overrides, 1, model_dir, "--set", "train.epochs=2", "--resume"), env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr and "epoch 2/2" in again.stderr and "epoch 1/2" not in again.stderr
    assert json.loads((model_dir / "model.json").read_text())["epochs_run"] == 2


def test_user_history_table_is_latest_first_and_padded():
    from recsys.model import HISTORY_PAD, user_history_table

    table = user_history_table(np.array([2, 1, 2, 2]), np.array([5, 6, 7, 8]), np.array([10, 1, 30, 20]), 4, 2)
    assert table.tolist() == [[HISTORY_PAD] * 2, [6, HISTORY_PAD], [7, 8], [HISTORY_PAD] * 2]


@pytest.mark.parametrize("history", [0, 8])
def test_score_is_mu_plus_biases_plus_dot(prepared, history, tmp_path):
    import tensorflow as tf

    from recsys.model import RatingModel
    from recsys.prepare.job import load_manifest
    from recsys.prepare.tfrecords import read_shards
    from recsys.training import training_user_history

    base, overrides = prepared
    m = load_manifest(base / "prepared")
    cfg = load_config(ROOT / "conf/default.yaml", overrides + [f"model.user_history_length={history}"])
    model = RatingModel(m["features"], m["stats"]["train_rating_mean"], cfg.model)
    if history:  # SVD++-style implicit feedback: the user's training movies pooled into u
        table = training_user_history(base / "prepared", m["features"]["features"], history)
        model.user_tower.set_history(table)
        assert (table[1:] != 0).any() and table.shape[1] == history
    data = read_shards([str(base / "prepared" / s["path"]) for s in m["splits"]["test"]["shards"]],
                       m["features"]["features"])
    x = {k: tf.constant(v[:64]) for k, v in data.items() if k != "rating"}
    u, b_u, mv, b_m = (t.numpy() for t in model.towers(x))
    assert u.shape == (64, cfg.model.output_dim) and mv.shape == (64, cfg.model.output_dim) and b_u.shape == (64,)
    pred = model(x).numpy()
    np.testing.assert_allclose(pred, m["stats"]["train_rating_mean"] + b_u + b_m + (u * mv).sum(1), rtol=1e-5, atol=1e-5)
    # exported form: <[u, 1], [m, b_m]> = prediction - mu - b_u
    q = np.concatenate([u, np.ones((64, 1))], 1); item = np.concatenate([mv, b_m[:, None]], 1)
    np.testing.assert_allclose((q * item).sum(1), pred - m["stats"]["train_rating_mean"] - b_u, rtol=1e-4, atol=1e-4)
    # the weights file alone (the history table included) rebuilds the same predictions
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "w"))
    again = RatingModel(m["features"], m["stats"]["train_rating_mean"], cfg.model)
    again(x)
    tf.train.Checkpoint(model=again).read(path).assert_consumed()
    np.testing.assert_allclose(again(x).numpy(), pred, rtol=1e-6, atol=1e-6)


def test_horovodrun_two_ranks_with_gloo():
    """The set-up's promise: horovodrun -np 2 starts two Gloo ranks that see size 2."""
    proc = subprocess.run([os.path.join(BIN, "horovodrun"), "-np", "2", sys.executable, "-c",
                           "import horovod.tensorflow as hvd; hvd.init(); print('SIZE', hvd.size())"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("SIZE 2") == 2
    check = subprocess.run([os.path.join(BIN, "horovodrun"), "--check-build"], capture_output=True, text=True)
    assert "[X] TensorFlow" in check.stdout and "[X] Gloo" in check.stdout


def test_fixed_seed_on_one_rank_is_reproducible(prepared, tmp_path):
    # train.deterministic: the same seed on one rank gives the same run, number for number;
    # another seed gives another run (so the comparison can fail)
    base, overrides = prepared
    histories = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        proc = subprocess.run(_train_cmd(base, overrides, 1, tmp_path / name, "--set", "train.epochs=1",
                                         "--set", "train.deterministic=true", "--set", f"train.seed={seed}"),
                              env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        hist = json.loads((tmp_path / name / "model.json").read_text())["history"]
        histories.append([(h["train_rmse"], h["valid_rmse"]) for h in hist])
    assert histories[0] == histories[1]
    assert histories[0] != histories[2]
