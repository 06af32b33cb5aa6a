"""Typed configuration objects loaded from YAML, with ``--set key=value`` overrides.

A config file may start with ``extends: default.yaml`` (a path relative to the file) to
inherit every value from another file; only the keys it names are changed. Every
section below maps one-to-one to a block in ``conf/default.yaml``, which documents each
knob. Unknown keys, wrong types and values outside the allowed set raise
:class:`~recsys.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsys.errors import ConfigError
from recsys.models import REGISTRY as MODEL_REGISTRY  # the registry alone: no model module is imported

# ---------------------------------------------------------------------------- sections


def _choices(*values: str) -> dict:
    return {"choices": values}


@dataclass
class PathsConfig:
    """Where each stage reads and writes; relative paths are taken from the working dir."""

    raw: str = "data/raw/ml-100k"
    prepared: str = "data/prepared/ml-100k"
    model: str = "runs/ml-100k/model"
    vectors: str = "runs/ml-100k/vectors"
    index: str = "runs/ml-100k/index"
    report: str = "runs/ml-100k/report"


@dataclass
class DataConfig:
    """What the raw data is: a dataset name (for ``recsys data fetch``) and its file format."""

    dataset: str = "ml-100k"
    format: str = field(default="auto", metadata=_choices("auto", "ml-100k", "ml-1m", "ml-latest", "recbole", "tables"))
    # Rating scale; ratings outside [rating_min, rating_max] are quarantined.
    rating_min: float = 1.0
    rating_max: float = 5.0
    # format "tables": which files and columns hold the ratings, users and movies
    tables: "TablesConfig" = field(default_factory=lambda: TablesConfig())


@dataclass
class TableFileConfig:
    """One input table of the ``tables`` format: a CSV, TSV or Parquet file with a header."""

    file: str = ""  # path, relative to paths.raw (or absolute); "" = no such table
    kind: str = field(default="auto", metadata=_choices("auto", "csv", "tsv", "parquet"))  # auto: by extension
    delimiter: str = ""  # field separator of a text table; "": "," for csv, tab for tsv
    ignore: list[str] = field(default_factory=list)  # header columns deliberately left unused


@dataclass
class RatingsTableConfig(TableFileConfig):
    """Column names of the ratings table (each must be in its header)."""

    user_id: str = "user_id"
    movie_id: str = "movie_id"
    rating: str = "rating"
    timestamp: str = "timestamp"  # "": no time column (every rating at time 0)
    # "epoch" (Unix seconds) or a strptime pattern such as "%Y/%m/%d %H:%M", read in `timezone`
    timestamp_format: str = "epoch"
    timezone: str = "UTC"  # IANA zone of date strings, e.g. Asia/Shanghai


@dataclass
class UsersTableConfig(TableFileConfig):
    """Column names of the optional users table; "" = the table has no such attribute."""

    user_id: str = "user_id"
    gender: str = ""  # category (any values, upper-cased)
    age: str = ""  # years (bucketed by prepare.features.age_buckets)
    occupation: str = ""  # category (a name or a code, lower-cased)
    zip: str = ""  # postal code (its prefix is the feature)


@dataclass
class MoviesTableConfig(TableFileConfig):
    """Column names of the optional movies table; "" = the table has no such attribute."""

    movie_id: str = "movie_id"
    title: str = ""
    genres: str = ""
    genre_separator: str = r"\|"  # a regular expression, e.g. "\\s+" for runs of spaces
    year: str = ""  # release year column; "": a trailing "(1995)" in the title, if any


@dataclass
class TablesConfig:
    """The ``tables`` format: ratings (required), users and movies (optional) with a column mapping."""

    ratings: RatingsTableConfig = field(default_factory=RatingsTableConfig)
    users: UsersTableConfig = field(default_factory=UsersTableConfig)
    movies: MoviesTableConfig = field(default_factory=MoviesTableConfig)


@dataclass
class TitleTokensConfig:
    """How titles become tokens, chosen per title by its script (recorded in the manifest)."""

    # letters: runs of Unicode letters/digits (any script written with spaces);
    # latin: runs of [0-9a-zà-ÿ] only
    words: str = field(default="letters", metadata=_choices("letters", "latin"))
    # runs of Chinese, Japanese or Korean characters: bigram (overlapping character pairs),
    # unigram (single characters) or none (a run is one word)
    cjk: str = field(default="bigram", metadata=_choices("bigram", "unigram", "none"))


@dataclass
class SplitConfig:
    """How ratings are split into train and test (and optional cold-start holdouts)."""

    strategy: str = field(default="random", metadata=_choices("random", "user_stratified", "temporal"))
    test_fraction: float = 0.2
    seed: int = 42
    # Share of the remaining training ratings set aside for validation (early stopping).
    validation_fraction: float = 0.05
    # Fractions of all users / movies whose ratings are held out of training entirely.
    cold_user_fraction: float = 0.0
    cold_movie_fraction: float = 0.0


@dataclass
class FeaturesConfig:
    """How raw attributes become model inputs; the resulting sizes go into the manifest."""

    title_length: int = 12  # title tokens per movie, padded or truncated
    title_min_count: int = 1  # words seen fewer times map to the out-of-vocabulary id
    max_genres: int = 6  # genre ids per movie, padded
    zip_prefix_length: int = 1  # leading characters of the zip code used as a feature
    # Lower bounds of the age buckets (ML-1M's own buckets); raw ages are bucketed with them.
    age_buckets: list[int] = field(default_factory=lambda: [1, 18, 25, 35, 45, 50, 56])
    year_bucket_width: int = 5  # release years are grouped into buckets this many years wide
    title_tokens: TitleTokensConfig = field(default_factory=TitleTokensConfig)


@dataclass
class ShardsConfig:
    """TFRecord shard counts per split; training wants a multiple of the Horovod size."""

    train: int = 8
    test: int = 2
    cold: int = 1


@dataclass
class PrepareConfig:
    """The Spark prepare job."""

    master: str = "local[2]"
    driver_memory: str = "2g"
    shuffle_partitions: int = 8
    examples_per_record: int = 256  # examples per TFRecord record (block encoding, see docs)
    min_ratings_per_movie: int = 0
    min_ratings_per_user: int = 0
    duplicate_broadcast_limit: int = 2_000_000  # repeated (user, movie) pairs broadcast, not shuffled
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)


@dataclass
class SynthConfig:
    """The synthetic MovieLens generator (``recsys data synth``)."""

    ratings: int = 100_000
    users: int = 1_000
    movies: int = 2_000
    format: str = field(default="ml-1m", metadata=_choices("ml-1m", "ml-latest"))
    seed: int = 0
    factors: int = 16  # latent dimensions of the hidden taste model
    noise: float = 0.6  # std-dev of the rating noise, in stars
    chunk_ratings: int = 1_000_000  # ratings generated per chunk (bounds memory)


@dataclass
class BPRConfig:
    """BPR-MF (``model.kind: bpr``): pairwise ranking on implicit feedback with sampled negatives."""

    factors: int = 64  # width of the user and movie factor vectors
    negatives: int = 4  # uniformly sampled negative movies per positive (loss linear in the batch)
    l2: float = 1e-4  # per-example L2 on the factor rows and item bias a batch looks up
    positive_min_rating: float = 0.0  # ratings at or above this are positives (0: every rating)


@dataclass
class NeuMFConfig:
    """NeuMF (``model.kind: neumf``, He et al., WWW 2017): GMF and an MLP over id embeddings fused
    by a final dense layer, trained with log loss on positives and sampled negatives."""

    factors: int = 32  # width of the GMF user / movie embeddings and of each MLP input embedding
    mlp_layers: list[int] = field(default_factory=lambda: [64, 32, 16])  # ReLU layers over [p_u, q_m]
    negatives: int = 4  # uniformly sampled negative movies per positive (loss linear in the batch)
    l2: float = 1e-5  # per-example L2 on the embedding rows a batch looks up
    positive_min_rating: float = 0.0  # ratings at or above this are positives (0: every rating)


@dataclass
class SequentialConfig:
    """The sequential model (``model.kind: sequential``): a GRU over each user's time-ordered
    training movies, trained on next-item prediction by the in-batch softmax."""

    history_length: int = 50  # latest training movies a user vector reads (oldest first)
    embedding_dim: int = 64  # width of the movie embeddings (GRU input and output side) and of u
    units: int = 64  # GRU state width
    dropout: float = 0.2  # on the history embeddings
    l2: float = 1e-6  # L2 on the embeddings and the projection
    temperature: float = 0.1  # softmax temperature of the next-item loss
    group_size: int = 1024  # the in-batch softmax runs over groups of this many examples (linear in the batch)


@dataclass
class LightGCNConfig:
    """LightGCN (``model.kind: lightgcn``, He et al., SIGIR 2020): id embeddings averaged over
    ``layers`` propagations on the normalised training graph, trained by BPR."""

    factors: int = 64  # width of the embeddings
    layers: int = 3  # propagation steps K
    negatives: int = 4  # uniformly sampled negative movies per positive
    l2: float = 1e-4  # per-example L2 on the layer-0 rows a batch looks up
    positive_min_rating: float = 0.0  # ratings at or above this are edges and positives (0: every rating)
    max_edges: int = 5_000_000  # a larger training graph stops before training (every rank holds it whole)


@dataclass
class AutoencoderConfig:
    """The rating network's item autoencoder (``model.autoencoder``, recsys/models/item_autoencoder.py):
    I-AutoRec fitted after the network and blended into the served rating."""

    units: int = 0  # sigmoid units K of the encoder (0: off; I-AutoRec's paper uses 500)
    l2: float = 300.0  # L2 weight on the encoder and decoder tables, once per epoch
    epochs: int = 300  # most epochs; the validation epoch with the best blend is kept
    validate_every: int = 10  # epochs between validation checks
    raters: int = 1000  # each movie's latest training raters in its input column (memory: movies x raters)
    movies_per_step: int = 128  # movie columns per optimizer step
    learning_rate: float = 0.001  # Adam
    # a training split giving the tables more ratings stops before training: a pass over the movies
    # (export, validation) gathers up to that many x units floats (4 GB at 2,000,000 and 500 units)
    max_ratings: int = 2_000_000
    # the autoencoder's share a of the served rating N + a (A - N), chosen on validation RMSE with the
    # epoch (0, the network alone, when no share beats it)
    share_grid: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


@dataclass
class HistoryAutoencoderConfig:
    """The rating network's history autoencoder (``model.history_autoencoder``,
    recsys/models/history_autoencoder.py): Mult-DAE fitted after the network and blended into the
    served rank vectors."""

    units: int = 0  # tanh units H of the encoder (0: off; Mult-DAE's paper uses 600, one layer here)
    dropout: float = 0.5  # of the L2-normalised history, in training
    l2: float = 1e-5  # L2 weight on the encoder and decoder tables, every step
    epochs: int = 150  # most epochs; the validated epoch with the best blend is kept (and refitted)
    validate_every: int = 10  # epochs between validation checks
    users_per_step: int = 100  # user histories per step (memory: under twice this many x movie vocab floats)
    learning_rate: float = 0.001  # Adam
    # a training split with more ratings stops before training: the fit holds their (user, movie)
    # pairs (twice with validation) on rank 0
    max_ratings: int = 30_000_000
    spread_users: int = 1000  # users whose scores measure the autoencoder's spread (share units)
    # the blend's share b of the served rank score, in units of the network's spread, chosen on
    # validation NDCG@10 with the epoch (0, the network alone, when no share beats it)
    share_grid: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.5, 2.0])


@dataclass
class ModelConfig:
    """Which model (``kind``) and its knobs. The rating network's knobs are the block's own keys;
    every other model has its own sub-block named after its kind (``model.bpr``, ``model.neumf``,
    ``model.sequential``, ``model.lightgcn``)."""

    kind: str = field(default="rating", metadata=_choices(*MODEL_REGISTRY))  # recsys.models.REGISTRY
    # Model selection (early stopping, best weights): "auto" is the model's own metric (rmse for
    # rating models, ndcg@10 for ranking models); "mix" minimises rmse - validation_ndcg_weight * ndcg@10.
    validation_metric: str = field(default="auto", metadata=_choices("auto", "rmse", "ndcg@10", "mix"))
    validation_ndcg_weight: float = 1.0

    embedding_dim: int = 32  # width of every categorical embedding
    hidden_units: list[int] = field(default_factory=lambda: [128])  # dense layers of each tower
    output_dim: int = 32  # width of the user and movie vectors u, m
    title_kernel_heights: list[int] = field(default_factory=lambda: [2, 3, 4, 5])
    title_filters: int = 16  # convolution filters per kernel height
    dropout: float = 0.2
    l2: float = 1e-5
    embedding_l2: float = 0.0  # per-example L2 on looked-up embedding rows (MF-style)
    id_bias: bool = True  # add a learnt scalar per user / movie id to b_u / b_m
    user_history_length: int = 0  # movies a user rated in training (latest first) pooled into the user tower (0: off)
    # with a history: the top-k score adds FISM's <pooled history, q_m> (the rank vectors gain embedding_dim)
    history_retrieval: bool = False
    # with history_retrieval: the FISM term's movie side is the history embedding itself (one table for
    # both sides of <pooled history, q_m>) instead of a table of its own
    history_tied: bool = False
    retrieval_weight: float = 0.3  # weight of the softmax retrieval loss (0: off)
    retrieval_temperature: float = 0.1
    retrieval_dim: int = 32  # extra retrieval-only dimensions of u and m (top-k score only; 0: none)
    # g: the served top-k score adds T * g * log q_m (q_m: the movie's share of the training ratings),
    # a popularity prior outside training (0: none)
    retrieval_popularity: float = 0.4
    # non-empty: after training, rank 0 keeps the g of this grid with the best validation NDCG@10
    # (train.validation_users users) and writes it to the artifact's model config
    retrieval_popularity_grid: list[float] = field(default_factory=list)
    retrieval_group_size: int = 1024  # in-batch softmax over groups of this many examples: cost linear in the batch
    # the retrieval softmax's negatives: the group's other movies (in_batch, logQ-corrected) or every
    # training movie of the catalog (catalog: exact softmax; batch x catalog logits per step)
    retrieval_negatives: str = field(default="in_batch", metadata=_choices("in_batch", "catalog"))
    retrieval_catalog_max: int = 20000  # catalog negatives: a larger training catalog stops before training
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)  # item autoencoder (units 0: off)
    # history autoencoder (units 0: off)
    history_autoencoder: HistoryAutoencoderConfig = field(default_factory=HistoryAutoencoderConfig)
    unique_towers: bool = True  # training: each tower runs once per unique id of a batch (off under train.xla)
    bpr: BPRConfig = field(default_factory=BPRConfig)
    neumf: NeuMFConfig = field(default_factory=NeuMFConfig)
    sequential: SequentialConfig = field(default_factory=SequentialConfig)
    lightgcn: LightGCNConfig = field(default_factory=LightGCNConfig)


@dataclass
class TrainConfig:
    """Horovod data-parallel training."""

    epochs: int = 40
    batch_size: int = 1024  # examples per rank per step
    learning_rate: float = 0.002  # per rank; multiplied by the number of ranks
    warmup_epochs: float = 1.0  # linear warm-up to the scaled learning rate
    lr_decay_per_epoch: float = 0.95  # after warm-up, the learning rate is multiplied by this every epoch
    shuffle_buffer_records: int = 512  # records (blocks of examples) in the shuffle buffer
    early_stopping_patience: int = 5  # epochs without improvement of the model's validation metric
    seed: int = 1
    # precision (recsys/precision.py): compute in float16 or bfloat16, variables and losses in float32;
    # the old boolean form is read as true = float16, false = off (YAML reads a bare `off` as false)
    mixed_precision: str = field(default="off", metadata={**_choices("off", "float16", "bfloat16"),
                                                          "aliases": {True: "float16", False: "off"}})
    xla: bool = False  # precision: compile the forward pass and its gradient with XLA (jit_compile)
    threads_per_rank: int = 0  # 0: cores / ranks
    weight_average_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights
    deterministic: bool = False  # reproducible runs for a fixed seed and rank count (TF op determinism; slower)
    elastic_commit_steps: int = 50  # elastic runs (horovodrun --min-np/--max-np): commit state every N steps
    finite_check_steps: int = 50  # losses read (and checked for NaN/inf) every N steps, not per step
    validation_users: int = 2000  # users scored for a ranking validation metric (ndcg@10), a fixed seeded sample


@dataclass
class IndexConfig:
    """FAISS indexes built from the exported vectors (jobs/build_index.py)."""

    flat_max: int = 200_000  # collections up to this size get an exact Flat index
    approximate: str = "HNSW32"  # faiss index_factory string used above flat_max (e.g. IVF4096,Flat)
    target_recall: float = 0.95  # recall@k against exact search the search parameter is tuned to
    recall_k: int = 10
    recall_sample: int = 1000  # queries sampled for tuning and for the recorded recall
    seed: int = 0
    # models scored by pairs (not factorised, e.g. NeuMF; recsys/reranking.py): every movie is scored
    # up to this catalog size (a full scan), above it the retriever index's top rerank_candidates
    rerank_full_scan_max: int = 20_000
    rerank_candidates: int = 200
    rerank_block_pairs: int = 65_536  # (user, movie) pairs scored per model call: bounds memory


@dataclass
class ExportConfig:
    """Exported vectors (jobs/export.py): the optional implicit-ALS fold-in (recsys/foldin.py)."""

    foldin_weight: float = 0.0  # > 0: each user's rank vector adds this x the fold-in step, at its norm
    foldin_unobserved_weight: float = 3.0  # w0: the weight of each movie the user has not rated (rated: 1)
    foldin_ridge: float = 1.0  # lambda of the step's ridge


@dataclass
class BiasBaselineConfig:
    """The user+item bias rating baseline (mu + b_u + b_m, ridge by alternating least squares)."""

    reg: float = 10.0  # ridge on every bias, in pseudo-ratings
    iters: int = 10


@dataclass
class RatingKnnConfig:
    """Rating-prediction KNN (user- and item-based, cosine on mean-centred ratings)."""

    neighbours: int = 40
    max_cells: int = 50_000_000  # it holds users x movies dense: skipped above this many cells


@dataclass
class SurpriseSvdConfig:
    """Surprise SVD / SVD++ (rating prediction by SGD)."""

    factors: int = 100
    epochs: int = 20
    learning_rate: float = 0.005
    reg: float = 0.02
    max_ratings: int = 10_000_000  # skipped above this many training ratings (single-threaded, Python-held)


@dataclass
class RatingAlsConfig:
    """Spark MLlib ALS on explicit ratings (rating prediction)."""

    rank: int = 16
    reg: float = 0.1
    iters: int = 15


@dataclass
class EaseConfig:
    """EASE (Steck 2019): closed-form item-item model; ``lambdas`` is its tuning grid."""

    lambdas: list[float] = field(default_factory=lambda: [50.0, 100.0, 200.0, 500.0, 1000.0])
    max_items: int = 20_000  # it inverts a movies x movies float64 matrix: skipped above this


@dataclass
class ItemKnnConfig:
    """ItemKNN on implicit feedback (cosine of binary movie columns); ``neighbours`` is its grid."""

    neighbours: list[int] = field(default_factory=lambda: [50, 100, 200, 400, 800])
    block_items: int = 2048  # candidate movies whose similarity column is computed at once
    max_items: int = 20_000  # its time grows with movies x movies: skipped above this many movies


@dataclass
class ImplicitAlsConfig:
    """Spark MLlib ALS with implicitPrefs=True on binary interactions; the lists are its grid."""

    ranks: list[int] = field(default_factory=lambda: [16, 32])
    regs: list[float] = field(default_factory=lambda: [0.1, 0.5])
    alphas: list[float] = field(default_factory=lambda: [0.25, 1.0])
    iters: int = 15


@dataclass
class EvaluateConfig:
    """``recsys evaluate``: the protocol knobs and every baseline's settings and tuning grid."""

    block_users: int = 256  # users scored at once: bounds every users x movies score block
    block_memory_gb: float = 1.0  # working memory of one score block (32 bytes per user x movie cell): fewer users
    #                               per block when the catalog is large; rating predictions likewise (1 KiB per pair)
    sample_users: int = 0  # top-k metrics (and tuning) on a seeded sample of this many users (0: all)
    liked_share: float = 0.75  # the "liked" relevance variant: rated >= min + share * (max - min)
    tune_metric: str = field(default="ndcg@10", metadata=_choices(
        "ndcg@10", "recall@10", "map@10", "precision@10", "hit_rate@10"))
    seed: int = 0  # seed of the stochastic baselines (SVD, SVD++, ALS)
    spark_master: str = "local[2]"  # Spark for the ALS baselines
    spark_driver_memory: str = "2g"
    bias: BiasBaselineConfig = field(default_factory=BiasBaselineConfig)
    rating_knn: RatingKnnConfig = field(default_factory=RatingKnnConfig)
    svd: SurpriseSvdConfig = field(default_factory=SurpriseSvdConfig)
    svdpp: SurpriseSvdConfig = field(default_factory=lambda: SurpriseSvdConfig(factors=20, learning_rate=0.007,
                                                                              max_ratings=1_000_000))
    als: RatingAlsConfig = field(default_factory=RatingAlsConfig)
    ease: EaseConfig = field(default_factory=EaseConfig)
    item_knn: ItemKnnConfig = field(default_factory=ItemKnnConfig)
    implicit_als: ImplicitAlsConfig = field(default_factory=ImplicitAlsConfig)


