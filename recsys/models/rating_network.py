"""The rating network (``model.kind: rating``): a user tower, a movie tower with a title text-CNN.

    rating(user, movie) = mu + b_u + b_m + <u, m> = mu + <[u, b_u, 1], [m, 1, b_m]>

``u, b_u = UserTower(user features)`` and ``m, b_m = MovieTower(movie features)``; ``mu``
is the training-split mean rating from the manifest (a constant, never learnt from test
data). The formula lives in :meth:`RatingNetwork.user_vectors` / :meth:`movie_vectors` (the
score vectors ``[u, b_u, 1]`` and ``[m, 1, b_m]``) and nowhere else: the contract's
``score`` is ``mu + <user score, movie score>``, so an inner-product index over the movies'
score vectors returns exactly the movies with the highest predicted rating.

With the item autoencoder (``model.autoencoder.units > 0``, recsys/models/item_autoencoder.py)
the served rating is that rating N blended with I-AutoRec's A for the users and movies it knows,
``N + a (A - N)``: the score vectors gain the blend's entries (``user_vectors``) and stay an
exact inner product.

With the history autoencoder (``model.history_autoencoder.units > 0``,
recsys/models/history_autoencoder.py) top-k lists rank by the rank score below plus
``s D(u, m)``, Mult-DAE's centred logit for the users and movies it knows: the rank vectors gain
its entries and stay an exact inner product.

With the joint retrieval objective (``model.retrieval_weight > 0``) top-k lists rank by
``<[u, u_r, 1], [m, m_r, T * (c_m + g log q_m)]> = T * ((<u, m> + <u_r, m_r>) / T + c_m + g log q_m)``:
the retrieval softmax's logit times the temperature ``T`` (``u_r, m_r``: retrieval-only
dimensions, ``c_m``: a learnt per-movie prior), plus a popularity prior that training never sees
(``g``: ``model.retrieval_popularity``; ``q_m``: the movie's share of the training ratings).
Every width comes from ``ModelConfig``; every vocabulary size from the manifest's feature spec.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.config import ModelConfig  # noqa: E402
from recsys.models.contract import RMSE, RecModel, f32  # noqa: E402
from recsys.models.history_autoencoder import HistoryAutoencoder  # noqa: E402
from recsys.models.item_autoencoder import ItemAutoencoder  # noqa: E402
from recsys.precision import float32_sum  # noqa: E402


HISTORY_PAD = 0  # padding in the user-history table: the movie vocabulary's OOV id, never a training movie
# training only: the movie ids [B] to leave out of each example's history (the rating being predicted)
LEAVE_OUT = "_history_leave_out"


def user_history_table(user_idx, movie_idx, timestamp, user_vocab: int, length: int):
    """[user_vocab, length] int32: each user's rated movies (encoded), latest first, 0-padded.

    Args: parallel arrays of the training ratings (encoded user and movie ids, unix seconds).
    """
    import numpy as np

    from recsys.models.data import latest_first

    table = np.full((user_vocab, length), HISTORY_PAD, np.int32)
    order, position, keep = latest_first(user_idx, timestamp, length)  # by user, latest first
    table[np.asarray(user_idx)[order][keep], position[keep]] = np.asarray(movie_idx)[order][keep]
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
        if f["shape"]:  # a padded list (genres): mean over non-padding entries
            return masked_mean(emb, ids, f["pad_id"])
        return emb

    def embedding_penalty(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """``model.embedding_l2`` x the batch mean of the squared norm of the rows each single-id
        feature looks up (matrix-factorisation style: a row is penalised as often as it is used,
        so rare ids are held closer to zero than a weight-decay term would). Scalar float32."""
        terms = [tf.reduce_mean(tf.reduce_sum(tf.square(f32(self.embeddings[f["name"]](inputs[f["name"]]))), axis=-1))
                 for f in self.features if f["name"] in self.embeddings and not f["shape"]]
        return self.embedding_l2 * tf.add_n(terms)

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
    with the model. Unknown users (the OOV row) have an empty history. In training, each rating's
    own movie is left out of its user's history (FISM's rule): otherwise the retrieval loss
    learns "the positive is in the history", which never holds for a movie to recommend.
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

    def pooled_history(self, inputs) -> tf.Tensor:
        """[B, E]: the mean embedding of each user's training movies (zeros for none)."""
        ids = tf.gather(self.history, inputs[self.id_feature["name"]])  # [B, H]
        if LEAVE_OUT in inputs:  # training: a rating never sees its own movie in the history (FISM)
            ids = tf.where(tf.equal(ids, tf.cast(inputs[LEAVE_OUT], ids.dtype)[:, None]), HISTORY_PAD, ids)
        return masked_mean(self.history_embedding(ids), ids, HISTORY_PAD)

    def extra_inputs(self, inputs, training):
        return [] if self.history is None else [self.pooled_history(inputs)]


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


