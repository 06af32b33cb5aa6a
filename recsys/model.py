"""The rating network: a user tower, a movie tower with a title text-CNN, and a dot product.

    rating(user, movie) = mu + b_u + b_m + <u, m>

``u, b_u = UserTower(user features)`` and ``m, b_m = MovieTower(movie features)``; ``mu``
is the training-split mean rating from the manifest (a constant, never learnt from test
data). Because the score is an inner product plus per-side terms, the exported vectors
``[m, b_m]`` (indexed) and ``[u, 1]`` (query) give ``<[u, 1], [m, b_m]> = rating - mu - b_u``,
so an inner-product search ranks movies exactly as the model does. Every width comes from
``ModelConfig``; every vocabulary size from the manifest's feature spec.

Built on tf-keras (Keras 2): Horovod 0.28's tape wrapper needs its variables.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.config import ModelConfig  # noqa: E402
from recsys.precision import float32  # noqa: E402


HISTORY_PAD = 0  # padding in the user-history table: the movie vocabulary's OOV id, never a training movie


def user_history_table(user_idx, movie_idx, timestamp, user_vocab: int, length: int):
    """[user_vocab, length] int32: each user's rated movies (encoded), latest first, 0-padded.

    Args: parallel arrays of the training ratings (encoded user and movie ids, unix seconds).
    """
    import numpy as np

    table = np.full((user_vocab, length), HISTORY_PAD, np.int32)
    order = np.lexsort((-np.asarray(timestamp), np.asarray(user_idx)))  # by user, latest first
    users, movies = np.asarray(user_idx)[order], np.asarray(movie_idx)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    position = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    keep = position < length
    table[users[keep], position[keep]] = movies[keep]
    return table


def masked_mean(emb: tf.Tensor, ids: tf.Tensor, pad_id: int) -> tf.Tensor:
    """Mean of ``emb`` [B, L, E] over the positions whose ``ids`` [B, L] are not ``pad_id`` -> [B, E]
    (zeros for an all-padding row)."""
    mask = tf.cast(tf.not_equal(ids, pad_id), emb.dtype)[..., None]
    return tf.reduce_sum(emb * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def _reg(cfg: ModelConfig):
    return keras.regularizers.l2(cfg.l2) if cfg.l2 > 0 else None


class _Tower(keras.layers.Layer):
    """Embeddings of categorical features -> dense layers -> (vector [B, D], bias [B])."""

    def __init__(self, features: list[dict], cfg: ModelConfig, name: str):
        super().__init__(name=name)
        self.cfg = cfg
        self.features = features
        self.embeddings = {}
        for f in features:
            if f["name"] == "title_words":
                continue
            self.embeddings[f["name"]] = keras.layers.Embedding(
                f["vocab_size"], cfg.embedding_dim, embeddings_regularizer=_reg(cfg), name=f"{f['name']}_embedding")
        self.embedding_l2 = cfg.embedding_l2
        self.hidden = [keras.layers.Dense(n, activation="relu", kernel_regularizer=_reg(cfg), name=f"hidden_{i}")
                       for i, n in enumerate(cfg.hidden_units)]
        self.dropout = keras.layers.Dropout(cfg.dropout)
        self.vector = keras.layers.Dense(cfg.output_dim, kernel_regularizer=_reg(cfg), name="vector")
        # retrieval-only dimensions: used by the top-k score, never by the rating
        self.retrieval_vector = keras.layers.Dense(cfg.retrieval_dim, kernel_regularizer=_reg(cfg),
                                                   name="retrieval_vector") if cfg.retrieval_dim > 0 else None
        self.bias = keras.layers.Dense(1, name="bias")
        # A per-id scalar bias (classic b_u / b_m), added to the tower's bias head; unknown
        # ids share the OOV row, so cold users and movies still get the attribute-based head.
        self.id_feature = next((f for f in features if f["name"] in ("user_id", "movie_id")), None)
        self.id_bias = None
        if self.id_feature is not None and cfg.id_bias:
            self.id_bias = keras.layers.Embedding(self.id_feature["vocab_size"], 1, embeddings_initializer="zeros",
                                                  embeddings_regularizer=_reg(cfg), name="id_bias")

    def _embed(self, f: dict, ids: tf.Tensor) -> tf.Tensor:
        emb = self.embeddings[f["name"]](ids)
        if self.embedding_l2 > 0 and not f["shape"]:
            # per-example L2 on the rows looked up (matrix-factorisation style regularisation)
            self.add_loss(self.embedding_l2 * tf.reduce_mean(tf.reduce_sum(tf.square(emb), axis=-1)))
        if f["shape"]:  # a padded list (genres): mean over non-padding entries
            return masked_mean(emb, ids, f["pad_id"])
        return emb

    def extra_inputs(self, inputs, training):
        return []

    def heads(self, inputs: dict[str, tf.Tensor], training=False):
        """(vector [B, D], bias [B], retrieval-only vector [B, model.retrieval_dim] (width 0 when off))."""
        parts = [self._embed(f, inputs[f["name"]]) for f in self.features if f["name"] in self.embeddings]
        parts += self.extra_inputs(inputs, training)
        x = tf.concat(parts, axis=-1)
        for layer in self.hidden:
            x = self.dropout(layer(x), training=training)
        bias = tf.squeeze(self.bias(x), axis=-1)
        if self.id_bias is not None:
            bias = bias + tf.squeeze(self.id_bias(inputs[self.id_feature["name"]]), axis=-1)
        vector = self.vector(x)
        extra = self.retrieval_vector(x) if self.retrieval_vector is not None else tf.zeros_like(vector[:, :0])
        return vector, bias, extra

    def call(self, inputs: dict[str, tf.Tensor], training=False):
        vector, bias, _ = self.heads(inputs, training)
        return vector, bias


class UserTower(_Tower):
    """User id, gender, age bucket, occupation, zip prefix -> (u [B, D], b_u [B]).

    With ``user_history_length`` H > 0 the tower also pools (mean) embeddings of the movies the
    user rated in training, SVD++'s implicit feedback: a table [user vocab, H] of encoded movie
    ids (latest first, 0-padded), a non-trainable weight so that it travels in the checkpoint
    with the model. Unknown users (the OOV row) have an empty history.
    """

    def __init__(self, features: list[dict], cfg: ModelConfig, name: str, movie_vocab: int):
        super().__init__(features, cfg, name)
        self.history = self.history_embedding = None
        if cfg.user_history_length > 0:
            self.history = self.add_weight(name="user_history", shape=(self.id_feature["vocab_size"],
                                                                        cfg.user_history_length),
                                           dtype=tf.int32, initializer="zeros", trainable=False)
            self.history_embedding = keras.layers.Embedding(movie_vocab, cfg.embedding_dim,
                                                            embeddings_regularizer=_reg(cfg), name="history_embedding")

    def set_history(self, table) -> None:
        """Load the [user vocab, H] table of rated movie ids (see ``user_history_table``)."""
        self.history.assign(tf.constant(table, tf.int32))

    def extra_inputs(self, inputs, training):
        if self.history is None:
            return []
        ids = tf.gather(self.history, inputs[self.id_feature["name"]])  # [B, H]
        return [masked_mean(self.history_embedding(ids), ids, HISTORY_PAD)]


class TitleCNN(keras.layers.Layer):
    """Kim-style text-CNN: word embeddings, Conv1D per kernel height, ReLU, max over time."""

    def __init__(self, vocab_size: int, pad_id: int, cfg: ModelConfig):
        super().__init__(name="title_cnn")
        self.pad_id = pad_id
        self.words = keras.layers.Embedding(vocab_size, cfg.embedding_dim, embeddings_regularizer=_reg(cfg),
                                            name="word_embedding")
        self.convs = [keras.layers.Conv1D(cfg.title_filters, h, activation="relu", name=f"conv_{h}")
                      for h in cfg.title_kernel_heights]
        self.dropout = keras.layers.Dropout(cfg.dropout)

    def call(self, ids: tf.Tensor, training=False) -> tf.Tensor:
        x = self.words(ids)  # [B, L, E]
        x = x * tf.cast(tf.not_equal(ids, self.pad_id), x.dtype)[..., None]  # padding contributes zeros
        pooled = [tf.reduce_max(conv(x), axis=1) for conv in self.convs]  # each [B, filters]
        return self.dropout(tf.concat(pooled, axis=-1), training=training)


class MovieTower(_Tower):
    """Movie id, genres (pooled), release-year bucket, title text-CNN -> (m [B, D], b_m [B])."""

    def __init__(self, features: list[dict], cfg: ModelConfig, name: str):
        super().__init__(features, cfg, name)
        title = next(f for f in features if f["name"] == "title_words")
        self.title = TitleCNN(title["vocab_size"], title["pad_id"], cfg)

    def extra_inputs(self, inputs, training):
        return [self.title(inputs["title_words"], training=training)]


class RatingModel(keras.Model):
    """``mu + b_u + b_m + <u, m>`` over the two towers.

    Args:
        spec: the manifest's ``features`` block (names, shapes, vocab sizes, towers).
        mu: the training-split mean rating.
    """

    def __init__(self, spec: dict, mu: float, cfg: ModelConfig):
        super().__init__(name="rating_model")
        feats = spec["features"]
        self.cfg = cfg
        self.mu = float(mu)
        movie_id = next(f for f in feats if f["name"] == "movie_id")
        self.user_tower = UserTower([f for f in feats if f["tower"] == "user"], cfg, "user_tower",
                                    movie_vocab=movie_id["vocab_size"])
        self.movie_tower = MovieTower([f for f in feats if f["tower"] == "movie"], cfg, "movie_tower")
        # Retrieval prior c_m (log-popularity scale), learnt only by the retrieval loss: the
        # top-k score is (<u, m> + <u_r, m_r>) / temperature + c_m (see retrieval_score).
        self.movie_prior = keras.layers.Embedding(movie_id["vocab_size"], 1, embeddings_initializer="zeros",
                                                  name="movie_prior")

    def towers(self, inputs, training=False):
        u, b_u = self.user_tower(inputs, training=training)
        m, b_m = self.movie_tower(inputs, training=training)
        return u, b_u, m, b_m

    def all_heads(self, inputs, training=False):
        """(u, b_u, m, b_m, u_r, m_r): the rating terms plus the retrieval-only vectors [B, R]."""
        u, b_u, u_r = self.user_tower.heads(inputs, training=training)
        m, b_m, m_r = self.movie_tower.heads(inputs, training=training)
        return u, b_u, m, b_m, u_r, m_r

    def call(self, inputs, training=False):
        u, b_u, m, b_m = float32(self.towers(inputs, training))  # precision: the score in float32
        return self.mu + b_u + b_m + tf.reduce_sum(u * m, axis=-1)

    def prior(self, movie_ids: tf.Tensor) -> tf.Tensor:
        """c_m [B] for encoded movie ids [B]."""
        return float32(tf.squeeze(self.movie_prior(movie_ids), axis=-1))  # precision: float32 under any policy

    def retrieval_score(self, inputs, training=False):
        """(<u, m> + <u_r, m_r>) / temperature + c_m: the top-k ranking score (log p(movie | user) up to
        a constant); u_r, m_r are the retrieval-only dimensions (none unless model.retrieval_dim > 0)."""
        u, _, m, _, u_r, m_r = float32(self.all_heads(inputs, training))  # precision: the score in float32
        dot = tf.reduce_sum(u * m, axis=-1) + tf.reduce_sum(u_r * m_r, axis=-1)
        return dot / self.cfg.retrieval_temperature + self.prior(inputs["movie_id"])


def retrieval_loss(u: tf.Tensor, m: tf.Tensor, prior: tf.Tensor, movie_ids: tf.Tensor, log_q: tf.Tensor,
                   temperature: float) -> tf.Tensor:
    """In-batch softmax with sampling-bias (logQ) correction.

    Each user's rated movie is the positive; the batch's other movies are the negatives. They
    were sampled in proportion to their popularity q_m, so log q_m is subtracted from their
    logits (Yi et al., RecSys 2019): the corrected softmax estimates log p(m | u), popularity
    included, which is what "which movie will this user watch next" asks for.

    Args:
        u, m: user and movie vectors [B, D] of the batch's (user, movie) pairs.
        prior: c_m [B]; movie_ids: encoded movie ids [B]; log_q: log sampling probability [B].
    """
    u, m, prior, log_q = float32((u, m, prior, log_q))  # precision: logits and softmax in float32
    logits = tf.matmul(u, m, transpose_b=True) / temperature + (prior - log_q)[None, :]  # [B, B]
    # the same movie elsewhere in the batch is not a negative for this user
    same = tf.equal(movie_ids[:, None], movie_ids[None, :])
    others = tf.logical_not(tf.eye(tf.shape(u)[0], dtype=tf.bool))
    logits = tf.where(same & others, tf.fill(tf.shape(logits), tf.constant(-1e9, logits.dtype)), logits)
    labels = tf.range(tf.shape(u)[0])
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
