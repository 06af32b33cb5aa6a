"""Mixed precision, loss scaling, XLA and device input (recsys/precision.py).

Fast tests use a tiny hand-made feature spec and plain tapes; the slow ones train through
``train.py`` / ``horovodrun`` on the shared small prepared dataset: the ``gpu`` overlay's own
training settings (read from the rendered overlay) under float16, and XLA at two ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from recsys.config import load_config
from recsys.errors import ConfigError
from tests.conftest import BIN, ENV, ROOT, train_cmd

SPEC = {"label": "rating", "features": [
    {"name": "user_id", "shape": [], "vocab_size": 30, "pad_id": 0, "tower": "user"},
    {"name": "gender", "shape": [], "vocab_size": 4, "pad_id": 0, "tower": "user"},
    {"name": "movie_id", "shape": [], "vocab_size": 40, "pad_id": 0, "tower": "movie"},
    {"name": "genres", "shape": [3], "vocab_size": 8, "pad_id": 0, "tower": "movie"},
    {"name": "title_words", "shape": [6], "vocab_size": 50, "pad_id": 0, "tower": "movie"},
    {"name": "rating", "shape": [], "vocab_size": None, "pad_id": None, "tower": "label"},
]}
SMALL_MODEL = ["model.embedding_dim=8", "model.hidden_units=[16]", "model.output_dim=8", "model.title_filters=4",
               "model.title_kernel_heights=[2, 3]", "model.retrieval_dim=4"]


def _batch(n: int = 32, seed: int = 0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = {f["name"]: tf.constant(rng.integers(1, f["vocab_size"], size=(n, *f["shape"])), tf.int64)
         for f in SPEC["features"] if f["tower"] != "label"}
    return x, tf.constant(rng.uniform(1, 5, n), tf.float32)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("given, expected", [("float16", "float16"), ("bfloat16", "bfloat16"), ("off", "off"),
                                             ("true", "float16"), ("false", "off")])
def test_mixed_precision_setting_and_its_old_boolean_form(given, expected):
    cfg = load_config(ROOT / "conf/default.yaml", [f"train.mixed_precision={given}"])
    assert cfg.train.mixed_precision == expected


def test_precision_defaults_and_a_bad_value_named():
    cfg = load_config(ROOT / "conf/default.yaml")
    assert cfg.train.mixed_precision == "off" and cfg.train.xla is False
    with pytest.raises(ConfigError, match=r"train.mixed_precision' must be one of off, float16, bfloat16; got 'float8'"):
        load_config(ROOT / "conf/default.yaml", ["train.mixed_precision=float8"])
    with pytest.raises(ConfigError, match=r"train.xla' must be true or false"):
        load_config(ROOT / "conf/default.yaml", ["train.xla=fast"])


# ------------------------------------------------------------------ policy and float32 scores


def test_policy_computes_in_half_precision_with_float32_variables_scores_and_losses():
    import tensorflow as tf
    import tf_keras as keras

    from recsys.models.rating_network import RatingNetwork
    from recsys.precision import LossScale, policy

    cfg = load_config(ROOT / "conf/default.yaml", SMALL_MODEL + ["model.retrieval_weight=0.5"]).model
    x, y = _batch()
    before = keras.mixed_precision.global_policy().name
    for setting, compute in (("float16", tf.float16), ("bfloat16", tf.bfloat16)):
        with policy(setting):
            model = RatingNetwork(SPEC, {"train_rating_mean": 3.5}, cfg)
            model.build_variables()
            u, b_u, u_r = model.user_tower.heads(x, training=True)
            m, b_m, m_r = model.movie_tower.heads(x, training=True)
            assert u.dtype == compute and m_r.dtype == compute  # the towers compute in half precision
            assert all(v.dtype == tf.float32 for v in model.trainable_variables)
            # the served vectors and the score are float32
            assert all(v.dtype == tf.float32 for v in model.user_vectors(x).values())
            assert all(v.dtype == tf.float32 for v in model.movie_vectors(x).values())
            assert model.score(x).dtype == tf.float32
            # the retrieval loss with float32 log q (the call that failed under mixed_float16)
            model.log_q = tf.fill([40], -3.0)  # one per movie id
            losses = model.named_losses(x, y)
            assert set(losses) == {"rating", "retrieval", "regularization"}
            assert all(v.dtype == tf.float32 and np.isfinite(v.numpy()) for v in losses.values())
            # one training step as recsys.training takes it: float32 losses, scaled when float16
            scale = LossScale.for_setting(setting)
            assert scale.dynamic == (setting == "float16")
            optimizer = keras.optimizers.Adam(1e-3)
            optimizer.build(model.trainable_variables)

            @tf.function
            def step(x, y):
                with tf.GradientTape() as tape:
                    total = tf.add_n(list(model.named_losses(x, y).values()))
                return scale.minimize(tape, total, model.trainable_variables, optimizer), total

            weights = [v.numpy() for v in model.trainable_variables]
            applied, total = step(x, y)
            assert bool(applied) and total.dtype == tf.float32 and np.isfinite(total.numpy())
            assert any(not np.array_equal(w, v.numpy()) for w, v in zip(weights, model.trainable_variables))
        assert keras.mixed_precision.global_policy().name == before  # restored after the block


def test_loss_scaling_keeps_float16_gradients_that_would_underflow():
    """d/dw of 1e-4 * sum(1e-4 * w * x) computed in float16 is 1e-8 * x, below float16's smallest
    subnormal (6e-8): without scaling it is 0; with the loss scaled by 2**15 it survives and is
    unscaled back to 1e-8 * x."""
    import tensorflow as tf
    import tf_keras as keras

    from recsys.precision import LossScale

    x = tf.constant([1.0, 2.0, 3.0], tf.float16)
    for dynamic, expected in ((False, [0.0, 0.0, 0.0]), (True, [1e-8, 2e-8, 3e-8])):
        w = tf.Variable(tf.zeros(3), name="w")
        scale = LossScale(dynamic)
        small = tf.constant(1e-4, tf.float16)  # a normal float16 (the smallest normal is 6.1e-5)
        with tf.GradientTape() as tape:
            loss = tf.cast(tf.reduce_sum(tf.cast(w, tf.float16) * x * small) * small, tf.float32)
        assert bool(scale.minimize(tape, loss, [w], keras.optimizers.SGD(1.0)))
        np.testing.assert_allclose(-w.numpy(), expected, rtol=2e-2, atol=1e-12)  # SGD, rate 1: w = -gradient


def test_loss_scale_skips_overflowing_steps_and_grows_after_good_ones():
    import tensorflow as tf
    import tf_keras as keras

    from recsys.precision import LossScale

    w = tf.Variable([1.0, -2.0], name="w")
    emb = tf.Variable(tf.ones([5, 2]), name="emb")  # its gradient is IndexedSlices
    scale = LossScale(True, initial=8.0, growth_steps=2)
    opt = keras.optimizers.SGD(0.1)

    @tf.function
    def step(poison):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(w)) + tf.reduce_sum(tf.gather(emb, [1, 3])) * poison
        return scale.minimize(tape, loss, [w, emb], opt)

    assert bool(step(tf.constant(1.0)))  # plain SGD: w - 0.1 * 2w, gathered rows - 0.1
    np.testing.assert_allclose(w.numpy(), [0.8, -1.6], rtol=1e-6)
    np.testing.assert_allclose(emb.numpy()[[1, 3, 0]], [[0.9, 0.9], [0.9, 0.9], [1.0, 1.0]], rtol=1e-6)
    assert float(scale.scale.numpy()) == 8.0 and int(scale.good_steps.numpy()) == 1
    assert bool(step(tf.constant(1.0)))  # second good step in a row: the scale doubles
    assert float(scale.scale.numpy()) == 16.0 and int(scale.good_steps.numpy()) == 0
    w_before, emb_before = w.numpy().copy(), emb.numpy().copy()
    assert not bool(step(tf.constant(np.inf, tf.float32)))  # overflow: skipped, nothing moves, scale halved
    np.testing.assert_array_equal(w.numpy(), w_before)
    np.testing.assert_array_equal(emb.numpy(), emb_before)
    assert float(scale.scale.numpy()) == 8.0 and int(scale.skipped.numpy()) == 1
    assert int(opt.iterations.numpy()) == 2


def test_prefetch_to_device_yields_the_same_batches():
    import tensorflow as tf

    from recsys.precision import gpu_device, prefetch_to_device

    ds = tf.data.Dataset.range(10).batch(3).map(lambda v: {"a": v, "b": tf.cast(v, tf.float32)})
    if gpu_device() is None:
        assert prefetch_to_device(ds) is ds  # no GPU: unchanged
    on_cpu = prefetch_to_device(ds, "/CPU:0")
    assert on_cpu is not ds
    got = [b["a"].numpy().tolist() for b in on_cpu]
    assert got == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_static_batches_recut_ragged_blocks_into_one_shape():
    """Blocks of examples are not all full (a shard's last record is short): under XLA every
    training batch is re-cut to exactly the batch size, in order, with a static shape."""
    import tensorflow as tf

    from recsys.precision import static_batches

    lengths = [16, 16, 3, 16, 16, 16, 7, 16]  # examples per parsed batch, two short ones
    starts = np.cumsum([0] + lengths)
    blocks = tf.data.Dataset.from_generator(
        lambda: ((np.arange(a, b), np.stack([np.arange(a, b)] * 2, 1)) for a, b in zip(starts, starts[1:])),
        output_signature=(tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 2], tf.int64)))
    ds = static_batches(blocks.map(lambda ids, genres: ({"movie_id": ids, "genres": genres},
                                                        tf.cast(ids, tf.float32))), 20)
    assert ds.element_spec[1].shape == (20,) and ds.element_spec[0]["genres"].shape == (20, 2)
    got = [(x["movie_id"].numpy(), y.numpy()) for x, y in ds]
    assert len(got) == sum(lengths) // 20
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in got]), np.arange(len(got) * 20))
    assert all(np.array_equal(ids, y) for ids, y in got)


def test_xla_forward_matches_the_plain_one_and_gives_gradients():
    import tensorflow as tf

    from recsys.models.rating_network import RatingNetwork
    from recsys.precision import compile_forward

    cfg = load_config(ROOT / "conf/default.yaml", SMALL_MODEL + ["model.dropout=0.0"]).model
    model = RatingNetwork(SPEC, {"train_rating_mean": 3.5}, cfg)
    model.build_variables()
    model.log_q = tf.fill([40], -3.0)  # one log sampling probability per movie id (the retrieval loss)
    model.static_shapes = True  # as recsys.training sets it under train.xla (towers per example, static shapes)
    x, y = _batch()

    def forward(x, y):
        return tf.add_n(list(model.named_losses(x, y).values()))

    assert compile_forward(forward, False) is forward
    results = []
    for fn in (tf.function(forward), compile_forward(forward, True)):
        with tf.GradientTape() as tape:
            loss = fn(x, y)
        grads = tape.gradient(loss, model.trainable_variables)
        # (None: the retrieval-only heads and the prior, which the rating does not use)
        results.append((loss.numpy(), [None if g is None else tf.convert_to_tensor(g).numpy() for g in grads]))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    assert sum(g is not None for g in results[0][1]) > 10
    for plain, xla in zip(results[0][1], results[1][1]):
        assert (plain is None) == (xla is None)
        if plain is not None:
            np.testing.assert_allclose(xla, plain, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------ training runs (slow)


def _gpu_overlay_training_command(tmp_path):
    """The gpu overlay's MPIJob launcher command, rendered as tests/test_k8s.py renders it, and the
    conf directory of its ConfigMap: (path of the config it names, the --set values it passes)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the gpu overlay cannot be rendered")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s/overlays/gpu")],  # as users type it
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "recsys-conf"]
    for name, text in conf_map["data"].items():
        (conf_dir / name).write_text(text)
    (mpi,) = [d for d in docs if d["kind"] == "MPIJob"]
    cmd = mpi["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["command"]
    config = cmd[cmd.index("--config") + 1].replace("/etc/recsys/conf", str(conf_dir))
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    return config, sets


@pytest.mark.slow
def test_gpu_overlay_settings_train_under_mixed_precision_and_export_exactly(train_data, tmp_path):
    """The gpu overlay's own training settings (float16) train on CPU: finite, falling loss,
    float32 variables, and exported float32 vectors that rank movies exactly as the model does."""
    import tensorflow as tf

    from recsys.export import export_vectors, load_vectors
    from recsys.models import load_model

    base, overrides = train_data
    config, overlay_sets = _gpu_overlay_training_command(tmp_path)
    assert any(s.startswith("train.mixed_precision=") for s in overlay_sets), overlay_sets
    model_dir = tmp_path / "model"
    # the test's own settings point at the fixture data and keep the run short; none is an overlay key
    ours = overrides + [f"paths.model={model_dir}", "train.epochs=2", "train.batch_size=256",
                        "train.threads_per_rank=1"]
    assert not {o.split("=")[0] for o in ours} & {s.split("=")[0] for s in overlay_sets}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", config]
    for s in overlay_sets + ours:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((model_dir / "model.json").read_text())
    expected = load_config(config, overlay_sets).train.mixed_precision
    assert expected != "off" and summary["config"]["train"]["mixed_precision"] == expected
    history = summary["history"]
    train_mse = [h["train_rating"] for h in history]  # the rating network's named rating loss (MSE)
    assert all(np.isfinite(train_mse)) and all(np.isfinite([h["valid_rmse"] for h in history]))
    assert train_mse[-1] < train_mse[0] - 0.05, train_mse
    if expected == "float16":  # dynamic loss scaling ran and most steps were applied
        assert history[-1]["loss_scale"] >= 1.0 and history[-1]["skipped_steps"] < 10, history[-1]
    # variables (and so checkpoints) are float32
    weights = str(model_dir / summary["weights"])
    dtypes = {name: tf.train.load_checkpoint(weights).get_variable_to_dtype_map()[name]
              for name, _ in tf.train.list_variables(weights) if "model/" in name and "OPTIMIZER" not in name}
    floats = [d for d in dtypes.values() if d.is_floating]
    assert floats and all(d == tf.float32 for d in floats), dtypes

    vectors_dir = tmp_path / "vectors"
    export_vectors(model_dir, base / "prepared", vectors_dir)
    vec = load_vectors(vectors_dir)
    users, movies = vec["users"], vec["movies"]
    assert all(users[n].dtype == np.float32 for n in ("score", "rank"))
    assert all(movies[n].dtype == np.float32 for n in ("score", "rank", "similarity"))
    # brute force from the model itself (float32 weights, float32 compute): score every
    # (user, movie) pair with the model's own score, and compare with the exported vectors
    trained = load_model(model_dir)
    import pyarrow.parquet as pq

    from recsys.features import encoded_columns

    user_table = pq.read_table(base / "prepared/users.parquet").to_pandas()
    movie_table = pq.read_table(base / "prepared/movies.parquet").to_pandas()
    assert user_table["user_id"].tolist() == users["ids"].tolist()
    assert movie_table["movie_id"].tolist() == movies["ids"].tolist()
    uenc = encoded_columns(user_table, trained.tower_names("user"))
    menc = encoded_columns(movie_table, trained.tower_names("movie"))
    n_movies, k = len(movie_table), 10
    assert n_movies > k
    for row in range(0, len(user_table), 37):  # a spread of users
        x = {name: tf.constant(np.repeat(col[row:row + 1], n_movies, axis=0), tf.int64) for name, col in uenc.items()}
        x.update({name: tf.constant(col, tf.int64) for name, col in menc.items()})
        rating = trained.model.score(x).numpy()
        # the exported form: score_offset + <user score, movie score> is the predicted rating
        by_rating = movies["score"] @ users["score"][row] + vec["info"]["score_offset"]
        np.testing.assert_allclose(by_rating, rating, rtol=1e-5, atol=1e-5)
        top = np.argsort(-by_rating, kind="stable")[:k]
        brute = np.argsort(-rating, kind="stable")[:k]
        # only an exact tie (within float32 rounding) may swap two movies
        assert np.array_equal(top, brute) or np.allclose(np.sort(rating[top]), np.sort(rating[brute]), atol=1e-5), row


@pytest.mark.slow
def test_xla_trains_at_two_ranks(train_data, tmp_path):
    """train.xla=true under horovodrun -np 2: the compiled forward pass and Horovod's allreduce
    (outside XLA) train together; both ranks end with the same weights' loss history."""
    base, overrides = train_data
    model_dir = tmp_path / "xla"
    cmd = train_cmd(overrides, 2, model_dir, "--set", "train.xla=true", "--set", "train.epochs=2")
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Compiled cluster using XLA" in proc.stdout + proc.stderr
    summary = json.loads((model_dir / "model.json").read_text())
    assert summary["ranks"] == 2 and summary["config"]["train"]["xla"] is True
    mse = [h["train_rating"] for h in summary["history"]]
    assert all(np.isfinite(mse)) and mse[-1] < mse[0], mse


@pytest.mark.slow
def test_loss_scale_skips_the_same_steps_on_every_rank(tmp_path):
    """Under horovodrun -np 2 only rank 1's loss overflows at step 2: the averaged gradients are
    non-finite on both ranks, so both skip that step, halve the scale and keep equal weights."""
    script = tmp_path / "scale.py"
    script.write_text(f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
os.environ['TF_USE_LEGACY_KERAS'] = '1'
import numpy as np, tensorflow as tf, tf_keras as keras, horovod.tensorflow as hvd
from recsys.precision import LossScale
hvd.init()
w = tf.Variable([1.0, 2.0], name='w')
scale = LossScale(True, initial=1024.0)
opt = keras.optimizers.SGD(0.1)
opt.build([w])
@tf.function
def step(poison):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(w)) * (1.0 + float(hvd.rank())) * poison
    tape = hvd.DistributedGradientTape(tape)
    return scale.minimize(tape, loss, [w], opt)
for i in range(4):
    poison = np.inf if (i == 2 and hvd.rank() == 1) else 1.0
    applied = bool(step(tf.constant(poison, tf.float32)))
    print('STEP', hvd.rank(), i, applied, float(scale.scale.numpy()), w.numpy().round(6).tolist(), flush=True)
""")
    proc = subprocess.run([os.path.join(BIN, "horovodrun"), "-np", "2", sys.executable, str(script)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line.split("STEP ", 1)[1].split(" ", 2) for line in proc.stdout.splitlines() if "STEP " in line]
    by_rank = {r: [rest for rank, _, rest in lines if rank == r] for r in ("0", "1")}
    assert len(by_rank["0"]) == len(by_rank["1"]) == 4
    assert by_rank["0"] == by_rank["1"], by_rank  # the same decision, scale and weights on both ranks
    applied = [s.split()[0] for s in by_rank["0"]]
    assert applied == ["True", "True", "False", "True"]
    assert by_rank["0"][2].split()[1] == "512.0"
    # the applied steps used the average of both ranks' gradients (2w and 4w): w <- w - 0.1 * 3w
    np.testing.assert_allclose(json.loads(by_rank["0"][0].split(" ", 2)[2]), [0.7, 1.4], rtol=1e-6)