class RatingNetwork(RecModel):
    """``mu + b_u + b_m + <u, m>`` over the two towers, blended with the item autoencoder's rating
    and the history autoencoder's top-k score when they are on (see the module docstring).

    Args:
        spec: the manifest's ``features`` block; stats: its ``stats`` block (``train_rating_mean``).
    """

    kind = "rating"
    label = "rating network"
    rates = True
    default_validation_metric = RMSE
    shape_keys = ("kind", "embedding_dim", "hidden_units", "output_dim", "title_kernel_heights", "title_filters",
                  "id_bias", "user_history_length", "retrieval_dim", "history_retrieval", "history_tied",
                  "autoencoder.units", "autoencoder.raters", "history_autoencoder.units")

    @classmethod
    def vector_widths(cls, cfg) -> dict[str, int]:
        """score ``[u, b_u, 1]`` D+2 (plus K+D+4 blend entries with the item autoencoder); rank ``[u, u_r, 1]``
        D+R+1 with the retrieval loss (plus E with the FISM term), else the score, plus H+1 with the
        history autoencoder; similarity ``m`` D."""
        out = cfg.output_dim
        fism = cfg.embedding_dim if cfg.history_retrieval and cfg.user_history_length > 0 else 0
        # the item autoencoder's blend: [a W_u, a d_u, -a s_u, -a mu] . [h_m, 1, s_m, 1] (user_vectors)
        score = out + 2 + (cfg.autoencoder.units + 1 + out + 2 + 1 if cfg.autoencoder.units > 0 else 0)
        rank = out + cfg.retrieval_dim + fism + 1 if cfg.retrieval_weight > 0 else score
        rank += cfg.history_autoencoder.units + 1 if cfg.history_autoencoder.units > 0 else 0
        return {"score": score, "rank": rank, "similarity": out}

    def __init__(self, spec: dict, stats: dict, cfg: ModelConfig):
        super().__init__(spec, stats, cfg)
        feats = spec["features"]
        self.mu = float(stats["train_rating_mean"])
        movie_id = self.feature_defs["movie_id"]
        self.user_tower = UserTower([f for f in feats if f["tower"] == "user"], cfg, "user_tower",
                                    movie_vocab=movie_id["vocab_size"])
        self.movie_tower = MovieTower([f for f in feats if f["tower"] == "movie"], cfg, "movie_tower")
        # Retrieval prior c_m (log-popularity scale), learnt only by the retrieval loss
        self.movie_prior = keras.layers.Embedding(movie_id["vocab_size"], 1, embeddings_initializer="zeros",
                                                  name="movie_prior")
        # FISM term of the top-k score: <pooled history of the user, q_m> (model.history_retrieval); q_m's
        # own table, built whatever the weight (resume), unless model.history_tied makes it the history's
        self.history_target = keras.layers.Embedding(movie_id["vocab_size"], cfg.embedding_dim, name="history_target",
                                                     embeddings_regularizer=_reg(cfg)) \
            if cfg.history_retrieval and cfg.user_history_length > 0 and not cfg.history_tied else None
        self.log_q = None  # log sampling probability per movie, set by prepare() for the retrieval loss
        self._prepared = None  # the prepared directory (prepare()), where finalize() reads the training pairs
        # log q_m, every movie's share of the training ratings (a non-trainable weight, set by prepare()
        # and kept in the checkpoint): the top-k score's popularity term, model.retrieval_popularity.
        # Built whatever the retrieval weight (resume), as the prior is
        self.log_popularity = self.add_weight(name="movie_log_popularity", shape=(movie_id["vocab_size"],),
                                              dtype=tf.float32, initializer="zeros", trainable=False)
        # retrieval_negatives=catalog: every training movie's encoded features ({name: [M, ...]}) and the
        # catalog row of each movie id ([movie vocab]), set by prepare()
        self.catalog = self.catalog_row = None
        # model.autoencoder: I-AutoRec, fitted after the network (finalize) and blended into the served rating
        self.autoencoder = ItemAutoencoder(self.feature_defs["user_id"]["vocab_size"], movie_id["vocab_size"],
                                           cfg.autoencoder) if cfg.autoencoder.units > 0 else None
        # model.history_autoencoder: Mult-DAE, fitted after the network (finalize) and blended into top-k
        self.history_autoencoder = HistoryAutoencoder(
            self.feature_defs["user_id"]["vocab_size"], movie_id["vocab_size"], cfg.history_autoencoder) \
            if cfg.history_autoencoder.units > 0 else None

    @property
    def _blend_width(self) -> int:
        """Entries the item autoencoder's blend adds to each score vector: K + 1 + (D + 2) + 1."""
        return self.cfg.autoencoder.units + self.cfg.output_dim + 4

    @property
    def user_features(self) -> list[str]:
        return [f["name"] for f in self.spec["features"] if f["tower"] == "user"]

    @property
    def movie_features(self) -> list[str]:
        return [f["name"] for f in self.spec["features"] if f["tower"] == "movie"]

    @property
    def score_offset(self) -> float:
        return self.mu

    @property
    def retrieval(self) -> bool:
        return self.cfg.retrieval_weight > 0

    @property
    def fism(self) -> bool:
        """The top-k score has the FISM term <pooled history, q_m> (history_retrieval with a history)."""
        return self.cfg.history_retrieval and self.cfg.user_history_length > 0 and self.cfg.retrieval_weight > 0

    def divergence_knobs(self) -> list[str]:
        knobs = [f"model.l2 ({self.cfg.l2:g})"]
        return knobs + ([f"model.retrieval_temperature ({self.cfg.retrieval_temperature:g})"] if self.retrieval else [])

    def prepare(self, prepared: Path) -> None:
        from recsys.models.data import movie_log_sampling_probability, training_movie_raters, training_user_history

        feats = self.spec["features"]
        if self.cfg.user_history_length > 0:
            self.user_tower.set_history(training_user_history(prepared, feats, self.cfg.user_history_length))
        log_q = tf.constant(movie_log_sampling_probability(prepared, feats), tf.float32)
        self.log_popularity.assign(log_q)
        if self.autoencoder is not None:
            self.autoencoder.set_tables(*training_movie_raters(prepared, feats, self.cfg.autoencoder.raters))
        if self.history_autoencoder is not None:
            import pyarrow.dataset as ds

            # the limit is checked before training on every rank; rank 0 reads the pairs in finalize
            self.history_autoencoder.check_size(ds.dataset(Path(prepared) / "ratings_train").count_rows())
            self._prepared = Path(prepared)
        if not self.retrieval:
            return
        if self.cfg.retrieval_negatives == "catalog":  # exact softmax: no logQ to correct
            self.catalog, self.catalog_row = self._training_catalog(prepared)
        else:
            self.log_q = log_q

    def _training_catalog(self, prepared: Path):
        """({feature: [M, ...] int64 tensor}, [movie vocab] int32 row of each id): the encoded
        features of the M movies with a training id (the movie vocabulary less padding and OOV)."""
        import numpy as np
        import pandas as pd

        from recsys.errors import ArtifactError, ConfigError
        from recsys.features import OOV_ID, encoded_columns

        vocab = self.feature_defs["movie_id"]["vocab_size"]
        enc = encoded_columns(pd.read_parquet(Path(prepared) / "movies.parquet"), self.movie_features)
        _, first = np.unique(enc["movie_id"], return_index=True)
        keep = np.sort(first[enc["movie_id"][first] > OOV_ID])  # one row per training movie id
        if len(keep) > self.cfg.retrieval_catalog_max:
            raise ConfigError(f"model.retrieval_negatives=catalog: {len(keep):,} training movies is above "
                              f"model.retrieval_catalog_max ({self.cfg.retrieval_catalog_max:,}); each step would "
                              f"score batch x catalog logits. Use model.retrieval_negatives=in_batch or raise the limit")
        row = np.full(vocab, -1, np.int32)
        row[enc["movie_id"][keep]] = np.arange(len(keep), dtype=np.int32)
        missing = np.flatnonzero(row[OOV_ID + 1:] < 0)
        if len(missing):
            raise ArtifactError(f"{prepared}/movies.parquet has no row for {len(missing):,} training movie id(s) "
                                f"(e.g. encoded id {missing[0] + OOV_ID + 1}); prepare the data again")
        return {k: tf.constant(v[keep]) for k, v in enc.items()}, tf.constant(row)

    def user_vectors(self, x, training=False):
        """score ``[u, b_u, 1]`` [B, D+2]; rank ``[u, u_r, 1]`` [B, D+R+1] (the score vector without retrieval).

        With the item autoencoder, outside training, the score vector gains
        ``a k_u [W_u, d_u, -s_u, -mu]`` (``s_u`` the vector above, ``k_u`` 1 for a user it knows,
        else 0), matched by the movie's ``k_m [h_m, 1, s_m, 1]``: the score becomes
        ``N + a k_u k_m (A - N)``, the network's rating N blended with the autoencoder's A."""
        u, b_u, u_r = (f32(t) for t in self.user_tower.heads(x, training=training))
        one = tf.ones_like(b_u)[:, None]
        score = tf.concat([u, b_u[:, None], one], axis=-1)
        if self.autoencoder is not None and not training:
            if self.autoencoder.blends:
                w, b, known = self.autoencoder.user_codes(x["user_id"])
                k = (self.autoencoder.share * known)[:, None]
                score = tf.concat([score, k * w, k * b[:, None], -k * score, -k * self.mu * one], axis=-1)
            else:  # share 0: the network alone
                score = tf.concat([score, tf.zeros([tf.shape(score)[0], self._blend_width], score.dtype)], axis=-1)
        if self.fism:
            u_r = tf.concat([u_r, f32(self.user_tower.pooled_history(x))], axis=-1)
        rank = tf.concat([u, u_r, one], axis=-1) if self.retrieval else score
        if self.history_autoencoder is not None and not training:
            rank = tf.concat([rank, self.history_autoencoder.user_part(x["user_id"])], axis=-1)
        return {"score": score, "rank": rank}

    def movie_vectors(self, x, training=False):
        """score ``[m, 1, b_m]``; rank ``[m, m_r, T * (c_m + g log q_m)]``; similarity ``m``.

        ``g log q_m`` (``model.retrieval_popularity``; q_m: the movie's share of the training
        ratings) is a popularity prior of the served top-k score, outside training: with
        ``training=True`` (the retrieval loss) the last entry is ``T * c_m`` alone."""
        m, b_m, m_r = (f32(t) for t in self.movie_tower.heads(x, training=training))
        one = tf.ones_like(b_m)[:, None]
        score = tf.concat([m, one, b_m[:, None]], axis=-1)
        if self.autoencoder is not None and not training:  # the blend's movie side (user_vectors)
            if self.autoencoder.blends:
                h, known = self.autoencoder.movie_codes(x["movie_id"])
                k = known[:, None]
                score = tf.concat([score, k * h, k, k * score, k * one], axis=-1)
            else:  # share 0: the user side is zeros, so no column is encoded
                score = tf.concat([score, tf.zeros([tf.shape(score)[0], self._blend_width], score.dtype)], axis=-1)
        if self.retrieval:
            prior = f32(tf.squeeze(self.movie_prior(x["movie_id"]), axis=-1))
            if not training and self.cfg.retrieval_popularity > 0:
                prior += self.cfg.retrieval_popularity * f32(tf.gather(self.log_popularity, x["movie_id"]))
            if self.fism:
                target = self.user_tower.history_embedding if self.cfg.history_tied else self.history_target
                m_r = tf.concat([m_r, f32(target(x["movie_id"]))], axis=-1)
            rank = tf.concat([m, m_r, self.cfg.retrieval_temperature * prior[:, None]], axis=-1)
        else:
            rank = score
        if self.history_autoencoder is not None and not training:
            rank = tf.concat([rank, self.history_autoencoder.movie_part(x["movie_id"])], axis=-1)
        return {"score": score, "rank": rank, "similarity": m}

    def build_variables(self) -> None:
        x = self.dummy_inputs()
        self.user_vectors(x)
        self.movie_vectors(x)
        self.movie_prior(x["movie_id"])  # the prior exists (and is checkpointed) whatever the weight
        if self.history_target is not None:
            self.history_target(x["movie_id"])

    def finalize(self, valid, ranking, seed: int, log) -> dict | None:
        """With the item autoencoder: fit it on the training tables and choose its epoch and share on
        the ``valid`` batches (the network's own predictions, share 0, are its reference). With the
        history autoencoder: fit it on the training histories and choose its epoch and share by
        ``ranking`` (the served validation NDCG@10), then refit it with the validation movies."""
        if self.autoencoder is None and self.history_autoencoder is None:
            return None
        import numpy as np

        if self.autoencoder is not None:
            self.autoencoder.share.assign(0.0)
        users, movies, ratings, network = [], [], [], []
        for x, y in valid:
            users.append(x["user_id"].numpy()); movies.append(x["movie_id"].numpy())
            ratings.append(y.numpy())
            if self.autoencoder is not None:
                network.append(self.score(x).numpy())
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
        chosen = {}
        if self.autoencoder is not None:
            scale = (float(self.stats["rating_min"]), float(self.stats["rating_max"]))
            chosen["autoencoder"] = self.autoencoder.fit((cat(users), cat(movies), cat(ratings).astype(np.float64),
                                                          cat(network).astype(np.float64)), scale, seed, log)
        if self.history_autoencoder is not None:
            from recsys.models.data import training_ratings
            from recsys.models.history_autoencoder import history_matrix

            pairs = training_ratings(self._prepared, ["user_idx", "movie_idx"])
            self.history_autoencoder.set_history(history_matrix(
                pairs["user_idx"], pairs["movie_idx"], self.feature_defs["user_id"]["vocab_size"],
                self.feature_defs["movie_id"]["vocab_size"]))
            del pairs
            chosen["history_autoencoder"] = self.history_autoencoder.fit(
                (cat(users).astype(np.int64), cat(movies).astype(np.int64)), ranking, seed, log)
        return chosen

    def named_losses(self, x, y):
        """rating: MSE of the predicted rating; retrieval: the weighted softmax over in-batch or
        catalog negatives (when on); regularization: the layers' L2 terms."""
        if self.user_tower.history is not None:  # the movie rated is left out of its user's history: per example
            uv = self.user_vectors({**x, LEAVE_OUT: x["movie_id"]}, training=True)
        else:
            uv = self._per_unique(self.user_vectors, x, self.user_tower.id_feature, self.user_features)
        if self.catalog is not None:  # one tower pass over the catalog; the batch's movies gathered from it
            rows = tf.gather(self.catalog_row, x["movie_id"])
            catalog = self.movie_vectors(self.catalog, training=True)
            mv = {k: tf.gather(v, rows) for k, v in catalog.items()}
        else:
            mv = self._per_unique(self.movie_vectors, x, self.movie_tower.id_feature, self.movie_features)
        pred = self.mu + tf.reduce_sum(uv["score"] * mv["score"], axis=-1)
        out = {"rating": tf.reduce_mean(tf.square(pred - f32(y)))}
        if self.catalog is not None:
            out["retrieval"] = self.cfg.retrieval_weight * catalog_retrieval_loss(
                uv["rank"], catalog["rank"], rows, self.cfg.retrieval_temperature)
        elif self.retrieval:
            ids = x["movie_id"]
            out["retrieval"] = self.cfg.retrieval_weight * retrieval_loss(
                uv["rank"], mv["rank"], ids, tf.gather(self.log_q, ids), self.cfg.retrieval_temperature,
                self.cfg.retrieval_group_size)
        penalties = list(self.losses)  # the layers' weight decay (model.l2)
        if self.cfg.embedding_l2 > 0:  # per example, over the single-id rows this batch looks up
            penalties += [tower.embedding_penalty(x) for tower in (self.user_tower, self.movie_tower)]
        if penalties:
            out["regularization"] = float32_sum(penalties)
        return out

    def _per_unique(self, vectors, x, id_feature, names):
        """``vectors(x)`` computed once per unique id of the batch and gathered back to [B, ...].

        A tower's inputs are a function of its id (prepare looks them up in the users and movies
        tables), so the batch's repeats (a popular movie, an active user) need one tower pass; the
        gradient of the gather sums the repeats' contributions, as the per-example towers would.
        Rows with the unknown (OOV) id are kept apart: their attributes may differ. Duplicates
        share one dropout mask per step. Off with ``model.unique_towers: false`` and under XLA
        (``static_shapes``: the unique count is data-dependent). ``model.embedding_l2`` is computed
        apart, per example (``embedding_penalty``), so it is unaffected.
        """
        if not self.cfg.unique_towers or self.static_shapes or id_feature is None:
            return vectors(x, training=True)
        from recsys.features import OOV_ID

        ids = x[id_feature["name"]]
        n = tf.shape(ids, out_type=ids.dtype)[0]
        key = tf.where(tf.equal(ids, OOV_ID), -1 - tf.range(n, dtype=ids.dtype), ids)  # OOV rows: each its own
        unique, index = tf.unique(key)
        first = tf.math.unsorted_segment_min(tf.range(tf.shape(ids)[0]), index, tf.shape(unique)[0])  # [U]
        out = vectors({k: tf.gather(x[k], first) for k in names}, training=True)
        return {k: tf.gather(v, index) for k, v in out.items()}