@dataclass
class ServeConfig:
    """The HTTP service over an index directory (``recsys serve``)."""

    host: str = "127.0.0.1"  # 0.0.0.0 in a container
    port: int = 8000
    workers: int = 1  # uvicorn worker processes, each with its own copy of the index
    max_k: int = 100  # the largest k a request may ask for (larger: 400)
    reload_interval_s: float = 5.0  # how often each worker looks for a rebuilt index (0: never)


@dataclass
class Config:
    """The whole configuration of one pipeline run."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    # Where this config came from (not a YAML key).
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict:
        """Plain-dict form (YAML/JSON-safe), without internal fields."""
        return _to_dict(self)


# ---------------------------------------------------------------------------- loading


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.metadata.get("internal")
        }
    if isinstance(obj, list):
        return [_to_dict(v) for v in obj]
    return obj


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Read one YAML file, following ``extends:`` (cycles are an error)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'extends' makes a cycle: {' -> '.join(map(str, chain))}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a file name, got {parent!r}")
    base = _read_yaml(path.parent / parent, chain + (path.resolve(),))
    return _deep_merge(base, data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (``["a", "b", "c"]``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set prepare.shards.train=4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _apply_override(data: dict, parts: list[str], value: Any, text: str) -> None:
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}' must be a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' must be a section (mapping), got {value!r}")
        return _build(tp, value, key, where)
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text; engineers write it as a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: key '{key}' has an unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, data: dict, prefix: str, where: str):
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in known:
            full = f"{prefix}.{key}" if prefix else key
            raise ConfigError(
                f"{where}: unknown key '{full}'; allowed here: {', '.join(sorted(known))}"
            )
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            continue
        full = f"{prefix}.{name}" if prefix else name
        raw = data[name]
        if isinstance(raw, bool) and f.metadata.get("aliases"):  # precision: a knob's older boolean form
            raw = f.metadata["aliases"].get(raw, raw)
        value = _coerce(raw, hints[name], full, where)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(
                f"{where}: key '{full}' must be one of {', '.join(choices)}; got {value!r}"
            )
        kwargs[name] = value
    return cls(**kwargs)


def _validate(cfg: Config, where: str) -> None:
    """Cross-field checks that a type alone cannot express."""
    checks = [
        (0.0 < cfg.prepare.split.test_fraction < 1.0, "prepare.split.test_fraction", "must be between 0 and 1 (exclusive)"),
        (0.0 <= cfg.prepare.split.cold_user_fraction < 1.0, "prepare.split.cold_user_fraction", "must be in [0, 1)"),
        (0.0 <= cfg.prepare.split.cold_movie_fraction < 1.0, "prepare.split.cold_movie_fraction", "must be in [0, 1)"),
        (cfg.data.rating_min < cfg.data.rating_max, "data.rating_min", "must be below data.rating_max"),
        (cfg.prepare.features.title_length >= 1, "prepare.features.title_length", "must be at least 1"),
        (cfg.prepare.features.max_genres >= 1, "prepare.features.max_genres", "must be at least 1"),
        (cfg.prepare.features.title_min_count >= 1, "prepare.features.title_min_count", "must be at least 1"),
        (cfg.prepare.features.year_bucket_width >= 1, "prepare.features.year_bucket_width", "must be at least 1"),
        (cfg.prepare.features.zip_prefix_length >= 0, "prepare.features.zip_prefix_length", "must be 0 or more"),
        (cfg.prepare.features.age_buckets == sorted(set(cfg.prepare.features.age_buckets)) and len(cfg.prepare.features.age_buckets) > 0,
         "prepare.features.age_buckets", "must be a non-empty, strictly increasing list"),
        (min(cfg.prepare.shards.train, cfg.prepare.shards.test, cfg.prepare.shards.cold) >= 1, "prepare.shards", "every shard count must be at least 1"),
        (0.0 <= cfg.prepare.split.validation_fraction < 1.0, "prepare.split.validation_fraction", "must be in [0, 1)"),
        (cfg.train.batch_size >= 1 and cfg.train.epochs >= 1, "train", "batch_size and epochs must be at least 1"),
        (cfg.train.learning_rate > 0, "train.learning_rate", "must be positive"),
        (cfg.model.bpr.factors >= 1 and cfg.model.bpr.negatives >= 1, "model.bpr", "factors and negatives must be at least 1"),
        (cfg.model.bpr.l2 >= 0, "model.bpr.l2", "must be 0 or more"),
        (cfg.model.neumf.factors >= 1 and cfg.model.neumf.negatives >= 1, "model.neumf",
         "factors and negatives must be at least 1"),
        (len(cfg.model.neumf.mlp_layers) > 0 and min(cfg.model.neumf.mlp_layers, default=0) >= 1,
         "model.neumf.mlp_layers", "must be a non-empty list of widths >= 1"),
        (cfg.model.neumf.l2 >= 0, "model.neumf.l2", "must be 0 or more"),
        (min(cfg.model.sequential.history_length, cfg.model.sequential.embedding_dim, cfg.model.sequential.units,
             cfg.model.sequential.group_size) >= 1, "model.sequential",
         "history_length, embedding_dim, units and group_size must be at least 1"),
        (cfg.model.sequential.temperature > 0 and cfg.model.sequential.l2 >= 0
         and 0 <= cfg.model.sequential.dropout < 1, "model.sequential",
         "temperature must be positive, l2 0 or more, dropout in [0, 1)"),
        (min(cfg.model.lightgcn.factors, cfg.model.lightgcn.negatives, cfg.model.lightgcn.max_edges) >= 1
         and cfg.model.lightgcn.layers >= 0, "model.lightgcn",
         "factors, negatives and max_edges must be at least 1, layers 0 or more"),
        (cfg.model.lightgcn.l2 >= 0, "model.lightgcn.l2", "must be 0 or more"),
        (0 <= cfg.export.foldin_weight < float("inf"), "export.foldin_weight", "must be 0 (off) or a positive number"),
        (0 < cfg.export.foldin_unobserved_weight < float("inf") and 0 < cfg.export.foldin_ridge < float("inf"), "export",
         "foldin_unobserved_weight and foldin_ridge must be positive numbers"),
        (cfg.index.rerank_full_scan_max >= 0, "index.rerank_full_scan_max", "must be 0 (never) or positive"),
        (cfg.index.rerank_candidates >= 1 and cfg.index.rerank_block_pairs >= 1, "index",
         "rerank_candidates and rerank_block_pairs must be at least 1"),
        (cfg.train.validation_users >= 1, "train.validation_users", "must be at least 1"),
        (cfg.model.retrieval_dim >= 0, "model.retrieval_dim", "must be 0 (none) or positive"),
        (cfg.model.retrieval_group_size >= 1, "model.retrieval_group_size", "must be at least 1 (examples per group)"),
        (cfg.model.retrieval_catalog_max >= 1, "model.retrieval_catalog_max", "must be at least 1 (movies)"),
        (cfg.model.retrieval_negatives != "catalog" or cfg.model.retrieval_weight > 0,
         "model.retrieval_negatives", "catalog needs model.retrieval_weight above 0 (the loss it changes)"),
        (cfg.model.user_history_length >= 0, "model.user_history_length", "must be 0 (off) or positive"),
        (not cfg.model.history_retrieval or cfg.model.user_history_length > 0, "model.history_retrieval",
         "needs model.user_history_length above 0 (the FISM term pools the user's history)"),
        (not cfg.model.history_tied or cfg.model.history_retrieval, "model.history_tied",
         "needs model.history_retrieval (it ties that FISM term's movie table to the history's)"),
        (cfg.model.autoencoder.units >= 0, "model.autoencoder.units", "must be 0 (off) or positive"),
        (min(cfg.model.autoencoder.epochs, cfg.model.autoencoder.validate_every, cfg.model.autoencoder.raters,
             cfg.model.autoencoder.movies_per_step, cfg.model.autoencoder.max_ratings) >= 1, "model.autoencoder",
         "epochs, validate_every, raters, movies_per_step and max_ratings must be at least 1"),
        (cfg.model.autoencoder.l2 >= 0 and cfg.model.autoencoder.learning_rate > 0, "model.autoencoder",
         "l2 must be 0 or more and learning_rate positive"),
        (bool(cfg.model.autoencoder.share_grid) and all(0 < a <= 1 for a in cfg.model.autoencoder.share_grid),
         "model.autoencoder.share_grid", "must list shares in (0, 1] (the autoencoder's part of the served rating)"),
        (cfg.model.history_autoencoder.units >= 0, "model.history_autoencoder.units", "must be 0 (off) or positive"),
        *[(getattr(cfg.model.history_autoencoder, key) >= 1, f"model.history_autoencoder.{key}", "must be at least 1")
          for key in ("epochs", "validate_every", "users_per_step", "max_ratings", "spread_users")],
        (0.0 <= cfg.model.history_autoencoder.dropout < 1.0, "model.history_autoencoder.dropout", "must be in [0, 1)"),
        (cfg.model.history_autoencoder.l2 >= 0, "model.history_autoencoder.l2", "must be 0 or more"),
        (cfg.model.history_autoencoder.learning_rate > 0, "model.history_autoencoder.learning_rate", "must be positive"),
        (bool(cfg.model.history_autoencoder.share_grid) and all(b > 0 for b in cfg.model.history_autoencoder.share_grid),
         "model.history_autoencoder.share_grid", "must list positive shares (in units of the network's rank-score spread)"),
        (0.0 <= cfg.train.weight_average_decay < 1.0, "train.weight_average_decay", "must be in [0, 1)"),
        (cfg.train.elastic_commit_steps >= 1, "train.elastic_commit_steps", "must be at least 1"),
        (cfg.train.finite_check_steps >= 1, "train.finite_check_steps", "must be at least 1"),
        (0.0 < cfg.train.lr_decay_per_epoch <= 1.0, "train.lr_decay_per_epoch", "must be in (0, 1]"),
        (0.0 <= cfg.model.dropout < 1.0, "model.dropout", "must be in [0, 1)"),
        (cfg.model.output_dim >= 1 and cfg.model.embedding_dim >= 1, "model", "output_dim and embedding_dim must be at least 1"),
        (max(cfg.model.title_kernel_heights, default=0) <= cfg.prepare.features.title_length and
         min(cfg.model.title_kernel_heights, default=1) >= 1,
         "model.title_kernel_heights", "every kernel height must be between 1 and prepare.features.title_length"),
        (0.0 < cfg.index.target_recall <= 1.0, "index.target_recall", "must be in (0, 1]"),
        (cfg.index.recall_k >= 1 and cfg.index.recall_sample >= 1, "index", "recall_k and recall_sample must be at least 1"),
        (cfg.prepare.examples_per_record >= 1, "prepare.examples_per_record", "must be at least 1"),
        (cfg.prepare.shuffle_partitions >= 1, "prepare.shuffle_partitions", "must be at least 1"),
        (cfg.synth.ratings >= 1 and cfg.synth.users >= 1 and cfg.synth.movies >= 1, "synth", "ratings, users and movies must be at least 1"),
        (cfg.synth.chunk_ratings >= 1000, "synth.chunk_ratings", "must be at least 1000"),
        (cfg.synth.noise > 0, "synth.noise", "must be positive (stars of rating noise; the expected ratings divide by it)"),
        (cfg.train.early_stopping_patience >= 1, "train.early_stopping_patience", "must be at least 1 (epochs)"),
        (cfg.model.retrieval_weight >= 0, "model.retrieval_weight", "must be 0 (off) or positive"),
        (cfg.model.retrieval_popularity >= 0, "model.retrieval_popularity",
         "must be 0 (none) or positive (the weight of log q_m in the top-k score)"),
        (all(g >= 0 for g in cfg.model.retrieval_popularity_grid), "model.retrieval_popularity_grid",
         "every value must be 0 (none) or positive"),
        (not cfg.model.retrieval_popularity_grid or cfg.model.retrieval_weight > 0,
         "model.retrieval_popularity_grid", "needs model.retrieval_weight above 0 (the top-k score it tunes)"),
        (cfg.model.retrieval_temperature > 0, "model.retrieval_temperature", "must be positive (scores are divided by it)"),
        (cfg.train.warmup_epochs >= 0, "train.warmup_epochs", "must be 0 (no warm-up) or positive"),
        (cfg.prepare.min_ratings_per_user >= 0, "prepare.min_ratings_per_user", "must be 0 (keep all) or positive"),
        (cfg.prepare.min_ratings_per_movie >= 0, "prepare.min_ratings_per_movie", "must be 0 (keep all) or positive"),
        (cfg.index.flat_max >= 0, "index.flat_max", "must be 0 or positive (collections up to it get an exact index)"),
        (bool(cfg.prepare.master.strip()), "prepare.master", "is empty; give a Spark master such as local[2]"),
        (bool(cfg.prepare.driver_memory.strip()), "prepare.driver_memory", "is empty; give a size such as 2g"),
        (bool(cfg.index.approximate.strip()), "index.approximate", "is empty; give a FAISS factory string such as HNSW32"),
        (cfg.evaluate.block_users >= 1, "evaluate.block_users", "must be at least 1"),
        (cfg.evaluate.block_memory_gb > 0, "evaluate.block_memory_gb", "must be positive (GiB of one score block)"),
        (cfg.evaluate.sample_users >= 0, "evaluate.sample_users", "must be 0 (every user) or positive"),
        (min(cfg.evaluate.svd.max_ratings, cfg.evaluate.svdpp.max_ratings, cfg.evaluate.rating_knn.max_cells,
             cfg.evaluate.ease.max_items, cfg.evaluate.item_knn.max_items) >= 0,
         "evaluate", "svd.max_ratings, svdpp.max_ratings, rating_knn.max_cells, ease.max_items and "
                     "item_knn.max_items must be 0 or positive"),
        (0.0 < cfg.evaluate.liked_share <= 1.0, "evaluate.liked_share", "must be in (0, 1]"),
        (len(cfg.evaluate.ease.lambdas) > 0 and min(cfg.evaluate.ease.lambdas, default=0) > 0,
         "evaluate.ease.lambdas", "must be a non-empty list of positive numbers"),
        (len(cfg.evaluate.item_knn.neighbours) > 0 and min(cfg.evaluate.item_knn.neighbours, default=0) >= 1,
         "evaluate.item_knn.neighbours", "must be a non-empty list of integers >= 1"),
        (cfg.evaluate.item_knn.block_items >= 1, "evaluate.item_knn.block_items", "must be at least 1"),
        (all(len(g) > 0 for g in (cfg.evaluate.implicit_als.ranks, cfg.evaluate.implicit_als.regs,
                                  cfg.evaluate.implicit_als.alphas))
         and min(cfg.evaluate.implicit_als.ranks, default=0) >= 1,
         "evaluate.implicit_als", "ranks, regs and alphas must be non-empty lists (ranks >= 1)"),
        (min(cfg.evaluate.rating_knn.neighbours, cfg.evaluate.bias.iters, cfg.evaluate.als.rank, cfg.evaluate.als.iters,
             cfg.evaluate.svd.factors, cfg.evaluate.svd.epochs, cfg.evaluate.svdpp.factors, cfg.evaluate.svdpp.epochs,
             cfg.evaluate.implicit_als.iters) >= 1,
         "evaluate", "neighbours, factors, ranks, epochs and iterations must be at least 1"),
        (1 <= cfg.serve.port <= 65535, "serve.port", "must be from 1 to 65535"),
        (cfg.serve.workers >= 1 and cfg.serve.max_k >= 1, "serve", "workers and max_k must be at least 1"),
        (cfg.serve.reload_interval_s >= 0, "serve.reload_interval_s", "must be 0 (never) or positive"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"{where}: key '{key}' {msg}")
    _check_faiss_factory(cfg, where)


def _check_faiss_factory(cfg: Config, where: str) -> None:
    """``index.approximate`` must be a factory string FAISS can build at every indexed width.

    The widths are those of the vectors jobs/build_index.py indexes for the configured model
    (its ``score``, ``rank`` and ``similarity`` vectors, ``RecModel.vector_widths``). Whether the
    catalog is big enough to train it is checked at build time (recsys.indexing), when its size
    is known.
    """
    if cfg.index.approximate == IndexConfig.approximate:
        return  # the default builds at every width; skip importing FAISS
    import faiss

    from recsys.models import model_class

    widths = sorted(set(model_class(cfg.model.kind).vector_widths(cfg.model).values()))
    for d in widths:
        try:
            faiss.index_factory(d, cfg.index.approximate, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            reason = (str(err).strip().splitlines() or ["not understood"])[-1]
            reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "", reason)
            raise ConfigError(f"{where}: key 'index.approximate' {cfg.index.approximate!r} is not a FAISS factory "
                              f"string that builds {d}-dimensional vectors ({reason})") from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (following ``extends:``), apply ``--set`` overrides, validate, and type.

    Raises:
        ConfigError: naming the file and key for every kind of mistake.
    """
    if path is None:
        data: dict = {}
        where = "<defaults>"
    else:
        data = _read_yaml(Path(path))
        where = str(path)
    if overrides:
        where = f"{where} (with --set {' '.join(overrides)})"
        for text in overrides:
            parts, value = parse_override(text)
            _apply_override(data, parts, value, text)
    cfg = _build(Config, data, "", where)
    cfg.source = where
    _validate(cfg, where)
    _validate_tables(cfg, where)
    _resolve_paths(cfg.paths, where)
    return cfg


