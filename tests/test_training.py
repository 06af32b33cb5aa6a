"""Horovod training (model-agnostic) and the rating network on a small synthetic prepared dataset.

Contract tests every model inherits (identical weights on 2 ranks, exact serving, save/load)
are in tests/test_model_contract.py."""

import json
import os
import subprocess
import sys
import time

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
    loss = [h["train_rating"] for h in summary["history"]]  # the rating network's named rating loss (MSE)
    assert loss[-1] < loss[0]  # loss decreases
    assert summary["kind"] == "rating" and summary["validation_metric"] == "rmse"
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


def test_resume_compares_a_model_key_the_checkpointed_run_predates_with_its_default(tmp_path):
    """A run written before a model-shaping key existed (``model.history_tied`` here) had that key's
    default: resuming with the default goes on, resuming with another value stops with one line."""
    from types import SimpleNamespace

    from recsys.errors import ConfigError
    from recsys.models.rating_network import RatingNetwork
    from recsys.training import RUN_CONFIG, _check_resumed_config

    fism = ["model.user_history_length=8", "model.history_retrieval=true"]
    older = load_config(ROOT / "conf/default.yaml", fism).to_dict()
    del older["model"]["history_tied"]
    (tmp_path / RUN_CONFIG).write_text(json.dumps(older))

    def run(*sets):
        cfg = load_config(ROOT / "conf/default.yaml", [*fism, *sets])
        return SimpleNamespace(model_dir=tmp_path, cfg=cfg, model=RatingNetwork.__new__(RatingNetwork))

    _check_resumed_config(run())  # the default: the same model
    with pytest.raises(ConfigError, match=r"model\.history_tied False -> True"):
        _check_resumed_config(run("model.history_tied=true"))