def retrieval_loss(user_rank: tf.Tensor, movie_rank: tf.Tensor, movie_ids: tf.Tensor, log_q: tf.Tensor,
                   temperature: float, group_size: int | None = None) -> tf.Tensor:
    """In-batch softmax with sampling-bias (logQ) correction, over the rank vectors, in groups.

    The batch is cut into consecutive groups of ``group_size`` examples (``model.retrieval_group_size``);
    inside a group each user's rated movie is the positive and the group's other movies are the
    negatives. They were sampled in proportion to their popularity q_m, so log q_m is subtracted
    from their logits (Yi et al., RecSys 2019): the corrected softmax estimates log p(m | u),
    popularity included. The logit ``<[u, u_r, 1], [m, m_r, T c_m]> / T`` is
    ``(<u, m> + <u_r, m_r>) / T + c_m``. The loss is the mean over the batch's examples.

    Cost: ``B / G`` blocks of [G, G] logits, so memory and compute grow linearly with the batch
    B (one [B, B] block when ``group_size`` is None or at least B: the plain in-batch softmax).
    A batch that ``group_size`` does not divide gets a shorter last group (padded to G, the
    padding masked out of the softmax and the mean).

    Args:
        user_rank, movie_rank: rank vectors [B, R] of the batch's (user, movie) pairs.
        movie_ids: encoded movie ids [B]; log_q: log sampling probability [B].
        group_size: examples per group G (None: the whole batch).
    Returns: scalar float32.
    """
    batch = user_rank.shape[0]
    if group_size is None or (batch is not None and group_size >= batch):
        return _softmax_block(*_folded(user_rank, movie_rank, log_q, temperature, movie_ids, 1, -1))
    n = tf.shape(user_rank)[0]
    pad = (-n) % group_size  # 0 for the trainer's static batches
    valid = None
    if batch is None or batch % group_size:
        # padding: a zero user row and a movie whose logit is _MASKED for every user (never a negative)
        user_rank, movie_rank = (tf.pad(t, [[0, pad], [0, 0]]) for t in (user_rank, movie_rank))
        log_q = tf.pad(log_q, [[0, pad]], constant_values=-_MASKED)
        movie_ids = tf.pad(movie_ids, [[0, pad]])
        valid = tf.reshape(tf.range(n + pad) < n, [-1, group_size])
    return _softmax_block(*_folded(user_rank, movie_rank, log_q, temperature, movie_ids, -1, group_size), valid)