def _validate_tables(cfg: Config, where: str) -> None:
    """The ``tables`` mapping: a ratings file, a known time zone and pattern, a valid separator."""
    if cfg.data.format != "tables":
        return
    from recsys.datasets.tables import check_mapping

    try:
        check_mapping(cfg.data.tables)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _resolve_paths(paths: PathsConfig, where: str) -> None:
    """Make every ``paths.*`` absolute (against the working directory, ``~`` expanded).

    Spark executors and Horovod ranks may run in other working directories (a cluster pod's
    work dir is not the driver's), so no stage is handed a relative path.
    """
    for f in dataclasses.fields(paths):
        value = getattr(paths, f.name)
        if not value.strip():
            raise ConfigError(f"{where}: paths.{f.name} is empty; give a directory")
        if "\0" in value:
            raise ConfigError(f"{where}: paths.{f.name} contains a NUL byte: {value!r}")
        setattr(paths, f.name, os.path.abspath(os.path.expanduser(value)))
    # Each output directory is replaced whole when its stage finishes (write to a temp dir, swap):
    # one that is, or contains, the raw data or another stage's output would delete it.
    outputs = [f.name for f in dataclasses.fields(paths) if f.name != "raw"]
    for name in outputs:
        out = Path(getattr(paths, name))
        for other in ["raw"] + [o for o in outputs if o != name]:
            target = Path(getattr(paths, other))
            if out == target or out in target.parents:
                raise ConfigError(f"{where}: paths.{name} ({out}) {'is' if out == target else 'contains'} "
                                  f"paths.{other} ({target}); {name} is replaced whole when its stage "
                                  "finishes, so give each stage its own directory")
