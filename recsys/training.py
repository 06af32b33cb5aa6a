"""Horovod data-parallel training of the rating network (custom loop, wrapped tape).

The order follows Horovod's TF2 examples, each Horovod line easy to spot:
init -> pin device -> shard data -> scale learning rate -> wrap the tape -> broadcast
rank 0's variables after the first step -> average metrics -> checkpoint/log on rank 0.

Every rank runs the same number of steps per epoch, computed from the global number of
training examples in the manifest (``floor(examples / (batch_size * ranks))``), and reads
an endless repetition of its own disjoint part of the shards, so an uneven share can
never leave one rank waiting in an allreduce. Runs as plain ``python train.py`` too
(one rank; Horovod initialises a size-1 world).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from recsys.config import Config  # noqa: E402
from recsys.errors import ArtifactError  # noqa: E402


def _log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


def shard_files_for_rank(shards: list[dict], prepared: Path, rank: int, size: int) -> tuple[list[str], bool]:
    """This rank's shard files and whether records must still be sharded within them.

    Whole files per rank when the shard count divides evenly; otherwise every rank reads
    all files and keeps every ``size``-th record, so shares stay equal.
    """
    paths = [str(prepared / s["path"]) for s in shards]
    if len(paths) % size == 0:
        return paths[rank::size], False
    return paths, True


def make_dataset(files: list[str], features: list[dict], batch_records: int, *, shuffle_buffer: int = 0,
                 seed: int = 0, record_shard: tuple[int, int] | None = None, repeat: bool = False,
                 threads: int = 2):
    """tf.data pipeline: interleaved reads, shuffle (records), batch, parse after batching, prefetch.

    Yields ``(features dict, rating)`` batches of ``batch_records`` records each
    (``batch_records * examples_per_record`` examples).
    """
    import tensorflow as tf

    from recsys.prepare.tfrecords import parse_blocks

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), threads)),
                       num_parallel_calls=threads, deterministic=not shuffle_buffer)
    if record_shard is not None:
        ds = ds.shard(record_shard[1], record_shard[0])
    if repeat:
        ds = ds.repeat()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_records)
    ds = ds.map(lambda s: parse_blocks(s, features), num_parallel_calls=threads)
    ds = ds.map(lambda d: ({k: v for k, v in d.items() if k != "rating"}, d["rating"]))
    return ds.prefetch(tf.data.AUTOTUNE)


def _warmup_class():
    import tensorflow as tf
    import tf_keras as keras

    class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up from peak/warmup_steps to ``peak`` over ``warmup_steps`` optimizer steps,
        then ``decay`` per epoch (``steps_per_epoch`` steps): lr = peak * decay ** epochs_after_warmup."""

        def __init__(self, peak: float, warmup_steps: int, steps_per_epoch: int = 1, decay: float = 1.0):
            self.peak, self.warmup_steps = peak, warmup_steps
            self.steps_per_epoch, self.decay = steps_per_epoch, decay

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            frac = tf.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
            after = tf.maximum(0.0, step - float(self.warmup_steps)) / float(self.steps_per_epoch)
            return self.peak * frac * tf.pow(self.decay, after)

        def get_config(self):
            return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                    "steps_per_epoch": self.steps_per_epoch, "decay": self.decay}

    return WarmUp


def movie_log_sampling_probability(prepared: Path, features: list[dict]):
    """log q_m [movie vocab]: the share of training examples that are movie m (the rate at which
    it appears as an in-batch negative), from the prepared ``ratings_train`` table."""
    import numpy as np
    import pyarrow.parquet as pq

    vocab = next(f["vocab_size"] for f in features if f["name"] == "movie_id")
    ids = pq.read_table(prepared / "ratings_train", columns=["movie_idx"]).column("movie_idx").to_numpy()
    counts = np.bincount(ids, minlength=vocab).astype(np.float64)
    return np.log(np.maximum(counts, 0.5) / max(1.0, counts.sum()))


def manifest_checksum(prepared: Path) -> str:
    from recsys.checksums import sha256_file

    return sha256_file(prepared / "manifest.json")


def verify_shards(prepared: Path, splits: dict, names: tuple[str, ...]) -> None:
    """Check every shard of ``names`` exists and matches the sha256 recorded in the manifest."""
    from recsys.checksums import sha256_file

    for name in names:
        for shard in splits.get(name, {}).get("shards", []):
            path = prepared / shard["path"]
            if not path.is_file():
                raise ArtifactError(f"shard {path} listed in the manifest is missing")
            if sha256_file(path) != shard["sha256"]:
                raise ArtifactError(f"shard {path} is corrupt: sha256 differs from manifest.json "
                                    "(re-run prepare, or restore the file)")