def catalog_retrieval_loss(user_rank: tf.Tensor, catalog_rank: tf.Tensor, rows: tf.Tensor,
                           temperature: float) -> tf.Tensor:
    """Exact softmax over the whole training catalog (``model.retrieval_negatives: catalog``).

    Each user's rated movie is the positive and every other catalog movie a negative, so no
    sampling correction is needed: the logit ``<[u, u_r, 1], [m, m_r, T c_m]> / T`` estimates
    log p(m | u) up to a constant. Cost: a [B, M] block of logits per step, linear in the batch B
    and bounded by ``model.retrieval_catalog_max`` movies M.

    Args:
        user_rank: [B, R] rank vectors of the batch's users; catalog_rank: [M, R] of the catalog.
        rows: [B] the catalog row of each example's movie.
    Returns: scalar float32, the mean cross-entropy over the batch.
    """
    logits = tf.matmul(user_rank / temperature, catalog_rank, transpose_b=True)  # [B, M]
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=rows, logits=logits))


def _folded(user_rank, movie_rank, log_q, temperature, movie_ids, groups, group_size):
    """Groups of ``[u / T, 1]`` and ``[m, -log q]`` ([N, G, R+1]) and ids ([N, G]): 1/T and the logQ
    correction folded into the product, so neither costs a pass over the [G, G] logits."""
    user_rank = tf.concat([user_rank / temperature, tf.ones_like(user_rank[:, :1])], axis=-1)
    movie_rank = tf.concat([movie_rank, -log_q[:, None]], axis=-1)
    width = user_rank.shape[-1]
    return (tf.reshape(user_rank, [groups, group_size, width]), tf.reshape(movie_rank, [groups, group_size, width]),
            tf.reshape(movie_ids, [groups, group_size]))


