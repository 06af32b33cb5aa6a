"""Model-agnostic Horovod data-parallel training (custom loop, wrapped tape).

:func:`train` is the one main flow, in the order of Horovod's TF2 examples, each Horovod
line marked: init -> pin device -> shard data -> scale learning rate -> wrap the tape ->
broadcast rank 0's variables (rank 0 also decides the resume point) -> average metrics ->
checkpoint/log on rank 0. The model comes from the registry (``model.kind``) and brings
its own named losses and its validation metric (recsys/models/contract.py); nothing here
knows a formula.

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
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from recsys.config import Config  # noqa: E402
from recsys.errors import ArtifactError, RecsysError  # noqa: E402


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
    """Where training stands: the epoch to run next, global examples done in it, history, and early
    stopping (``best``: the lowest selection value so far, see contract.selection_value).

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



LAST_RUN = None  # the latest Run of this process, for inspection after train() returns (tests)


class TrainingDivergedError(RecsysError):
    """A loss became NaN or infinite."""


@dataclass
class Run:
    """What one training run holds: data spec, model, optimizer, checkpoint manager, compiled steps."""

    cfg: Config
    hvd: object
    prepared: Path
    manifest: dict
    model: object
    optimizer: object
    ranks_var: object
    step_var: object
    epoch_var: object
    averages: list
    manager: object
    metric: str
    threads: int
    batch_records: int
    batch_examples: int
    total: int
    warmup_steps: int
    max_steps: int | None
    started: float = field(default_factory=time.time)
    loss_scale: object = None  # precision: recsys.precision.LossScale (dynamic under float16)
    train_step: object = None
    writer: object = None
    catalog: object = None
    committing: bool = False  # rank 0 is writing an epoch's checkpoint, best weights and history
    pending_stop: Exception | None = None  # a SIGTERM stop held back until that write ends

    @property
    def model_dir(self) -> Path:
        return Path(self.cfg.paths.model)

    @property
    def features(self) -> list[dict]:
        return self.manifest["features"]["features"]

    def steps_per_epoch(self, size: int) -> int:
        """Steps each rank runs per epoch: the same on every rank, from the global example count."""
        steps = max(1, self.total // (self.batch_examples * size))
        return min(steps, self.max_steps) if self.max_steps else steps

    def state_variables(self) -> list:
        """Every variable a checkpoint, a broadcast or an elastic commit must carry."""
        return (list(self.model.variables) + list(self.optimizer.variables()) + self.averages
                + [self.step_var, self.epoch_var] + self.loss_scale.variables)  # precision: one loss scale


def pin_device(cfg: Config, hvd) -> int:
    """Pin one GPU per local rank (none on CPU) and size TF's thread pools; returns threads per rank."""
    import tensorflow as tf

    gpus = tf.config.experimental.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:  # Horovod: pin one GPU per local rank
        tf.config.experimental.set_visible_devices(gpus[hvd.local_rank()], "GPU")
    threads = cfg.train.threads_per_rank or max(1, (os.cpu_count() or 2) // hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
    # seeds TF, NumPy and Python's random (Keras draws unseeded initializer and dropout seeds from it)
    import tf_keras

    tf_keras.utils.set_random_seed(cfg.train.seed + hvd.rank())
    if cfg.train.deterministic:  # same seed, same ranks -> the same weights (bench/bench_quality.py checks it)
        tf.config.experimental.enable_op_determinism()
    return threads


def build_run(cfg: Config, hvd, threads: int, max_steps: int | None) -> Run:
    """Manifest, model (from the registry), learning rate scaled by the number of ranks, optimizer,
    averages and checkpoint manager; every variable built so checkpoints and broadcasts see it."""
    import tensorflow as tf
    import tf_keras as keras

    from recsys.models import build_model
    from recsys.models.contract import validation_metric
    from recsys.precision import LossScale
    from recsys.prepare.job import load_manifest

    prepared = Path(cfg.paths.prepared)
    manifest = load_manifest(prepared)
    if hvd.rank() == 0:
        verify_shards(prepared, manifest["splits"], ("train", "valid"))
    if "valid" not in manifest["splits"]:
        raise ArtifactError(f"{prepared}/manifest.json has no validation split: model selection would use the "
                            "test split; prepare with prepare.split.validation_fraction > 0")
    model = build_model(manifest["features"], manifest["stats"], cfg.model)
    model.prepare(prepared)
    metric = validation_metric(cfg.model, model)
    epr = manifest["examples_per_record"]
    batch_records = max(1, cfg.train.batch_size // epr)
    total = manifest["splits"]["train"]["examples"]
    spe = max(1, total // (batch_records * epr * hvd.size()))
    spe = min(spe, max_steps) if max_steps else spe
    warmup_steps = max(1, int(cfg.train.warmup_epochs * spe))
    # Horovod: the learning rate is scaled by the number of ranks (a variable: elastic runs change it),
    # reached by linear warm-up over the first epoch(s)
    ranks_var = tf.Variable(float(hvd.size()), trainable=False, name="ranks")
    optimizer = keras.optimizers.Adam(learning_rate=_warmup_class()(
        cfg.train.learning_rate, warmup_steps, spe, cfg.train.lr_decay_per_epoch, ranks_var))
    optimizer.build(model.trainable_variables)
    decay = cfg.train.weight_average_decay
    # Polyak averaging: an exponential moving average of the weights, validated and kept as the model
    averages = [tf.Variable(v, trainable=False, name=f"average_{i}")
                for i, v in enumerate(model.trainable_variables)] if decay > 0 else []
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var, epoch=epoch_var, averages=averages)
    manager = tf.train.CheckpointManager(ckpt, str(Path(cfg.paths.model) / "checkpoints"), max_to_keep=3)
    return Run(cfg, hvd, prepared, manifest, model, optimizer, ranks_var, step_var, epoch_var, averages, manager,
               metric, threads, batch_records, batch_records * epr, total, warmup_steps, max_steps,
               loss_scale=LossScale.for_setting(cfg.train.mixed_precision))  # precision: a plain step unless float16


def make_train_step(run: Run):
    """The compiled step: the model's named losses, the Horovod-wrapped tape, the optimizer step
    (loss-scaled under float16), the weight averages, the global step. Returns the named loss
    tensors (read by :class:`EpochLosses`, not per step)."""
    import tensorflow as tf

    from recsys.precision import compile_forward

    hvd, model, optimizer, loss_scale = run.hvd, run.model, run.optimizer, run.loss_scale
    decay = run.cfg.train.weight_average_decay

    def forward(x, y):
        """(named float32 losses, their sum); XLA-compiled with its gradient when train.xla is on."""
        losses = model.named_losses(x, y)
        return losses, tf.add_n(list(losses.values()))

    if run.cfg.train.xla and model.xla_unsupported:
        from recsys.errors import ConfigError

        raise ConfigError(f"train.xla: model.kind={model.kind} cannot be XLA-compiled ({model.xla_unsupported}); "
                          f"set train.xla=false")
    model.static_shapes = bool(run.cfg.train.xla)  # XLA: no data-dependent shapes inside the forward pass
    forward = compile_forward(forward, run.cfg.train.xla)  # precision: XLA outside Horovod's ops

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            losses, total = forward(x, y)
        tape = hvd.DistributedGradientTape(tape)  # Horovod: average gradients across ranks
        # precision: gradients of the (scaled) loss through the tape, unscaled, applied when finite
        loss_scale.minimize(tape, total, model.trainable_variables, optimizer)
        for average, var in zip(run.averages, model.trainable_variables):
            average.assign(decay * average + (1.0 - decay) * var)
        run.step_var.assign_add(1)
        return losses

    return train_step


def inputs(run: Run, rank: int, size: int):
    """(endless training iterator over this rank's disjoint share, this rank's validation dataset)."""
    from recsys.precision import prefetch_to_device, static_batches

    cfg, epr = run.cfg, run.manifest["examples_per_record"]
    # Horovod: each rank reads its own disjoint part of the training shards
    files, by_record = shard_files_for_rank(run.manifest["splits"]["train"]["shards"], run.prepared, rank, size)
    train_ds = make_dataset(files, run.features, run.batch_records, shuffle_buffer=cfg.train.shuffle_buffer_records,
                            seed=cfg.train.seed + rank, record_shard=(rank, size) if by_record else None,
                            repeat=True, threads=run.threads, deterministic=cfg.train.deterministic)
    # precision: one batch shape (a shard's last block is short), so the step is traced and XLA-compiled once
    train_ds = static_batches(train_ds, run.batch_examples)
    train_ds = prefetch_to_device(train_ds)  # precision: batches copied to this rank's GPU ahead (none on CPU)
    return iter(train_ds), validation_dataset(run, rank, size)


def validation_dataset(run: Run, rank: int, size: int):
    """This rank's share of the validation split (every record when ``size`` is 1), batches of 8,192."""
    valid_files = [str(run.prepared / s["path"]) for s in run.manifest["splits"]["valid"]["shards"]]
    return make_dataset(valid_files, run.features, max(1, 8192 // run.manifest["examples_per_record"]),
                        record_shard=(rank, size), threads=run.threads)


@contextlib.contextmanager
def averaged_weights(run: Run):
    """Inside: the model holds the averaged weights (when averaging is on); after: the live ones."""
    if not run.averages:
        yield
        return
    live = [v.numpy() for v in run.model.trainable_variables]
    for var, average in zip(run.model.trainable_variables, run.averages):
        var.assign(average)
    try:
        yield
    finally:
        for var, value in zip(run.model.trainable_variables, live):
            var.assign(value)


def validate(run: Run, valid_ds) -> dict[str, float]:
    """The validation metrics the model's selection metric needs, over all ranks' shares."""
    import tensorflow as tf

    from recsys.models.contract import NDCG, RMSE, metrics_needed

    hvd, model, out = run.hvd, run.model, {}
    needed = metrics_needed(run.metric)
    if RMSE in needed:
        lo, hi = run.manifest["stats"]["rating_min"], run.manifest["stats"]["rating_max"]
        sse, n = 0.0, 0.0
        for x, y in valid_ds:
            pred = tf.clip_by_value(model.score(x, training=False), lo, hi)
            sse += float(tf.reduce_sum(tf.square(pred - y))); n += int(tf.shape(y)[0])
        # Horovod: sum over ranks, so the RMSE covers the whole validation set
        sse = float(hvd.allreduce(tf.constant(sse, tf.float64), op=hvd.Sum))
        n = float(hvd.allreduce(tf.constant(n, tf.float64), op=hvd.Sum))
        out[RMSE] = math.sqrt(sse / max(n, 1.0))
    if NDCG in needed:
        if run.catalog is None:
            run.catalog = ValidationCatalog(run.prepared, run.cfg.train.validation_users, run.cfg.train.seed,
                                            index_cfg=run.cfg.index)
        total, n = run.catalog.ndcg_sum(model, hvd.rank(), hvd.size())
        total = float(hvd.allreduce(tf.constant(total, tf.float64), op=hvd.Sum))
        n = float(hvd.allreduce(tf.constant(n, tf.float64), op=hvd.Sum))
        out[NDCG] = total / max(n, 1.0)
    return out


def _rank_vectors(fn, frame, names: list[str]):
    """[len(frame), R] float32 rank vectors of ``fn`` (a model's user_vectors or movie_vectors) for
    the rows of ``frame``, 8,192 at a time."""
    import numpy as np
    import tensorflow as tf

    from recsys.features import encoded_columns

    enc = encoded_columns(frame, names)
    return np.concatenate([fn({n: tf.constant(v[s:s + 8192]) for n, v in enc.items()})["rank"].numpy()
                           for s in range(0, len(frame), 8192)]).astype(np.float32)


class ValidationCatalog:
    """Ranking validation (NDCG@10): a fixed seeded sample of the users with validation ratings,
    every catalog movie scored through the model's rank vectors, training movies excluded;
    relevant: the user's validation movies (binary gains, as recsys evaluate). A model scored by
    pairs (not factorised) is ranked as it is served: by its pair score over the whole catalog, or
    over the exact top ``index.rerank_candidates`` of its rank vectors above
    ``index.rerank_full_scan_max`` movies (recsys/reranking.py; ``index_cfg``: the config's
    ``index`` section). Each rank scores every ``size``-th sampled user; memory: one block of
    users x the catalog."""

    def __init__(self, prepared: Path, max_users: int, seed: int, block: int = 256, index_cfg=None):
        import numpy as np
        import pandas as pd

        self.users = pd.read_parquet(prepared / "users.parquet")
        self.movies = pd.read_parquet(prepared / "movies.parquet")
        movie_row = pd.Series(np.arange(len(self.movies)), index=self.movies.movie_id)
        valid = pd.read_parquet(prepared / "ratings_valid", columns=["user_id", "movie_id"])
        train = pd.read_parquet(prepared / "ratings_train", columns=["user_id", "movie_id"])
        ids = np.sort(valid.user_id.unique())
        if len(ids) > max_users:
            ids = np.sort(np.random.default_rng(seed).choice(ids, max_users, replace=False))
        self.user_ids = ids
        self.user_row = pd.Series(np.arange(len(self.users)), index=self.users.user_id)
        self.relevant = {u: set(movie_row.loc[g].to_numpy()) for u, g in valid.groupby("user_id").movie_id}
        train = train[train.user_id.isin(ids)]
        self.seen = {u: movie_row.loc[g].to_numpy() for u, g in train.groupby("user_id").movie_id}
        self.block = block
        from recsys.config import IndexConfig
        from recsys.reranking import RerankPlan

        self.plan = RerankPlan.choose(len(self.movies), index_cfg or IndexConfig(), "movies")

    def ndcg_sum(self, model, rank: int, size: int, k: int = 10) -> tuple[float, int]:
        """(sum of NDCG@k, users) over this rank's share of the sampled users."""
        import numpy as np
        import tensorflow as tf

        from recsys.evaluation import ndcg_at_k
        from recsys.features import encoded_columns
        from recsys.reranking import top_k_by_pairs

        def exact_top(scores, n):  # [U, M] -> [U, n] rows by score, best first
            top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
            return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)

        items = _rank_vectors(model.movie_vectors, self.movies, model.movie_features)  # [M, R]
        movie_enc = None if model.factorised else encoded_columns(self.movies, model.movie_features)
        mine = self.user_ids[rank::size]
        total = 0.0
        for s in range(0, len(mine), self.block):
            ids = mine[s:s + self.block]
            frame = self.users.iloc[self.user_row.loc[ids].to_numpy()]
            exclude = [self.seen.get(u, np.empty(0, np.int64)) for u in ids]
            scores = _rank_vectors(model.user_vectors, frame, model.user_features) @ items.T
            for i, row in enumerate(exclude):
                scores[i, row] = -np.inf
            if model.factorised:
                top = exact_top(scores, k)
            else:  # re-ranked by the pair score, as served (the retriever here: exact search)
                user_enc = encoded_columns(frame, model.user_features)

                def pair_scores(q, rows):
                    x = {n: tf.constant(v[q]) for n, v in user_enc.items()}
                    x.update({n: tf.constant(v[rows]) for n, v in movie_enc.items()})
                    return model.pair_scores(x).numpy()

                def retrieve(n):  # the exact top n by rank vectors, seen movies (-inf) skipped
                    return [r[np.isfinite(scores[i, r])] for i, r in enumerate(exact_top(scores, n))]

                candidates = self.plan.candidate_rows(exclude, k, retrieve)
                top = top_k_by_pairs(pair_scores, candidates, k, self.plan.block_pairs)[0]
            total += sum(ndcg_at_k(top[i], self.relevant[u], k) for i, u in enumerate(ids))
        return total, len(mine)

    def rank_spread(self, model) -> float:
        """The standard deviation of each sampled user's rank scores over the catalog, centred per
        user (a factorised model's rank vectors; 0 when there are no users)."""
        import numpy as np

        items = _rank_vectors(model.movie_vectors, self.movies, model.movie_features).astype(np.float64)  # [M, R]
        squares, count = 0.0, 0
        for s in range(0, len(self.user_ids), self.block):
            frame = self.users.iloc[self.user_row.loc[self.user_ids[s:s + self.block]].to_numpy()]
            scores = _rank_vectors(model.user_vectors, frame, model.user_features) @ items.T
            squares += float(np.square(scores - scores.mean(axis=1, keepdims=True)).sum())
            count += scores.size
        return float(np.sqrt(squares / max(count, 1)))


def restore(run: Run, resume: bool) -> _Progress:
    """The latest checkpoint (with ``--resume``) or a fresh start.

    Rank 0 alone decides: it reads its checkpoint and history, and broadcasts the progress;
    the variables follow in :func:`broadcast_start`. Ranks never disagree on the resume point
    even when only rank 0's model directory holds the checkpoints (node-local directories).
    A resume rank 0 refuses (a changed model, no readable checkpoint) is broadcast too, so every
    rank stops with the same message instead of waiting for rank 0.
    """
    hvd, progress, refused = run.hvd, _Progress(), None
    if hvd.rank() == 0:
        try:
            if resume:
                progress = _resume_point(run)
            run.model_dir.mkdir(parents=True, exist_ok=True)
            _write_json(run.model_dir / RUN_CONFIG, run.cfg.to_dict())
        except Exception as err:  # noqa: BLE001
            # any failure here (a refused resume, an unreadable history, a full disk) must reach the
            # other ranks, or they would wait for rank 0 for ever
            refused = err
    # Horovod: every rank takes rank 0's resume point, or its refusal
    reason = None if refused is None else (str(refused) if isinstance(refused, RecsysError)
                                           else f"{type(refused).__name__}: {refused}")
    decision = hvd.broadcast_object({"refused": reason, "progress": progress.fields()}, root_rank=0)
    if refused is not None:
        raise refused
    if decision["refused"]:
        raise ArtifactError(f"rank {hvd.rank()}: rank 0 refused the resume: {decision['refused']}")
    return _Progress(**decision["progress"])


def _resume_point(run: Run) -> _Progress:
    """Rank 0: restore the latest readable checkpoint (its config checked) and the history up to it."""
    progress = _Progress()
    latest = _restore_latest_readable(run)
    if latest:
        epoch = int(run.epoch_var.numpy())
        history_path = run.model_dir / "history.json"
        history = json.loads(history_path.read_text())[:epoch] if history_path.is_file() else []
        _log(f"resumed from {latest} at epoch {epoch}")
        if latest != run.manager.latest_checkpoint:
            # the best weights on disk may come from an epoch after the one restored, which the
            # history (cut at the restored epoch) no longer shows: a new best replaces them
            _log(f"--resume: fell back past {run.manager.latest_checkpoint}; the saved best weights may be "
                 "from a later epoch than the history shows until a resumed epoch improves on them")
        progress = _Progress(epoch, 0, history)
        if history:
            best_at = min(range(len(history)), key=lambda i: history[i]["valid_selection"])
            progress.best, progress.bad_epochs = history[best_at]["valid_selection"], len(history) - 1 - best_at
    else:
        _log(f"--resume: no checkpoint in {run.model_dir / 'checkpoints'}, starting fresh")
    if _finished(run, progress):
        _log(f"--resume: the checkpointed run had finished (epoch {progress.epoch} of train.epochs "
             f"{run.cfg.train.epochs}, {progress.bad_epochs} epochs without improvement, patience "
             f"{run.cfg.train.early_stopping_patience}): nothing left to train, the model in {run.model_dir} "
             "is kept. Raise train.epochs or train.early_stopping_patience to train further, or run without "
             "--resume to start over")
    return progress


RUN_CONFIG = "run_config.json"  # the config of the run that wrote the checkpoints


def _finished(run: Run, progress) -> bool:
    """True when the run has nothing left to train: every epoch done, or early stopping reached
    (a resumed run that stopped early does not train one more epoch just to stop again)."""
    cfg = run.cfg.train
    return progress.epoch >= cfg.epochs or (bool(progress.history) and progress.bad_epochs >= cfg.early_stopping_patience)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_resumed_config(run: Run) -> None:
    """Compare the checkpointed run's config with this one: a changed model stops with one line naming
    the keys; changed training settings go on and are logged."""
    from recsys.errors import ConfigError

    path = run.model_dir / RUN_CONFIG
    if not path.is_file():
        return
    saved, new = _flat(json.loads(path.read_text())), _flat(run.cfg.to_dict())
    # only the keys that decide the model's variables stop a resume; other model keys are logged below
    shape = {f"model.{k}" for k in type(run.model).shape_keys}
    # a key the saved config lacks was added to recsys after that run: its value here is logged; for a
    # key that shapes the model, that run had the key's default, which is what it is compared with
    defaults = _flat(type(run.cfg)().to_dict())
    for k in sorted(set(new) - set(saved)):
        _log(f"--resume: {k} is not in the checkpointed run's config (a newer setting); using {new[k]!r}")
        if k in shape and k in defaults:
            saved[k] = defaults[k]
    differ = sorted(k for k in set(saved) & set(new) if saved.get(k) != new.get(k))
    model_keys = [k for k in differ if k in shape]
    if model_keys:
        raise ConfigError("--resume: the model differs from the checkpointed run's ("
                          + ", ".join(f"{k} {saved.get(k)!r} -> {new.get(k)!r}" for k in model_keys)
                          + f"); train into another paths.model, or run without --resume to start over")
    for k in (k for k in differ if k.startswith(("train.", "model.")) and k not in shape):
        _log(f"--resume: {k} changed {saved.get(k)!r} -> {new.get(k)!r}; going on with the new value")


def _restore_latest_readable(run: Run) -> str | None:
    """Restore the newest checkpoint that reads completely; a damaged one falls back to the previous."""
    import tensorflow as tf

    if run.manager.latest_checkpoint:
        _check_resumed_config(run)
    for path in reversed(run.manager.checkpoints):
        try:
            # every variable that exists must come back (model, optimizer slots, step, epoch, averages)
            run.manager.checkpoint.restore(path).assert_existing_objects_matched()
            return path
        except (tf.errors.OpError, ValueError, AssertionError, IndexError) as err:  # IndexError: a truncated file
            _log(f"checkpoint {path} cannot be read ({str(err).splitlines()[0][:200]}); trying the previous one")
    if run.manager.checkpoints:
        raise ArtifactError(f"no checkpoint in {run.model_dir / 'checkpoints'} can be read (damaged, or written by "
                            f"another version of this model); run without --resume")
    return None


def broadcast_start(run: Run) -> None:
    """Horovod: start every rank from rank 0's variables (model, optimizer slots, averages, step, epoch)."""
    run.hvd.broadcast_variables(run.state_variables(), root_rank=0)


def check_finite(run: Run, losses: dict, epoch: int, step: int) -> None:
    """Stop at the first non-finite loss with one line naming where and the likely knobs."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        t = run.cfg.train
        raise TrainingDivergedError(
            f"training diverged: non-finite loss {', '.join(f'{k}={v}' for k, v in bad.items())} at epoch "
            f"{epoch}, step {step}; likely knobs: train.learning_rate ({t.learning_rate:g} per rank, x{run.hvd.size()} "
            f"ranks), train.warmup_epochs ({t.warmup_epochs:g}), train.batch_size ({t.batch_size})"
            + "".join(f", {hint}" for hint in run.model.divergence_knobs()))


class EpochLosses:
    """The epoch's named losses, kept on the device and read every ``train.finite_check_steps`` steps.

    Reading a loss (``float(tensor)``) waits for its step to finish, so a read per step would
    stall the host each step (and, on a GPU, keep it from queueing the next one). The step's
    loss tensors are held for a window of steps and summed on the device; one read per window
    checks them and adds the window to the epoch's sums (float64 on the host).
    """

    def __init__(self, run: Run, epoch: int, check_steps: int):
        self.run, self.epoch, self.check_steps = run, epoch, check_steps
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.window: list[dict] = []

    def add(self, named: dict) -> None:
        """One step's named loss tensors (not read until the window closes)."""
        self.window.append(named)
        if len(self.window) >= self.check_steps:
            self.flush()

    def flush(self) -> None:
        """Read the window's sums; stop at its first non-finite step (see :func:`check_finite`)."""
        import tensorflow as tf

        if not self.window:
            return
        window, first = self.window, self.steps + 1
        self.window = []
        sums = {k: float(tf.add_n([named[k] for named in window])) for k in window[0]}
        if not all(math.isfinite(v) for v in sums.values()):  # find the step: only on the way to an error
            for i, named in enumerate(window):
                check_finite(self.run, {k: float(v) for k, v in named.items()}, self.epoch, first + i)
            check_finite(self.run, sums, self.epoch, first + len(window) - 1)  # finite steps, overflowing sum
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += len(window)

    def means(self) -> dict[str, float]:
        """The epoch's mean of each named loss (after a final :meth:`flush`)."""
        self.flush()
        return {k: v / self.steps for k, v in self.sums.items()} if self.steps else {}


def close_epoch(run: Run, progress, losses: dict[str, float], seen: int, seconds: float, valid_ds) -> bool:
    """Average the epoch's mean losses (``EpochLosses.means``) over ranks, validate, checkpoint and
    log on rank 0; returns the early-stopping decision (rank 0's, broadcast to all)."""
    import tensorflow as tf

    from recsys.models.contract import selection_value

    hvd, cfg = run.hvd, run.cfg
    rank, size = hvd.rank(), hvd.size()
    names = sorted(losses)
    # Horovod: average the epoch's metrics over ranks before anyone reads them
    train = {name: float(hvd.allreduce(tf.constant(losses[name], tf.float64),
                                       op=hvd.Average, name=f"train_{name}")) for name in names}
    total_seen = int(hvd.allreduce(tf.constant(seen, tf.int64), op=hvd.Sum))
    with averaged_weights(run):
        run.model.derive_weights()  # the served tables follow the weights being validated (and written)
        valid = validate(run, valid_ds)
    value = selection_value(run.metric, valid, cfg.model.validation_ndcg_weight)
    valid.setdefault(run.metric, value)  # "mix": the combined figure is logged beside its parts
    epoch = progress.epoch + 1
    run.epoch_var.assign(epoch)
    record = {"epoch": epoch, "train_loss": sum(train.values()), **{f"train_{k}": v for k, v in train.items()},
              **{f"valid_{k}": v for k, v in valid.items()}, "valid_selection": value,
              "examples_per_s": total_seen / seconds, "examples_per_s_per_rank": total_seen / seconds / size,
              "seconds": seconds, "ranks": size}
    if run.loss_scale.dynamic:  # precision: float16 steps skipped for overflow so far, and the scale
        record.update(loss_scale=float(run.loss_scale.scale.numpy()), skipped_steps=int(run.loss_scale.skipped.numpy()))
    progress.history = progress.history + [record]
    improved = value < progress.best - 1e-4
    if improved:
        progress.best, progress.bad_epochs = value, 0
    else:
        progress.bad_epochs += 1
    progress.epoch, progress.examples_done = epoch, 0
    if rank == 0:  # Horovod: only rank 0 writes checkpoints and logs
        from recsys.models.contract import WEIGHTS, write_weights

        with epoch_commit(run):  # a SIGTERM waits: --resume needs checkpoint, best weights and history to agree
            run.manager.save(checkpoint_number=epoch)
            if improved:
                with averaged_weights(run):  # the derived tables are still those of these weights (validation's)
                    write_weights(run.model, run.model_dir / WEIGHTS)
            _write_json(run.model_dir / "history.json", progress.history)
        if run.writer is None:
            run.writer = tf.summary.create_file_writer(str(run.model_dir / "logs"))
        with run.writer.as_default():
            for k, v in record.items():
                if k.startswith(("train_", "valid_")) or k == "examples_per_s":
                    tf.summary.scalar(k, v, step=epoch)
        parts = ", ".join(f"{k} {v:.4f}" for k, v in train.items())
        checks = ", ".join(f"valid {k} {v:.4f}" for k, v in valid.items())
        _log(f"epoch {epoch}/{cfg.train.epochs}: train loss {record['train_loss']:.4f} ({parts}), "
             f"{checks}{' *' if improved else ''}, {record['examples_per_s']:,.0f} examples/s "
             f"({record['examples_per_s_per_rank']:,.0f} per rank), {seconds:.1f}s")
    # Horovod: every rank takes rank 0's stopping decision
    stop = int(hvd.broadcast(tf.constant(int(progress.bad_epochs >= cfg.train.early_stopping_patience)), 0))
    if stop and rank == 0:
        _log(f"early stopping: no validation improvement ({run.metric}) for {progress.bad_epochs} epochs")
    return bool(stop)


def banner(run: Run, size: int) -> None:
    if run.hvd.rank() == 0:
        run.model_dir.mkdir(parents=True, exist_ok=True)
        _log(f"model {run.model.kind} (selected on validation {run.metric}); {size} rank(s), {run.threads} threads "
             f"each; {run.total:,} training examples, {run.steps_per_epoch(size)} steps/epoch of "
             f"{run.batch_examples} examples per rank; lr {run.cfg.train.learning_rate * size:g} after "
             f"{run.warmup_steps} warm-up steps")


class ServedRanking:
    """The validation ranking of the run's model as served, for ``RecModel.finalize`` (rank 0):
    ``ndcg()`` is its NDCG@10 over the validation catalog's sampled users; ``spread()`` the
    standard deviation of each sampled user's centred rank scores over the catalog. The catalog
    is read on first use, so a model that never asks costs nothing."""

    def __init__(self, run: "Run"):
        self.run = run

    def ndcg(self) -> float:
        total, n = _catalog(self.run).ndcg_sum(self.run.model, 0, 1)
        return total / max(n, 1)

    def spread(self) -> float:
        return _catalog(self.run).rank_spread(self.run.model)


def finish(run: Run, progress) -> dict | None:
    """Rank 0: reload the best weights (strictly) and write the model artifact; returns model.json."""
    if run.hvd.rank() != 0:
        return None
    from recsys.models.contract import WEIGHTS, read_weights, write_artifact, write_weights

    if not Path(str(run.model_dir / WEIGHTS) + ".index").is_file():
        raise ArtifactError(f"no best weights in {run.model_dir / WEIGHTS}: no epoch finished with a finite "
                            "validation metric")
    read_weights(run.model, run.model_dir / WEIGHTS)
    tune_popularity(run)
    # parts a model fits apart from its network, after it (the rating network's autoencoders)
    finalized = run.model.finalize(validation_dataset(run, 0, 1), ServedRanking(run), run.cfg.train.seed, _log)
    if finalized is not None:
        with epoch_commit(run):  # a SIGTERM waits; the previous best weights stay whole until replaced
            best = run.model_dir / WEIGHTS
            written = write_weights(run.model, best.parent / f".finalized-{os.getpid()}")
            # the data shards first, the index last: the index names what a reader opens
            for path in sorted(Path(written).parent.glob(Path(written).name + ".*"), key=lambda p: p.suffix == ".index"):
                os.replace(path, str(best) + path.name[len(Path(written).name):])
    best = min(progress.history, key=lambda h: h["valid_selection"]) if progress.history else {}
    summary = {
        "kind": run.model.kind, "rates": run.model.rates, "model_config": run.cfg.to_dict()["model"],
        "config": run.cfg.to_dict(), "prepared": str(run.prepared),
        "manifest_sha256": manifest_checksum(run.prepared), "ranks": run.hvd.size(),
        "validation_metric": run.metric, "best_valid": {k[len("valid_"):]: v for k, v in best.items()
                                                        if k.startswith("valid_") and k != "valid_selection"},
        f"best_valid_{run.metric}": best.get(f"valid_{run.metric}"),
        "epochs_run": len(progress.history), "history": progress.history,
        "train_seconds": time.time() - run.started, **(finalized or {}),
    }
    info = write_artifact(run.model_dir, run.prepared, run.manifest, summary)
    _log(f"saved {run.model_dir} (best valid {run.metric} {summary[f'best_valid_{run.metric}']:.4f})")
    return info


def _catalog(run: Run) -> "ValidationCatalog":
    """The run's validation catalog, built on first use (rank 0 after training)."""
    if run.catalog is None:
        run.catalog = ValidationCatalog(run.prepared, run.cfg.train.validation_users, run.cfg.train.seed,
                                        index_cfg=run.cfg.index)
    return run.catalog


def tune_popularity(run: Run) -> None:
    """Rank 0, best weights loaded: set ``model.retrieval_popularity`` to the value of
    ``model.retrieval_popularity_grid`` with the highest validation NDCG@10 (the first on ties),
    each value logged. The prior enters no loss, so one trained model serves the whole grid."""
    grid = run.cfg.model.retrieval_popularity_grid
    if not grid:
        return
    _catalog(run)
    scores = []
    for g in grid:  # the model reads run.cfg.model itself (build_model keeps that object)
        run.cfg.model.retrieval_popularity = float(g)
        total, n = run.catalog.ndcg_sum(run.model, 0, 1)
        scores.append(total / max(n, 1))
        _log(f"popularity prior g={g:g}: validation ndcg@10 {scores[-1]:.4f} ({n:,} users)")
    best = grid[scores.index(max(scores))]
    run.cfg.model.retrieval_popularity = float(best)
    _log(f"popularity prior: model.retrieval_popularity={best:g} kept (best validation ndcg@10 of "
         f"model.retrieval_popularity_grid)")


def _peer_lost(run: Run, progress, err: Exception):
    from recsys.errors import WorkerLostError

    rank, size = run.hvd.rank(), run.hvd.size()
    return WorkerLostError(
        f"rank {rank} of {size}: another rank stopped during epoch {progress.epoch + 1} "
        f"(Horovod shut down: a worker died or lost its connection). The last checkpoint is "
        f"{run.manager.latest_checkpoint or 'none yet'}; re-run the same command with --resume to continue "
        "from it, or run elastic (docs/reliability.md) to survive a lost worker")


def _stopped_by_signal(run: Run, progress, signum: int, rank: int, size: int):
    from recsys.errors import WorkerLostError

    return WorkerLostError(
        f"rank {rank} of {size}: stopped by {signal.Signals(signum).name} after {progress.epoch} complete epoch(s) "
        "(sent by horovodrun to the remaining ranks when one rank fails, by Kubernetes to a deleted pod, or by a user "
        f"or scheduler). The last checkpoint is {run.manager.latest_checkpoint or 'none yet'}; re-run the same "
        "command with --resume to continue from it, or run elastic (docs/reliability.md) to survive a lost worker")


@contextlib.contextmanager
def epoch_commit(run: Run):
    """Rank 0's epoch write (checkpoint, best weights, history): a SIGTERM stop raised by
    ``resume_hint_on_sigterm`` meanwhile is held back and raised when the write is complete."""
    run.committing = True
    try:
        yield
    finally:
        run.committing = False
    if run.pending_stop is not None:
        stop, run.pending_stop = run.pending_stop, None
        raise stop


@contextlib.contextmanager
def resume_hint_on_sigterm(run: Run, progress):
    """While the static loop runs, SIGTERM ends this rank with the resume message instead of
    killing it silently: when a rank fails, horovodrun terminates the others, often before their
    allreduce has failed. Python runs the handler once the main thread is back from C++, which is
    also when a failed allreduce returns, so a rank stopped either way says how to resume. A rank
    blocked in C++ until horovodrun's SIGKILL (5 s later) still ends without it."""
    rank, size = run.hvd.rank(), run.hvd.size()  # read now: Horovod may be shut down when the signal comes

    def handler(signum, _frame):
        signal.signal(signum, signal.SIG_DFL)  # from here a second SIGTERM kills at once
        stop = _stopped_by_signal(run, progress, signum, rank, size)
        if run.committing:
            run.pending_stop = stop  # raised by epoch_commit once the epoch's files agree
            return
        raise stop

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: a handler installed outside Python, which cannot be put back; the default is the safe choice
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def fit_static(run: Run, progress) -> None:
    """The static loop: a fixed set of ranks; a lost rank stops the run with WorkerLostError."""
    hvd = run.hvd
    rank, size = hvd.rank(), hvd.size()
    banner(run, size)
    it, valid_ds = inputs(run, rank, size)
    steps = run.steps_per_epoch(size)
    with resume_hint_on_sigterm(run, progress):
        _fit_static_epochs(run, progress, it, valid_ds, steps)


def _fit_static_epochs(run: Run, progress, it, valid_ds, steps: int) -> None:
    try:
        while not _finished(run, progress):
            t0, losses = time.time(), EpochLosses(run, progress.epoch + 1, run.cfg.train.finite_check_steps)
            for _ in range(steps):
                x, y = next(it)
                named = run.train_step(x, y)
                losses.add(named)  # read every train.finite_check_steps steps, not per step
            means = losses.means()  # every step of a rank holds run.batch_examples (static batches)
            if close_epoch(run, progress, means, steps * run.batch_examples, time.time() - t0, valid_ds):
                break
    except Exception as err:  # noqa: BLE001 - only a peer's failure is translated, the rest re-raised
        if not _is_peer_failure(err):
            raise
        raise _peer_lost(run, progress, err) from None


def fit_elastic(run: Run, start) -> object:
    """The elastic loop (``horovodrun --min-np ... --max-np ... --host-discovery-script ...``).

    Variables, optimizer slots and progress are committed in memory every
    ``train.elastic_commit_steps`` steps and at each epoch's end. When a rank is lost the
    survivors roll back to the last commit, Horovod re-forms the ring, and the epoch goes on
    with the data re-sharded over the new ranks and the learning rate rescaled.
    """
    import horovod.tensorflow as hvd

    state = hvd.elastic.TensorFlowState(run.state_variables(), **start.fields())
    # Horovod: rescale the learning rate to the new number of ranks after a reset
    state.register_reset_callbacks([lambda: run.ranks_var.assign(float(hvd.size()))])
    commit_every = run.cfg.train.elastic_commit_steps

    @hvd.elastic.run  # Horovod: state.sync() broadcasts rank 0's variables and progress at every (re)start
    def loop(state):
        rank, size = hvd.rank(), hvd.size()
        banner(run, size)
        it, valid_ds = inputs(run, rank, size)
        global_batch = run.batch_examples * size
        while not _finished(run, state):
            t0, losses = time.time(), EpochLosses(run, state.epoch + 1, run.cfg.train.finite_check_steps)
            # the rest of the epoch at the current size (all of it unless resumed mid-epoch)
            steps = min(max(0, (run.total - state.examples_done) // global_batch), run.steps_per_epoch(size))
            for i in range(steps):
                x, y = next(it)
                losses.add(run.train_step(x, y))
                state.examples_done += global_batch
                if (i + 1) % commit_every == 0:
                    losses.flush()  # no commit of non-finite weights
                    state.commit()
            stop = close_epoch(run, state, losses.means(), steps * run.batch_examples, time.time() - t0, valid_ds)
            state.commit()
            if stop:
                break

    loop(state)
    return state


def train(cfg: Config, resume: bool = False, max_steps: int | None = None) -> dict | None:
    """Train ``cfg.model.kind`` on ``cfg.paths.prepared`` into ``cfg.paths.model``; returns rank 0's model.json."""
    import horovod.tensorflow as hvd

    global LAST_RUN
    hvd.init()                                       # Horovod 1: init (a size-1 world without horovodrun)
    threads = pin_device(cfg, hvd)                   # Horovod 2: pin one GPU per local rank
    from recsys.precision import policy

    with policy(cfg.train.mixed_precision):          # precision: the compute dtype (layers built inside keep it)
        run = build_run(cfg, hvd, threads, max_steps)  # Horovod 3+4: data spec (sharded in inputs()), lr x ranks
        run.train_step = make_train_step(run)        # Horovod 5: the wrapped tape
        LAST_RUN = run
        progress = restore(run, resume)              # rank 0 decides the resume point, broadcast
        if is_elastic():
            progress = fit_elastic(run, progress)    # Horovod 6: state.sync() broadcasts at every (re)start
        else:
            broadcast_start(run)                     # Horovod 6: everyone starts from rank 0's variables
            fit_static(run, progress)                # Horovod 7+8: metrics averaged, rank 0 checkpoints
        return finish(run, progress)


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename): a killed writer never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def is_elastic() -> bool:
    """True under ``horovodrun --min-np/--max-np/--host-discovery-script`` (Horovod sets HOROVOD_ELASTIC)."""
    return os.environ.get("HOROVOD_ELASTIC", "0") == "1"
