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

import contextlib
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

    Whole files per rank only when the shard count divides evenly *and* every rank's files
    hold the same number of records (give or take one per file, as prepare balances them).
    Otherwise every rank reads all files and keeps every ``size``-th record of each file, so
    shares stay equal however uneven the shards are, and no record is read twice or never.
    """
    paths = [str(prepared / s["path"]) for s in shards]
    if len(paths) % size == 0:
        shares = [sum(s["records"] for s in shards[r::size]) for r in range(size)]
        if max(shares) - min(shares) <= len(paths) // size:
            return paths[rank::size], False
    return paths, True


def make_dataset(files: list[str], features: list[dict], batch_records: int, *, shuffle_buffer: int = 0,
                 seed: int = 0, record_shard: tuple[int, int] | None = None, repeat: bool = False,
                 threads: int = 2, deterministic: bool = False):
    """tf.data pipeline: interleaved reads, shuffle (records), batch, parse after batching, prefetch.

    ``record_shard=(rank, size)`` keeps every ``size``-th record of each file, starting at
    ``rank`` (inside each file, so the shares are disjoint whatever order the interleave takes).
    Yields ``(features dict, rating)`` batches of ``batch_records`` records each
    (``batch_records * examples_per_record`` examples). ``deterministic``: the interleave keeps
    its order even while shuffling (reproducible runs, see ``train.deterministic``).
    """
    import tensorflow as tf

    from recsys.prepare.tfrecords import parse_blocks

    def read(path):
        records = tf.data.TFRecordDataset(path)
        return records.shard(record_shard[1], record_shard[0]) if record_shard is not None else records

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(read, cycle_length=max(1, min(len(files), threads)),
                       num_parallel_calls=threads, deterministic=deterministic or not shuffle_buffer)
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
        then ``decay`` per epoch (``steps_per_epoch`` steps): lr = peak * decay ** epochs_after_warmup.
        ``peak`` is the per-rank rate times ``ranks`` (a variable, so an elastic resize rescales it)."""

        def __init__(self, per_rank: float, warmup_steps: int, steps_per_epoch: int = 1, decay: float = 1.0,
                     ranks=1.0):
            self.per_rank, self.ranks, self.warmup_steps = per_rank, ranks, warmup_steps
            self.steps_per_epoch, self.decay = steps_per_epoch, decay

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            frac = tf.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
            after = tf.maximum(0.0, step - float(self.warmup_steps)) / float(self.steps_per_epoch)
            return self.per_rank * tf.cast(self.ranks, tf.float32) * frac * tf.pow(self.decay, after)

        def get_config(self):
            return {"per_rank": self.per_rank, "warmup_steps": self.warmup_steps,
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


def training_user_history(prepared: Path, features: list[dict], length: int):
    """The [user vocab, length] table of each user's training movies (model.user_history_table),
    from the prepared ``ratings_train`` table: validation and test ratings never enter it."""
    import pyarrow.parquet as pq

    from recsys.model import user_history_table

    vocab = next(f["vocab_size"] for f in features if f["name"] == "user_id")
    t = pq.read_table(prepared / "ratings_train", columns=["user_idx", "movie_idx", "timestamp"])
    return user_history_table(t.column("user_idx").to_numpy(), t.column("movie_idx").to_numpy(),
                              t.column("timestamp").to_numpy(), vocab, length)


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


class _Progress:
    """Where training stands: the epoch to run next, global examples done in it, history, early stopping.

    A plain object in a static run; in an elastic run its fields live in Horovod's elastic
    state, which commits them with the variables and restores them after a lost worker."""

    def __init__(self, epoch: int = 0, examples_done: int = 0, history: list | None = None,
                 best: float = math.inf, bad_epochs: int = 0):
        self.epoch, self.examples_done = epoch, examples_done
        self.history = history or []
        self.best, self.bad_epochs = best, bad_epochs

    def fields(self) -> dict:
        return {"epoch": self.epoch, "examples_done": self.examples_done, "history": self.history,
                "best": self.best, "bad_epochs": self.bad_epochs}


def _is_peer_failure(err: Exception) -> bool:
    """True for the error an allreduce raises when another rank died (Horovod shut down)."""
    from horovod.common.exceptions import HorovodInternalError

    text = str(err)
    return isinstance(err, HorovodInternalError) or "Horovod has been shut down" in text or any(
        op in text for op in ("HorovodAllreduce", "HorovodBroadcast", "HorovodAllgather"))


class Trainer:
    """One training run: data spec, model, optimizer, checkpoints and the compiled steps.

    ``fit()`` is the static loop (a fixed set of ranks); ``fit_elastic()`` runs the same
    epochs under ``hvd.elastic.run`` so that ranks may leave (and join) between commits.
    """

    def __init__(self, cfg: Config, threads: int, max_steps: int | None = None):
        import tensorflow as tf
        import tf_keras as keras

        import horovod.tensorflow as hvd

        from recsys.model import RatingModel, retrieval_loss
        from recsys.prepare.job import load_manifest

        self.cfg, self.hvd, self.max_steps = cfg, hvd, max_steps
        self.prepared = Path(cfg.paths.prepared)
        self.manifest = load_manifest(self.prepared)
        if hvd.rank() == 0:
            verify_shards(self.prepared, self.manifest["splits"], ("train", "valid"))
        self.features = self.manifest["features"]["features"]
        epr = self.manifest["examples_per_record"]
        self.batch_records = max(1, cfg.train.batch_size // epr)
        self.batch_examples = self.batch_records * epr
        self.total = self.manifest["splits"]["train"]["examples"]
        self.threads = threads  # tf.data threads per rank (train() sets TF's pools from the same figure)
        valid_split = "valid" if "valid" in self.manifest["splits"] else "test"
        self.valid_files = [str(self.prepared / s["path"]) for s in self.manifest["splits"][valid_split]["shards"]]
        stats = self.manifest["stats"]
        self.rating_range = (stats["rating_min"], stats["rating_max"])

        self.model = model = RatingModel(self.manifest["features"], stats["train_rating_mean"], cfg.model)
        # Horovod: the learning rate is scaled by the number of ranks (a variable: elastic runs change it),
        # reached by linear warm-up over the first epoch(s) of a full-size run
        self.ranks_var = tf.Variable(float(hvd.size()), trainable=False, name="ranks")
        spe = self.steps_per_epoch(hvd.size())
        WarmUp = _warmup_class()
        self.warmup_steps = max(1, int(cfg.train.warmup_epochs * spe))
        self.optimizer = keras.optimizers.Adam(learning_rate=WarmUp(
            cfg.train.learning_rate, self.warmup_steps, spe, cfg.train.lr_decay_per_epoch, self.ranks_var))
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.model_dir = Path(cfg.paths.model)
        # build every variable (model and optimizer slots) so checkpoints and elastic state can hold them
        sample_x, _ = next(iter(make_dataset(self.valid_files[:1], self.features, 1, threads=1)))
        model.retrieval_score(sample_x)  # builds both towers, the retrieval-only heads and the prior
        if cfg.model.user_history_length > 0:
            model.user_tower.set_history(training_user_history(self.prepared, self.features,
                                                               cfg.model.user_history_length))
        self.optimizer.build(model.trainable_variables)
        # Polyak averaging: an exponential moving average of the weights, validated and kept
        # as the model (less noise than the last step's weights); empty when off
        decay = cfg.train.weight_average_decay
        self.averages = [tf.Variable(v, trainable=False, name=f"average_{i}")
                         for i, v in enumerate(model.trainable_variables)] if decay > 0 else []
        ckpt = tf.train.Checkpoint(model=model, optimizer=self.optimizer, step=self.step_var, epoch=self.epoch_var,
                                   averages=self.averages)
        self.manager = tf.train.CheckpointManager(ckpt, str(self.model_dir / "checkpoints"), max_to_keep=3)
        self.best_ckpt = tf.train.Checkpoint(model=model)

        rw, temp = cfg.model.retrieval_weight, cfg.model.retrieval_temperature
        log_q = tf.constant(movie_log_sampling_probability(self.prepared, self.features), tf.float32) if rw > 0 else None

        @tf.function
        def train_step(x, y, first_batch):
            with tf.GradientTape() as tape:
                u, b_u, m, b_m, u_r, m_r = model.all_heads(x, training=True)
                pred = model.mu + b_u + b_m + tf.reduce_sum(u * m, axis=-1)
                mse = tf.reduce_mean(tf.square(tf.cast(pred, tf.float32) - y))
                loss = mse + tf.add_n(model.losses) if model.losses else mse
                if rw > 0:
                    ids = x["movie_id"]
                    loss = loss + rw * retrieval_loss(tf.concat([u, u_r], -1), tf.concat([m, m_r], -1),
                                                      model.prior(ids), ids, tf.gather(log_q, ids), temp)
            tape = hvd.DistributedGradientTape(tape)  # Horovod: average gradients across ranks
            grads = tape.gradient(loss, model.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            if first_batch:  # Horovod: start every rank from rank 0's variables
                hvd.broadcast_variables(model.variables, root_rank=0)
                hvd.broadcast_variables(self.optimizer.variables(), root_rank=0)
                if self.averages:
                    hvd.broadcast_variables(self.averages, root_rank=0)
            for average, var in zip(self.averages, model.trainable_variables):
                average.assign(decay * average + (1.0 - decay) * var)
            return mse, tf.shape(y)[0]

        @tf.function
        def eval_step(x, y):
            pred = tf.clip_by_value(tf.cast(model(x, training=False), tf.float32), *self.rating_range)
            return tf.reduce_sum(tf.square(pred - y)), tf.cast(tf.shape(y)[0], tf.float32)

        self.train_step, self.eval_step = train_step, eval_step
        self.writer = None
        self.started = time.time()

    # ------------------------------------------------------------------ data

    def steps_per_epoch(self, size: int) -> int:
        """Steps each rank runs per epoch: the same on every rank, from the global example count."""
        steps = max(1, self.total // (self.batch_examples * size))
        return min(steps, self.max_steps) if self.max_steps else steps

    def inputs(self, rank: int, size: int):
        """(endless training iterator over this rank's disjoint share, this rank's validation dataset)."""
        cfg = self.cfg
        # Horovod: each rank reads its own disjoint part of the training shards
        files, by_record = shard_files_for_rank(self.manifest["splits"]["train"]["shards"], self.prepared, rank, size)
        train_ds = make_dataset(files, self.features, self.batch_records, shuffle_buffer=cfg.train.shuffle_buffer_records,
                                seed=cfg.train.seed + rank, record_shard=(rank, size) if by_record else None,
                                repeat=True, threads=self.threads, deterministic=cfg.train.deterministic)
        valid_ds = make_dataset(self.valid_files, self.features, max(1, 8192 // self.manifest["examples_per_record"]),
                                record_shard=(rank, size), threads=self.threads)
        return iter(train_ds), valid_ds

    @contextlib.contextmanager
    def averaged_weights(self):
        """Inside: the model holds the averaged weights (when averaging is on); after: the live ones."""
        if not self.averages:
            yield
            return
        live = [v.numpy() for v in self.model.trainable_variables]
        for var, average in zip(self.model.trainable_variables, self.averages):
            var.assign(average)
        try:
            yield
        finally:
            for var, value in zip(self.model.trainable_variables, live):
                var.assign(value)

    def validate(self, valid_ds) -> float:
        import tensorflow as tf

        hvd = self.hvd
        sse = tf.constant(0.0); n = tf.constant(0.0)
        for x, y in valid_ds:
            a, b = self.eval_step(x, y)
            sse += a; n += b
        # Horovod: sum over ranks, so the RMSE covers the whole validation set
        sse = hvd.allreduce(sse, op=hvd.Sum); n = hvd.allreduce(n, op=hvd.Sum)
        return float(tf.sqrt(sse / tf.maximum(n, 1.0)))

    # ------------------------------------------------------------------ checkpoints and logs

    def restore(self, resume: bool) -> _Progress:
        """The latest checkpoint (with ``--resume``) or a fresh start, as a :class:`_Progress`."""
        rank = self.hvd.rank()
        if resume and self.manager.latest_checkpoint:
            # every variable that exists must come back (model, optimizer slots, step, epoch, averages)
            self.manager.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            epoch = int(self.epoch_var.numpy())
            history_path = self.model_dir / "history.json"
            history = json.loads(history_path.read_text())[:epoch] if history_path.is_file() else []
            if rank == 0:
                _log(f"resumed from {self.manager.latest_checkpoint} at epoch {epoch}")
            if not history:
                return _Progress(epoch)
            best_at = min(range(len(history)), key=lambda i: history[i]["valid_rmse"])
            return _Progress(epoch, 0, history, history[best_at]["valid_rmse"], len(history) - 1 - best_at)
        if resume and rank == 0:
            _log(f"--resume: no checkpoint in {self.model_dir / 'checkpoints'}, starting fresh")
        return _Progress()

    def close_epoch(self, progress, losses: list[float], seen: int, seconds: float, valid_ds) -> bool:
        """Average the epoch's metrics over ranks, validate, checkpoint and log on rank 0;
        returns the early-stopping decision (rank 0's, broadcast to all)."""
        import numpy as np
        import tensorflow as tf

        hvd, cfg = self.hvd, self.cfg
        rank, size = hvd.rank(), hvd.size()
        # Horovod: average the epoch's metrics over ranks before anyone reads them
        train_mse = float(hvd.allreduce(tf.constant(np.mean(losses) if losses else 0.0), op=hvd.Average))
        total_seen = int(hvd.allreduce(tf.constant(seen, tf.int64), op=hvd.Sum))
        with self.averaged_weights():
            valid_rmse = self.validate(valid_ds)
        epoch = progress.epoch + 1
        self.epoch_var.assign(epoch)
        record = {"epoch": epoch, "train_rmse": math.sqrt(train_mse), "valid_rmse": valid_rmse,
                  "examples_per_s": total_seen / seconds, "examples_per_s_per_rank": total_seen / seconds / size,
                  "seconds": seconds, "ranks": size}
        progress.history = progress.history + [record]
        improved = valid_rmse < progress.best - 1e-4
        if improved:
            progress.best, progress.bad_epochs = valid_rmse, 0
        else:
            progress.bad_epochs += 1
        progress.epoch, progress.examples_done = epoch, 0
        if rank == 0:  # Horovod: only rank 0 writes checkpoints and logs
            self.manager.save(checkpoint_number=epoch)
            if improved:
                with self.averaged_weights():
                    self.best_ckpt.write(str(self.model_dir / "best" / "weights"))
            _write_json(self.model_dir / "history.json", progress.history)
            if self.writer is None:
                self.writer = tf.summary.create_file_writer(str(self.model_dir / "logs"))
            with self.writer.as_default():
                for k in ("train_rmse", "valid_rmse", "examples_per_s"):
                    tf.summary.scalar(k, record[k], step=epoch)
            _log(f"epoch {epoch}/{cfg.train.epochs}: train RMSE {record['train_rmse']:.4f}, "
                 f"valid RMSE {valid_rmse:.4f}{' *' if improved else ''}, {record['examples_per_s']:,.0f} examples/s "
                 f"({record['examples_per_s_per_rank']:,.0f} per rank), {seconds:.1f}s")
        # Horovod: every rank takes rank 0's stopping decision
        stop = int(hvd.broadcast(tf.constant(int(progress.bad_epochs >= cfg.train.early_stopping_patience)), 0))
        if stop and rank == 0:
            _log(f"early stopping: no validation improvement for {progress.bad_epochs} epochs")
        return bool(stop)

    def banner(self, size: int) -> None:
        if self.hvd.rank() == 0:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            _log(f"{size} rank(s), {self.threads} threads each; {self.total:,} training examples, "
                 f"{self.steps_per_epoch(size)} steps/epoch of {self.batch_examples} examples per rank; "
                 f"lr {self.cfg.train.learning_rate * size:g} after {self.warmup_steps} warm-up steps")

    def finish(self, progress) -> dict | None:
        """Rank 0: reload the best weights and write ``model.json``; returns the summary."""
        if self.hvd.rank() != 0:
            return None
        self.best_ckpt.read(str(self.model_dir / "best" / "weights")).expect_partial()
        history = progress.history
        summary = {
            "config": self.cfg.to_dict(), "prepared": str(self.prepared),
            "manifest_sha256": manifest_checksum(self.prepared), "ranks": self.hvd.size(),
            "best_valid_rmse": progress.best, "epochs_run": len(history), "history": history,
            "train_seconds": time.time() - self.started, "mu": self.model.mu,
            "weights": "best/weights", "feature_spec": self.manifest["features"],
        }
        _write_json(self.model_dir / "model.json", summary)
        _log(f"saved {self.model_dir} (best valid RMSE {progress.best:.4f})")
        return summary

    # ------------------------------------------------------------------ loops

    def fit(self, resume: bool = False) -> dict | None:
        """The static loop: a fixed set of ranks; a lost rank stops the run with WorkerLostError."""
        import tensorflow as tf

        hvd = self.hvd
        progress = self.restore(resume)
        rank, size = hvd.rank(), hvd.size()
        self.banner(size)
        it, valid_ds = self.inputs(rank, size)
        steps = self.steps_per_epoch(size)
        first = True  # broadcast after the first step of every run, resumed ones included
        try:
            while progress.epoch < self.cfg.train.epochs:
                t0, losses, seen = time.time(), [], 0
                for _ in range(steps):
                    x, y = next(it)
                    mse, n = self.train_step(x, y, tf.constant(first))
                    first = False
                    self.step_var.assign_add(1)
                    losses.append(float(mse)); seen += int(n)
                if self.close_epoch(progress, losses, seen, time.time() - t0, valid_ds):
                    break
        except Exception as err:  # noqa: BLE001 - only a peer's failure is translated, the rest re-raised
            if not _is_peer_failure(err):
                raise
            from recsys.errors import WorkerLostError

            raise WorkerLostError(
                f"rank {rank} of {size}: another rank stopped during epoch {progress.epoch + 1} "
                f"(Horovod shut down: a worker died or lost its connection). The last checkpoint is "
                f"{self.manager.latest_checkpoint or 'none yet'}; re-run the same command with --resume to continue "
                "from it, or run elastic (docs/reliability.md) to survive a lost worker") from None
        return self.finish(progress)

    def fit_elastic(self, resume: bool = False) -> dict | None:
        """The elastic loop (``horovodrun --min-np ... --max-np ... --host-discovery-script ...``).

        Variables, optimizer slots and progress are committed in memory every
        ``train.elastic_commit_steps`` steps and at each epoch's end. When a rank is lost the
        survivors roll back to the last commit, Horovod re-forms the ring, and the epoch goes on
        with the data re-sharded over the new ranks and the learning rate rescaled.
        """
        import horovod.tensorflow as hvd

        start = self.restore(resume)
        variables = list(self.model.variables) + list(self.optimizer.variables()) + self.averages + [
            self.step_var, self.epoch_var]
        state = hvd.elastic.TensorFlowState(variables, **start.fields())
        # Horovod: rescale the learning rate to the new number of ranks after a reset
        state.register_reset_callbacks([lambda: self.ranks_var.assign(float(hvd.size()))])
        commit_every = self.cfg.train.elastic_commit_steps

        @hvd.elastic.run
        def loop(state):
            rank, size = hvd.rank(), hvd.size()
            self.banner(size)
            it, valid_ds = self.inputs(rank, size)
            global_batch = self.batch_examples * size
            while state.epoch < self.cfg.train.epochs:
                t0, losses, seen = time.time(), [], 0
                # the rest of the epoch at the current size (all of it unless resumed mid-epoch)
                steps = max(0, (self.total - state.examples_done) // global_batch)
                steps = min(steps, self.steps_per_epoch(size))
                for i in range(steps):
                    x, y = next(it)
                    mse, n = self.train_step(x, y, False)  # state.sync() already broadcast rank 0's variables
                    self.step_var.assign_add(1)
                    state.examples_done += global_batch
                    losses.append(float(mse)); seen += int(n)
                    if (i + 1) % commit_every == 0:
                        state.commit()
                stop = self.close_epoch(state, losses, seen, time.time() - t0, valid_ds)
                state.commit()
                if stop:
                    break

        loop(state)
        return self.finish(state)


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename): a killed writer never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def is_elastic() -> bool:
    """True under ``horovodrun --min-np/--max-np/--host-discovery-script`` (Horovod sets HOROVOD_ELASTIC)."""
    return os.environ.get("HOROVOD_ELASTIC", "0") == "1"


def train(cfg: Config, resume: bool = False, max_steps: int | None = None) -> dict | None:
    """Train on ``cfg.paths.prepared`` into ``cfg.paths.model``; returns rank 0's summary."""
    import tensorflow as tf

    import horovod.tensorflow as hvd

    hvd.init()  # Horovod: start (a size-1 world without horovodrun)
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
    # seeds TF, NumPy and Python's random (Keras draws unseeded initializer and dropout seeds from it)
    import tf_keras

    tf_keras.utils.set_random_seed(cfg.train.seed + hvd.rank())
    if cfg.train.deterministic:  # same seed, same ranks -> the same weights (bench/bench_quality.py checks it)
        tf.config.experimental.enable_op_determinism()

    trainer = Trainer(cfg, threads, max_steps)
    return trainer.fit_elastic(resume) if is_elastic() else trainer.fit(resume)