def train(cfg: Config, resume: bool = False, max_steps: int | None = None) -> dict | None:
    """Train on ``cfg.paths.prepared`` into ``cfg.paths.model``; returns rank 0's summary."""
    import numpy as np
    import tensorflow as tf

    import horovod.tensorflow as hvd

    from recsys.model import RatingModel, retrieval_loss
    from recsys.prepare.job import load_manifest

    hvd.init()  # Horovod: start (a size-1 world without horovodrun)
    rank, size = hvd.rank(), hvd.size()
    gpus = tf.config.experimental.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:  # Horovod: pin one GPU per local rank
        tf.config.experimental.set_visible_devices(gpus[hvd.local_rank()], "GPU")
        if cfg.train.mixed_precision:
            import tf_keras

            tf_keras.mixed_precision.set_global_policy("mixed_float16")
    threads = cfg.train.threads_per_rank or max(1, (os.cpu_count() or 2) // hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
    tf.random.set_seed(cfg.train.seed + rank)

    prepared = Path(cfg.paths.prepared)
    manifest = load_manifest(prepared)
    if rank == 0:
        verify_shards(prepared, manifest["splits"], ("train", "valid"))
    features = manifest["features"]["features"]
    epr = manifest["examples_per_record"]
    batch_records = max(1, cfg.train.batch_size // epr)
    batch_examples = batch_records * epr
    total = manifest["splits"]["train"]["examples"]
    steps_per_epoch = max(1, total // (batch_examples * size))  # same on every rank
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, max_steps)

    # Horovod: each rank reads its own disjoint part of the training shards
    files, by_record = shard_files_for_rank(manifest["splits"]["train"]["shards"], prepared, rank, size)
    train_ds = make_dataset(files, features, batch_records, shuffle_buffer=cfg.train.shuffle_buffer_records,
                            seed=cfg.train.seed + rank, record_shard=(rank, size) if by_record else None,
                            repeat=True, threads=threads)
    valid_split = "valid" if "valid" in manifest["splits"] else "test"
    vfiles = [str(prepared / s["path"]) for s in manifest["splits"][valid_split]["shards"]]
    valid_ds = make_dataset(vfiles, features, max(1, 8192 // epr), record_shard=(rank, size), threads=threads)

    model = RatingModel(manifest["features"], manifest["stats"]["train_rating_mean"], cfg.model)
    # Horovod: scale the learning rate by the number of ranks, reached by linear warm-up
    peak_lr = cfg.train.learning_rate * size
    warmup_steps = max(1, int(cfg.train.warmup_epochs * steps_per_epoch))
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    import tf_keras as keras

    WarmUp = _warmup_class()
    optimizer = keras.optimizers.Adam(learning_rate=WarmUp(peak_lr, warmup_steps, steps_per_epoch,
                                                          cfg.train.lr_decay_per_epoch))
    model_dir = Path(cfg.paths.model)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var, epoch=epoch_var)
    manager = tf.train.CheckpointManager(ckpt, str(model_dir / "checkpoints"), max_to_keep=3)
    best_ckpt = tf.train.Checkpoint(model=model)
    # build variables so a checkpoint can restore into them
    sample_x, _ = next(iter(valid_ds.take(1)))
    model(sample_x)
    history: list[dict] = []
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        history_path = model_dir / "history.json"
        if history_path.is_file():
            history = json.loads(history_path.read_text())[: int(epoch_var.numpy())]
        if rank == 0:
            _log(f"resumed from {manager.latest_checkpoint} at epoch {int(epoch_var.numpy())}")
    elif resume and rank == 0:
        _log(f"--resume: no checkpoint in {model_dir / 'checkpoints'}, starting fresh")

    rw, temp = cfg.model.retrieval_weight, cfg.model.retrieval_temperature
    log_q = tf.constant(movie_log_sampling_probability(prepared, features), tf.float32) if rw > 0 else None

    @tf.function
    def train_step(x, y, first_batch):
        with tf.GradientTape() as tape:
            u, b_u, m, b_m = model.towers(x, training=True)
            pred = model.mu + b_u + b_m + tf.reduce_sum(u * m, axis=-1)
            mse = tf.reduce_mean(tf.square(tf.cast(pred, tf.float32) - y))
            loss = mse + tf.add_n(model.losses) if model.losses else mse
            if rw > 0:
                ids = x["movie_id"]
                loss = loss + rw * retrieval_loss(u, m, model.prior(ids), ids, tf.gather(log_q, ids), temp)
        tape = hvd.DistributedGradientTape(tape)  # Horovod: average gradients across ranks
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if first_batch:  # Horovod: start every rank from rank 0's variables
            hvd.broadcast_variables(model.variables, root_rank=0)
            hvd.broadcast_variables(optimizer.variables(), root_rank=0)
        return mse, tf.shape(y)[0]

    @tf.function
    def eval_step(x, y):
        pred = tf.clip_by_value(tf.cast(model(x, training=False), tf.float32), manifest["stats"]["rating_min"],
                                manifest["stats"]["rating_max"])
        return tf.reduce_sum(tf.square(pred - y)), tf.cast(tf.shape(y)[0], tf.float32)

    def validate() -> float:
        sse = tf.constant(0.0); n = tf.constant(0.0)
        for x, y in valid_ds:
            a, b = eval_step(x, y)
            sse += a; n += b
        # Horovod: sum over ranks, so the RMSE covers the whole validation set
        sse = hvd.allreduce(sse, op=hvd.Sum); n = hvd.allreduce(n, op=hvd.Sum)
        return float(tf.sqrt(sse / tf.maximum(n, 1.0)))

    writer = tf.summary.create_file_writer(str(model_dir / "logs")) if rank == 0 else None
    if rank == 0:
        model_dir.mkdir(parents=True, exist_ok=True)
        _log(f"{size} rank(s), {threads} threads each; {total:,} training examples, {steps_per_epoch} steps/epoch "
             f"of {batch_examples} examples per rank; lr {peak_lr:g} after {warmup_steps} warm-up steps")
    best = min((h["valid_rmse"] for h in history), default=math.inf)
    bad_epochs = 0
    it = iter(train_ds)
    first = int(step_var.numpy()) == 0
    started = time.time()
    for epoch in range(int(epoch_var.numpy()), cfg.train.epochs):
        t0 = time.time()
        losses, seen = [], 0
        for _ in range(steps_per_epoch):
            x, y = next(it)
            mse, n = train_step(x, y, tf.constant(first))
            first = False
            step_var.assign_add(1)
            losses.append(float(mse)); seen += int(n)
        # Horovod: average the epoch's metrics over ranks before anyone reads them
        train_mse = float(hvd.allreduce(tf.constant(np.mean(losses)), op=hvd.Average))
        total_seen = int(hvd.allreduce(tf.constant(seen, tf.int64), op=hvd.Sum))
        valid_rmse = validate()
        seconds = time.time() - t0
        epoch_var.assign(epoch + 1)
        record = {"epoch": epoch + 1, "train_rmse": math.sqrt(train_mse), "valid_rmse": valid_rmse,
                  "examples_per_s": total_seen / seconds, "examples_per_s_per_rank": total_seen / seconds / size,
                  "seconds": seconds}
        history.append(record)
        improved = valid_rmse < best - 1e-4
        if improved:
            best, bad_epochs = valid_rmse, 0
        else:
            bad_epochs += 1
        if rank == 0:  # Horovod: only rank 0 writes checkpoints and logs
            manager.save(checkpoint_number=epoch + 1)
            if improved:
                best_ckpt.write(str(model_dir / "best" / "weights"))
            (model_dir / "history.json").write_text(json.dumps(history, indent=2))
            with writer.as_default():
                for k in ("train_rmse", "valid_rmse", "examples_per_s"):
                    tf.summary.scalar(k, record[k], step=epoch + 1)
            _log(f"epoch {epoch + 1}/{cfg.train.epochs}: train RMSE {record['train_rmse']:.4f}, "
                 f"valid RMSE {valid_rmse:.4f}{' *' if improved else ''}, {record['examples_per_s']:,.0f} examples/s "
                 f"({record['examples_per_s_per_rank']:,.0f} per rank), {seconds:.1f}s")
        # Horovod: every rank takes rank 0's stopping decision
        stop = int(hvd.broadcast(tf.constant(int(bad_epochs >= cfg.train.early_stopping_patience)), 0))
        if stop:
            if rank == 0:
                _log(f"early stopping: no validation improvement for {bad_epochs} epochs")
            break
    if rank != 0:
        return None
    best_ckpt.read(str(model_dir / "best" / "weights")).expect_partial()
    summary = {
        "config": cfg.to_dict(), "prepared": str(prepared), "manifest_sha256": manifest_checksum(prepared),
        "ranks": size, "best_valid_rmse": best, "epochs_run": len(history), "history": history,
        "train_seconds": time.time() - started, "mu": model.mu,
        "weights": "best/weights", "feature_spec": manifest["features"],
    }
    (model_dir / "model.json").write_text(json.dumps(summary, indent=2))
    _log(f"saved {model_dir} (best valid RMSE {best:.4f})")
    return summary