def test_popularity_grid_keeps_the_best_validation_value_in_the_artifact(prepared, tmp_path):
    import re

    base, overrides = prepared
    model_dir = tmp_path / "grid"
    proc = subprocess.run(_train_cmd(base, overrides, 1, model_dir, "--set", "train.epochs=2",
                                     "--set", "model.retrieval_popularity_grid=[0,50]"), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = {float(g): float(v) for g, v in
              re.findall(r"popularity prior g=([0-9.]+): validation ndcg@10 ([0-9.]+)", proc.stderr)}
    assert set(scores) == {0.0, 50.0} and scores[0.0] != scores[50.0]  # g = 50 ranks by popularity alone
    kept = json.loads((model_dir / "model.json").read_text())["model_config"]["retrieval_popularity"]
    assert kept == max(scores, key=scores.get)  # the artifact (hence export and serving) holds the winner


def test_user_history_table_is_latest_first_and_padded():
    from recsys.models.rating_network import HISTORY_PAD, user_history_table

    table = user_history_table(np.array([2, 1, 2, 2]), np.array([5, 6, 7, 8]), np.array([10, 1, 30, 20]), 4, 2)
    assert table.tolist() == [[HISTORY_PAD] * 2, [6, HISTORY_PAD], [7, 8], [HISTORY_PAD] * 2]


@pytest.mark.parametrize("history", [0, 8])
def test_score_is_mu_plus_biases_plus_dot(prepared, history, tmp_path):
    import tensorflow as tf

    from recsys.models import build_model
    from recsys.models.contract import read_weights, write_weights
    from recsys.models.data import training_user_history
    from recsys.prepare.job import load_manifest
    from recsys.prepare.tfrecords import read_shards

    base, overrides = prepared
    m = load_manifest(base / "prepared")
    cfg = load_config(ROOT / "conf/default.yaml", overrides + [f"model.user_history_length={history}"])
    model = build_model(m["features"], m["stats"], cfg.model)
    if history:  # SVD++-style implicit feedback: the user's training movies pooled into u
        model.prepare(base / "prepared")
        table = training_user_history(base / "prepared", m["features"]["features"], history)
        assert (table[1:] != 0).any() and table.shape[1] == history
        assert (model.user_tower.history.numpy() == table).all()
    data = read_shards([str(base / "prepared" / s["path"]) for s in m["splits"]["test"]["shards"]],
                       m["features"]["features"])
    x = {k: tf.constant(v[:64]) for k, v in data.items() if k != "rating"}
    u, b_u, _ = (t.numpy() for t in model.user_tower.heads(x))
    mv, b_m, _ = (t.numpy() for t in model.movie_tower.heads(x))
    assert u.shape == (64, cfg.model.output_dim) and mv.shape == (64, cfg.model.output_dim) and b_u.shape == (64,)
    mu = m["stats"]["train_rating_mean"]
    pred = model.score(x).numpy()
    np.testing.assert_allclose(pred, mu + b_u + b_m + (u * mv).sum(1), rtol=1e-5, atol=1e-5)
    # the contract's score vectors: <[u, b_u, 1], [m, 1, b_m]> = prediction - mu
    su, sm = model.user_vectors(x)["score"].numpy(), model.movie_vectors(x)["score"].numpy()
    np.testing.assert_allclose((su * sm).sum(1), pred - mu, rtol=1e-4, atol=1e-4)
    # the weights file alone (the history table included) rebuilds the same predictions
    path = write_weights(model, tmp_path / "w")
    again = build_model(m["features"], m["stats"], cfg.model)
    read_weights(again, path)
    np.testing.assert_allclose(again.score(x).numpy(), pred, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_fism_term_of_the_rank_score(prepared, tied):
    """``model.history_retrieval``: the rank vectors' FISM blocks multiply to the mean over the user's
    history of ``<P_j, Q_m>``; with ``model.history_tied`` Q is P itself (one movie table, no
    ``history_target`` variable), without it Q is a table of its own."""
    import tensorflow as tf

    from recsys.models import build_model
    from recsys.prepare.job import load_manifest
    from recsys.prepare.tfrecords import read_shards

    base, overrides = prepared
    m = load_manifest(base / "prepared")
    cfg = load_config(ROOT / "conf/default.yaml", overrides + [
        "model.user_history_length=8", "model.history_retrieval=true", f"model.history_tied={str(tied).lower()}"])
    model = build_model(m["features"], m["stats"], cfg.model)
    model.prepare(base / "prepared")
    names = [v.name for v in model.trainable_variables]
    assert any("history_target" in n for n in names) is not tied
    data = read_shards([str(base / "prepared" / s["path"]) for s in m["splits"]["test"]["shards"]],
                       m["features"]["features"])
    x = {k: tf.constant(v[:64]) for k, v in data.items() if k != "rating"}
    width = cfg.model.embedding_dim
    user_fism = model.user_vectors(x)["rank"].numpy()[:, -width - 1:-1]
    movie_fism = model.movie_vectors(x)["rank"].numpy()[:, -width - 1:-1]
    p = model.user_tower.history_embedding.embeddings.numpy()
    q = p if tied else model.history_target.embeddings.numpy()
    table = model.user_tower.history.numpy()[data["user_id"][:64]]  # [64, 8], 0-padded
    expected = np.array([np.mean([p[j] @ q[mid] for j in row[row != 0]]) if (row != 0).any() else 0.0
                         for row, mid in zip(table, data["movie_id"][:64])])
    assert (table != 0).any(axis=1).sum() > 32  # most test users have a training history
    np.testing.assert_allclose((user_fism * movie_fism).sum(1), expected, rtol=1e-4, atol=1e-6)
    if not tied:  # a table of its own: the term is not <P_j, P_m>
        assert not np.allclose(movie_fism, p[data["movie_id"][:64]])


def test_non_finite_loss_stops_with_one_line(prepared, tmp_path):
    """A learning rate that makes the loss explode: one error line naming epoch, step and the knobs.
    The losses are read every 7 steps (of about 40 per epoch): the line names the first non-finite
    step inside that window, not the step where the window was read."""
    import re

    base, overrides = prepared
    proc = subprocess.run(_train_cmd(base, overrides, 1, tmp_path / "m", "--set", "train.learning_rate=1.0e+30",
                                     "--set", "train.warmup_epochs=0", "--set", "train.finite_check_steps=7"),
                          env=ENV, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "non-finite loss" in errors[0] and "at epoch 1, step" in errors[0] and "train.learning_rate" in errors[0]
    step = int(re.search(r"at epoch 1, step (\d+)", errors[0]).group(1))
    assert 2 <= step < 7, errors[0]  # step 1 runs on the initial weights; the blow-up shows at once
    assert "Traceback" not in proc.stderr


def test_only_rank0_has_the_checkpoint_both_ranks_resume_at_its_step(prepared, tmp_path):
    """Node-local model directories: rank 1's is empty, rank 0's holds epoch 1. Rank 0 decides and
    broadcasts, so both ranks run epoch 2 only and finish (a disagreement would hang or run 2 epochs)."""
    base, overrides = prepared
    first = subprocess.run(_train_cmd(base, overrides, 1, tmp_path / "rank0", "--set", "train.epochs=1"), env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    script = tmp_path / "resume.py"
    small = ["train.batch_size=256", "model.hidden_units=[32]", "model.embedding_dim=8", "model.output_dim=8",
             "train.threads_per_rank=1", "train.epochs=2"]
    script.write_text(f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
import horovod.tensorflow as hvd
from recsys.config import load_config
from recsys.training import train
rank = os.environ['HOROVOD_RANK']
cfg = load_config({str(ROOT / 'conf/default.yaml')!r}, {overrides + small!r} + [f'paths.model={tmp_path}/rank' + rank])
train(cfg, resume=True)
import recsys.training as T
print('STEP', rank, int(T.LAST_RUN.step_var.numpy()), int(T.LAST_RUN.epoch_var.numpy()), flush=True)
""")
    proc = subprocess.run([os.path.join(BIN, "horovodrun"), "-np", "2", sys.executable, str(script)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    steps = sorted(line.split()[-3:] for line in proc.stdout.splitlines() if "STEP" in line)
    assert len(steps) == 2 and steps[0][1:] == steps[1][1:] and steps[0][2] == "2", steps
    log = proc.stdout + proc.stderr
    assert "resumed from" in log and "epoch 2/2" in log and "epoch 1/2" not in log
    summary = json.loads((tmp_path / "rank0" / "model.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    # a resume rank 0 refuses (a changed model shape) stops every rank with rank 0's reason,
    # at once: no rank is left waiting for a resume point that never comes
    refuse = tmp_path / "refuse.py"
    refuse.write_text(script.read_text().replace("train(cfg, resume=True)", """try:
    train(cfg, resume=True)
except RecsysError as err:
    print('REFUSED', rank, err, flush=True)
    sys.exit(2)""").replace("from recsys.training import train", "from recsys.training import train\n"
                            "from recsys.errors import RecsysError").replace("'train.epochs=2'", "'train.epochs=3', "
                                                                             "'model.output_dim=16'"))
    started = time.time()
    proc = subprocess.run([os.path.join(BIN, "horovodrun"), "-np", "2", sys.executable, str(refuse)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    refused = sorted("REFUSED" + line.split("REFUSED", 1)[1] for line in proc.stdout.splitlines() if "REFUSED" in line)
    assert proc.returncode != 0 and len(refused) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "model.output_dim 8 -> 16" in refused[0] and refused[1].startswith("REFUSED 1 rank 1: rank 0 refused the "
                                                                             "resume: ") and "model.output_dim" in refused[1]
    assert time.time() - started < 300


def test_horovodrun_two_ranks_with_gloo():
    """The set-up's promise: horovodrun -np 2 starts two Gloo ranks that see size 2."""
    proc = subprocess.run([os.path.join(BIN, "horovodrun"), "-np", "2", sys.executable, "-c",
                           "import horovod.tensorflow as hvd; hvd.init(); print('SIZE', hvd.size())"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("SIZE 2") == 2
    check = subprocess.run([os.path.join(BIN, "horovodrun"), "--check-build"], capture_output=True, text=True)
    assert "[X] TensorFlow" in check.stdout and "[X] Gloo" in check.stdout


def test_resume_checks_the_config_and_falls_back_from_a_damaged_checkpoint(prepared, tmp_path):
    """--resume: a changed model shape stops with one line naming the keys; a changed training
    setting goes on (logged); a damaged latest checkpoint falls back to the previous one."""
    base, overrides = prepared
    model_dir = tmp_path / "m"
    first = subprocess.run(_train_cmd(base, overrides, 1, model_dir, "--set", "train.epochs=2",
                                      "--set", "train.early_stopping_patience=10"),
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    changed = subprocess.run(_train_cmd(base, overrides, 1, model_dir, "--set", "train.epochs=3", "--resume",
                                        "--set", "model.output_dim=16"), env=ENV, capture_output=True, text=True,
                             timeout=600)
    errors = [line for line in changed.stderr.splitlines() if line.startswith("error:")]
    assert changed.returncode == 2 and len(errors) == 1 and "model.output_dim 8 -> 16" in errors[0], changed.stderr[-2000:]
    assert "Traceback" not in changed.stderr
    latest = sorted((model_dir / "checkpoints").glob("ckpt-2.data-*"))[0]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a truncated last checkpoint
    again = subprocess.run(_train_cmd(base, overrides, 1, model_dir, "--set", "train.epochs=3", "--resume",
                                      "--set", "train.learning_rate=0.001", "--set", "train.early_stopping_patience=10",
                                      "--set", "model.retrieval_group_size=128"),
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ckpt-2 cannot be read" in again.stderr and "resumed from" in again.stderr and "ckpt-1 at epoch 1" in again.stderr
    assert "train.learning_rate changed 0.002 -> 0.001" in again.stderr
    # a model key that does not decide the variables (a throughput knob) goes on, logged
    assert "model.retrieval_group_size changed 1024 -> 128" in again.stderr
    assert [h["epoch"] for h in json.loads((model_dir / "model.json").read_text())["history"]] == [1, 2, 3]
    # the run has finished: resuming it with a new learning rate says so and keeps the model (exit 0)
    before = (model_dir / "model.json").read_text()
    done = subprocess.run(_train_cmd(base, overrides, 1, model_dir, "--set", "train.epochs=3", "--resume",
                                     "--set", "train.learning_rate=0.0005", "--set", "train.early_stopping_patience=10"),
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the checkpointed run had finished (epoch 3 of train.epochs 3" in done.stderr, done.stderr[-3000:]
    assert "nothing left to train" in done.stderr and "epoch 4" not in done.stderr
    assert json.loads((model_dir / "model.json").read_text())["history"] == json.loads(before)["history"]


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
        histories.append([(h["train_loss"], h["valid_rmse"]) for h in hist])
    assert histories[0] == histories[1]
    assert histories[0] != histories[2]


def test_a_split_without_validation_data_is_refused_not_selected_on_test(prepared, tmp_path):
    """Model selection never uses the test split: prepared data with no validation split (what
    prepare writes with prepare.split.validation_fraction=0) stops training with one line."""
    import shutil

    base, overrides = prepared
    no_valid = tmp_path / "prepared"
    shutil.copytree(base / "prepared", no_valid)
    manifest = json.loads((no_valid / "manifest.json").read_text())
    del manifest["splits"]["valid"]
    shutil.rmtree(no_valid / "ratings_valid")
    (no_valid / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run(_train_cmd(base, overrides + [f"paths.prepared={no_valid}"], 1, tmp_path / "m",
                                     "--set", "train.epochs=1"), env=ENV, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "has no validation split" in errors[0] and "validation_fraction" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "m" / "checkpoints").exists()
