"""The model contract: what every model implements, and its one artifact directory.

A model (:class:`RecModel`) declares the features it reads, builds its layers from the
manifest's vocabulary sizes, computes its own named losses (the trainer only sums them,
averages gradients and steps), names its validation metric, and says how it scores, in one
of two forms (the class attribute ``factorised``):

**Factorised** (``factorised = True``: the rating network, BPR-MF):

* ``user_vectors(x)`` -> ``{"score": [B, S], "rank": [B, R]}`` and
  ``movie_vectors(x)`` -> ``{"score": [B, S], "rank": [B, R], "similarity": [B, E]}``;
* ``score(user, movie) = score_offset + <user score, movie score>`` exactly: the model's
  predicted rating for a rating model (``rates = True``), its preference score otherwise;
* top-k lists order movies by ``<user rank, movie rank>`` (often the score vectors
  themselves), so an inner-product index over the movies' rank vectors serves them exactly;
* movie-to-movie similarity is the cosine of the ``similarity`` vectors.

**Scored by pairs** (``factorised = False``: NeuMF):

* ``pair_scores(x)`` -> [B] float32: the score of each (user, movie) pair of a batch ``x``
  holding both the user and the movie features; ``score()`` is this pair score, and top-k
  lists order movies by it;
* ``user_vectors`` / ``movie_vectors`` still give factorised vectors of the same names, but
  ``<user rank, movie rank>`` is only a candidate retriever (``score`` equals ``rank`` for
  such a model: neither is its score), and ``similarity`` still gives movie-to-movie cosine;
* it is served and evaluated by re-ranking (recsys/reranking.py): the candidates are the
  whole catalog in blocks when it has at most ``index.rerank_full_scan_max`` movies, else the
  retriever index's top ``index.rerank_candidates``; the list is ordered by the pair score,
  which is the score returned with it.

Nothing outside ``recsys/models/`` knows a formula: export writes these vectors, the index
holds them, serving and evaluation rank through the index (and, for a model scored by
pairs, through ``pair_scores``), branching only on ``factorised``. The one step after the
model, off by default, is the export's implicit-ALS fold-in (``export.foldin_weight``,
recsys/foldin.py): for a factorised model it replaces each user's rank vector with one refined
from the movies' rank vectors and the user's own movies, any model alike (``<user rank, movie
rank>`` stays the top-k order, and a model whose rank equals its score no longer has them equal).

The artifact (:class:`ModelArtifact`) is one directory: ``model.json`` (kind, model config,
feature spec and settings, training statistics, validation metric, sha256 of every file),
``vocabularies.json`` and the best weights (``best/weights.*``). It alone serves a new user
or a new movie. Loading checks every checksum and fails naming any missing or unexpected
variable: there is no partial load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.checksums import sha256_file  # noqa: E402
from recsys.errors import ArtifactError  # noqa: E402

MODEL_JSON = "model.json"
WEIGHTS = "best/weights"  # checkpoint prefix inside the artifact directory
VOCABULARIES = "vocabularies.json"

RMSE, NDCG = "rmse", "ndcg@10"


class RecModel(keras.Model):
    """Base class of every model (tf-keras, so Horovod's tape wrapper sees its variables).

    Args:
        spec: the manifest's ``features`` block (names, shapes, vocab sizes, towers).
        stats: the manifest's ``stats`` block (training-split statistics, rating scale).
        cfg: the config's ``model`` section (the model's own knobs live in it or its sub-block).
    """

    kind = "?"  # the registry name (model.kind)
    label = "?"  # the name reports use
    rates = False  # True: score() is a predicted rating (validation RMSE, rating metrics)
    # True: score = offset + <user score, movie score> (an inner-product index serves it exactly);
    # False: the model scores (user, movie) pairs (pair_scores) and is served by re-ranking candidates
    factorised = True
    default_validation_metric = NDCG
    # model config keys (relative to ``model.``) that decide the variables: --resume refuses a change
    # of one of them; any other model key (a loss weight, a throughput knob) goes on and is logged
    shape_keys: tuple[str, ...] = ("kind",)

    @classmethod
    def vector_widths(cls, cfg) -> dict[str, int]:
        """Width of each named vector the index holds (``score``, ``rank``, ``similarity``), from
        the ``model`` config section alone (no model built): config checks FAISS factories with it."""
        raise NotImplementedError
    # set by the trainer under train.xla: the forward pass is XLA-compiled, so a model must not give
    # its tensors data-dependent shapes there (e.g. one row per unique id of the batch)
    static_shapes = False
    # why the forward pass cannot be XLA-compiled ("" when it can): train.xla then stops with this reason
    xla_unsupported = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.factorised and cls.pair_scores is RecModel.pair_scores:
            raise TypeError(f"{cls.__name__} is not factorised (factorised = False) but does not implement pair_scores")

    def __init__(self, spec: dict, stats: dict, cfg):
        super().__init__(name=f"{self.kind}_model")
        self.spec, self.stats, self.cfg = spec, stats, cfg
        self.feature_defs = {f["name"]: f for f in spec["features"]}

    # ------------------------------------------------------------------ what a model declares

    @property
    def user_features(self) -> list[str]:
        """Names of the user features it reads (a subset of the manifest's user tower)."""
        raise NotImplementedError

    @property
    def movie_features(self) -> list[str]:
        raise NotImplementedError

    @property
    def score_offset(self) -> float:
        """The constant of ``score = offset + <user score, movie score>`` (mu for the rating network)."""
        return 0.0

    def prepare(self, prepared: Path) -> None:
        """Data-derived constants before training (e.g. a popularity table), on every rank; reads
        only the training split of the prepared directory."""

    def divergence_knobs(self) -> list[str]:
        """The model's own config keys (with values) worth checking when its loss diverges."""
        return []

    def derive_weights(self) -> None:
        """Recompute the non-trainable weights derived from the trainable ones that serving reads
        (LightGCN's propagated tables); the trainer calls it before every validation and before
        the best weights are written. Most models derive nothing."""

    def finalize(self, valid, ranking, seed: int, log) -> dict | None:
        """After training, on rank 0 with the best weights loaded: fit the parts the model trains
        apart from its network (the rating network's item and history autoencoders) and choose
        their settings on ``valid`` (the whole validation split, batches of (features, ratings))
        or by ``ranking`` (``ranking.ndcg()``: the validation NDCG@10 of the served rank vectors;
        ``ranking.spread()``: the standard deviation of each user's centred rank scores over the
        catalog); ``log`` takes progress lines. Returns what was chosen, for model.json, and the trainer writes the
        weights again; None (the default) when the model has no such part."""
        return None

    def named_losses(self, x: dict, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """The training losses of a batch (features ``x``, ratings ``y`` [B]), each a float32 scalar
        with its name; the trainer minimises their sum and logs each."""
        raise NotImplementedError

    def user_vectors(self, x: dict, training: bool = False) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def movie_vectors(self, x: dict, training: bool = False) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ derived, the same for every model

    def pair_scores(self, x: dict, training: bool = False) -> tf.Tensor:
        """[B] float32 score of each (user, movie) pair of a batch ``x`` holding the user and the movie
        features. A factorised model's is ``offset + <user score, movie score>``; a model that is not
        factorised overrides it with its own scorer."""
        su = self.user_vectors(x, training)["score"]
        sm = self.movie_vectors(x, training)["score"]
        return self.score_offset + tf.reduce_sum(su * sm, axis=-1)

    def score(self, x: dict, training: bool = False) -> tf.Tensor:
        """[B] score of each (user, movie) pair of the batch: the pair score (for a factorised model
        ``offset + <user score, movie score>``); the predicted rating of a rating model."""
        return self.pair_scores(x, training)

    def call(self, x, training=False):
        return self.score(x, training)

    def dummy_inputs(self) -> dict[str, tf.Tensor]:
        return {name: tf.zeros([1, *self.feature_defs[name]["shape"]], tf.int64)
                for name in self.user_features + self.movie_features}

    def build_variables(self) -> None:
        """Create every variable (one forward pass on padding), so checkpoints can be read."""
        x = self.dummy_inputs()
        self.user_vectors(x)
        self.movie_vectors(x)
        self.score(x)


class IdModel(RecModel):
    """A model of the user and movie ids alone (no attributes: BPR-MF, NeuMF). An id it never
    trained on (the vocabulary's padding or OOV row) gets zero vectors: cold start carries no signal."""

    @property
    def user_features(self) -> list[str]:
        return ["user_id"]

    @property
    def movie_features(self) -> list[str]:
        return ["movie_id"]

    @staticmethod
    def known(ids: tf.Tensor) -> tf.Tensor:
        """Float32 of ``ids``' shape: 1.0 for ids the model trained on, 0.0 for padding / OOV."""
        from recsys.features import FIRST_ID

        return tf.cast(ids >= FIRST_ID, tf.float32)


def biased_user_vectors(u: tf.Tensor) -> dict[str, tf.Tensor]:
    """score = rank = ``[u, 1]`` [B, F+1]: with :func:`biased_movie_vectors`, the inner product is
    ``<u, m> + b_m`` (BPR-MF, the sequential model)."""
    v = tf.concat([u, tf.ones_like(u[:, :1])], axis=-1)
    return {"score": v, "rank": v}


def biased_movie_vectors(m: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
    """score = rank = ``[m, b_m]`` [B, F+1] (``b`` [B]); similarity ``m``."""
    v = tf.concat([m, b[:, None]], axis=-1)
    return {"score": v, "rank": v, "similarity": m}


def f32(tensors):
    """Scores, logits and losses are computed in float32 whatever the compute policy (the towers may
    compute in float16 or bfloat16): every floating tensor of ``tensors`` cast to float32."""
    from recsys.precision import float32

    return float32(tensors)


def validation_metric(model_cfg, model: RecModel) -> str:
    """The metric model selection uses: the model's own for ``auto``, else the configured one."""
    name = model_cfg.validation_metric
    if name == "auto":
        return model.default_validation_metric
    if name in (RMSE, "mix") and not model.rates:
        raise ArtifactError(f"model.validation_metric={name} needs a rating model; model.kind="
                            f"{model.kind} does not predict ratings (use ndcg@10 or auto)")
    return name


def metrics_needed(metric: str) -> tuple[str, ...]:
    return {RMSE: (RMSE,), NDCG: (NDCG,), "mix": (RMSE, NDCG)}[metric]


def selection_value(metric: str, values: dict, ndcg_weight: float) -> float:
    """The number model selection minimises: rmse, -ndcg@10, or rmse - weight * ndcg@10."""
    if metric == RMSE:
        return values[RMSE]
    if metric == NDCG:
        return -values[NDCG]
    return values[RMSE] - ndcg_weight * values[NDCG]


# ---------------------------------------------------------------------------- strict weights


def _checkpoint_keys(path: str) -> set[str]:
    return {k for k, _ in tf.train.list_variables(path) if not k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def read_weights(model: RecModel, path: str | Path) -> None:
    """Read ``model``'s variables from checkpoint ``path``; every variable must match, both ways.

    Raises:
        ArtifactError: naming the variables missing from the checkpoint and the unexpected ones.
    """
    path = str(path)
    if not Path(path + ".index").is_file():
        raise ArtifactError(f"model weights {path}.index not found")
    try:
        tf.train.Checkpoint(model=model).read(path).assert_consumed()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError):
        with tempfile.TemporaryDirectory() as tmp:  # the keys this model would write, to name the difference
            expected = _checkpoint_keys(tf.train.Checkpoint(model=model).write(os.path.join(tmp, "w")))
        found = _checkpoint_keys(path)
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        shapes = dict(tf.train.list_variables(path))
        with tempfile.TemporaryDirectory() as tmp:
            mine = dict(tf.train.list_variables(tf.train.Checkpoint(model=model).write(os.path.join(tmp, "w"))))
        changed = sorted(f"{k} {shapes[k]} != {mine[k]}" for k in expected & found if shapes[k] != mine[k])
        raise ArtifactError(f"weights {path} do not match the {model.kind} model built from its config: "
                            f"missing {missing or 'none'}; unexpected {unexpected or 'none'}"
                            + (f"; other shapes {changed}" if changed else "")
                            + " (an artifact of another version of this model: retrain it)") from None


def write_weights(model: RecModel, path: str | Path) -> str:
    return tf.train.Checkpoint(model=model).write(str(path))


# ---------------------------------------------------------------------------- the artifact


def weights_version(model_dir: Path) -> str:
    """16 hex digits identifying the weights (sha256 over the weight files)."""
    digest = hashlib.sha256()
    weights = model_dir / WEIGHTS
    for path in sorted(weights.parent.glob(weights.name + "*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def artifact_files(model_dir: Path) -> list[str]:
    """The files of the artifact, relative to its directory (model.json aside)."""
    weights = model_dir / WEIGHTS
    return [VOCABULARIES] + sorted(str(p.relative_to(model_dir)) for p in weights.parent.glob(weights.name + "*"))


def write_artifact(model_dir: Path, prepared: Path, manifest: dict, summary: dict) -> dict:
    """Complete the artifact in ``model_dir`` (the best weights already written at ``WEIGHTS``):
    copy the vocabularies, record checksums and version, write ``model.json``; returns it."""
    shutil.copy(prepared / VOCABULARIES, model_dir / VOCABULARIES)
    info = dict(summary)
    info.update({
        "weights": WEIGHTS, "vocabularies": VOCABULARIES, "feature_spec": manifest["features"],
        "feature_settings": manifest["feature_settings"], "stats": manifest["stats"],
        "version": weights_version(model_dir),
        "files": {name: sha256_file(model_dir / name) for name in artifact_files(model_dir)},
    })
    tmp = model_dir / f".{MODEL_JSON}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, model_dir / MODEL_JSON)
    return info


def copy_artifact(model_dir: Path, dest: Path) -> None:
    """Copy the artifact's files (not checkpoints or logs) into ``dest``: a self-contained model."""
    for name in [MODEL_JSON] + artifact_files(model_dir):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_dir / name, dest / name)


class ModelArtifact:
    """A trained model loaded from its artifact directory, with numpy-facing encoders."""

    def __init__(self, directory: Path, info: dict, model: RecModel):
        self.dir, self.info, self.model = directory, info, model
        self.version = weights_version(directory)  # of the weights actually loaded
        self.spec = info["feature_spec"]

    @classmethod
    def load(cls, model_dir: str | Path, verify: bool = True) -> "ModelArtifact":
        from recsys.config import ModelConfig
        from recsys.config import _build as build_section
        from recsys.models import build_model

        d = Path(model_dir)
        info_path = d / MODEL_JSON
        if not info_path.is_file():
            raise ArtifactError(f"{info_path} not found: train a model first (python train.py --config ...)")
        try:
            info = json.loads(info_path.read_text())
        except ValueError as err:
            raise ArtifactError(f"{info_path}: not valid JSON ({err})") from None
        if "files" not in info or "kind" not in info:
            raise ArtifactError(f"{info_path} is not a model artifact of this version (no kind/files): retrain")
        if verify:
            for name, digest in info["files"].items():
                if not (d / name).is_file():
                    raise ArtifactError(f"{d / name} listed in {info_path} is missing")
                if sha256_file(d / name) != digest:
                    raise ArtifactError(f"{d / name} does not match its sha256 in {info_path}")
        cfg = build_section(ModelConfig, info["model_config"], "model", str(info_path))
        from recsys.precision import float32_policy

        with float32_policy():  # precision: served vectors are computed in float32 whatever the process's policy
            model = build_model(info["feature_spec"], info["stats"], cfg)
            read_weights(model, d / info["weights"])
        return cls(d, info, model)

    @property
    def kind(self) -> str:
        return self.model.kind

    def tower_names(self, tower: str) -> list[str]:
        return self.model.user_features if tower == "user" else self.model.movie_features

    def user_vectors(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float32 arrays ``score`` [N, S], ``rank`` [N, R] for encoded user features (arrays of N)."""
        x = {k: tf.constant(encoded[k], tf.int64) for k in self.model.user_features}
        return {k: v.numpy().astype(np.float32) for k, v in self.model.user_vectors(x).items()}

    def movie_vectors(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float32 arrays ``score`` [N, S], ``rank`` [N, R], ``similarity`` [N, E] for encoded movies."""
        x = {k: tf.constant(encoded[k], tf.int64) for k in self.model.movie_features}
        return {k: v.numpy().astype(np.float32) for k, v in self.model.movie_vectors(x).items()}

    def pair_scores(self, users: dict[str, np.ndarray], movies: dict[str, np.ndarray]) -> np.ndarray:
        """Float32 [N]: the model's score of each pair, from parallel encoded user and movie features
        (arrays of N rows each; the caller bounds N)."""
        x = {k: tf.constant(users[k], tf.int64) for k in self.model.user_features}
        x.update({k: tf.constant(movies[k], tf.int64) for k in self.model.movie_features})
        return self.model.pair_scores(x).numpy().astype(np.float32)

    def encoder(self):
        """The prepare-time feature encoder (vocabularies and settings travel in the artifact)."""
        from recsys.features import FeatureEncoder, Vocabularies

        return FeatureEncoder.from_settings(Vocabularies.load(self.dir / VOCABULARIES), self.info["feature_settings"])