_MASKED = -1e9  # the logit of a movie that is not a negative: exp underflows to exactly 0


def _softmax_block(user_rank, movie_rank, movie_ids, valid=None):
    """Mean in-group softmax cross-entropy over the groups' real examples: ``user_rank`` [N, G, R+1]
    ``[u / T, 1]``, ``movie_rank`` [N, G, R+1] ``[m, -log q]``, ids [N, G]; ``valid`` [N, G] bool
    (None: no padding)."""
    logits = tf.matmul(user_rank, movie_rank, transpose_b=True)  # [N, G, G]: <u, m> / T - log q_m
    # the same movie elsewhere in the group is not a negative for this user
    others = tf.logical_not(tf.eye(tf.shape(user_rank)[1], dtype=tf.bool))[None]
    masked = tf.equal(movie_ids[:, :, None], movie_ids[:, None, :]) & others
    logits = tf.where(masked, tf.constant(_MASKED, logits.dtype), logits)
    labels = tf.broadcast_to(tf.range(tf.shape(user_rank)[1])[None], tf.shape(movie_ids))
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # [N, G]
    if valid is None:
        return tf.reduce_mean(loss)
    weights = tf.cast(valid, loss.dtype)
    return tf.reduce_sum(loss * weights) / tf.reduce_sum(weights)
