"""NeuMF (``model.kind: neumf``): neural matrix factorisation, GMF and an MLP fused (He et al., WWW 2017).

    logit(user, movie) = h . [p_u * q_m, MLP([p'_u, q'_m])] + b

``p_u, q_m`` (GMF) and ``p'_u, q'_m`` (MLP) are id embeddings of width ``model.neumf.factors``;
the MLP is ``model.neumf.mlp_layers`` ReLU layers over ``[p'_u, q'_m]``; ``h, b`` is the final
dense layer over the concatenated GMF and MLP outputs. The score is the logit (the model's
log-odds that the user watches the movie); it is not a rating.

Training (the paper's log loss with uniform negative sampling): every training rating at or
above ``model.neumf.positive_min_rating`` is an implicit positive with label 1, and
``model.neumf.negatives`` movies drawn uniformly from the catalog for it get label 0; the loss
is the mean log loss over those ``1 + negatives`` instances, plus L2 (``model.neumf.l2``) on the
embedding rows the batch looks up. Time and memory are linear in the batch (B x negatives pairs,
no B x B block). It ranks but does not predict ratings, so it is selected on validation NDCG@10.

The score is not an inner product (``factorised = False``), so the model gives a pair scorer
(:meth:`NeuMF.pair_scores`) and is served and evaluated by re-ranking (recsys/reranking.py). Its
factorised vectors are the GMF half with ``h``'s GMF weights folded into the user side: rank =
score = ``p_u * h_gmf`` and ``q_m``, whose inner product is the GMF part of the logit (the
candidate retriever); similarity = ``q_m`` (movie-to-movie cosine).

Cold start: an id the model never trained on (the vocabulary's OOV or padding id) gets zero
embeddings, as in BPR-MF: a new user's list is what the MLP and the bias make of the movie
embeddings alone, and a new movie scores the same for every user's GMF half.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.features import FIRST_ID  # noqa: E402
from recsys.models.contract import NDCG, IdModel, f32  # noqa: E402

# Embeddings start at N(0, 0.01^2), the NCF paper's initialisation.
EMBEDDING_INIT_STDDEV = 0.01


class MLP(keras.layers.Layer):
    """ReLU dense layers of the given widths over the last axis: [..., D] -> [..., widths[-1]]."""

    def __init__(self, widths: list[int], name: str):
        super().__init__(name=name)
        self.hidden = [keras.layers.Dense(w, activation="relu", name=f"hidden_{i}") for i, w in enumerate(widths)]

    def call(self, x):
        for layer in self.hidden:
            x = layer(x)
        return x


class NeuMF(IdModel):
    """GMF + MLP over user and movie ids, fused by one dense layer; see the module docstring."""

    kind = "neumf"
    label = "NeuMF"
    rates = False
    factorised = False
    default_validation_metric = NDCG
    shape_keys = ("kind", "neumf.factors", "neumf.mlp_layers")

    @classmethod
    def vector_widths(cls, cfg) -> dict[str, int]:
        """score = rank ``p_u * h_gmf`` / ``q_m`` F; similarity ``q_m`` F."""
        f = cfg.neumf.factors
        return {"score": f, "rank": f, "similarity": f}

    def __init__(self, spec: dict, stats: dict, cfg):
        super().__init__(spec, stats, cfg)
        n = cfg.neumf
        self.movie_vocab = self.feature_defs["movie_id"]["vocab_size"]
        user_vocab = self.feature_defs["user_id"]["vocab_size"]

        def embedding(vocab, name):
            return keras.layers.Embedding(vocab, n.factors, name=name,
                                          embeddings_initializer=keras.initializers.RandomNormal(
                                              stddev=EMBEDDING_INIT_STDDEV))

        self.user_gmf, self.movie_gmf = embedding(user_vocab, "user_gmf"), embedding(self.movie_vocab, "movie_gmf")
        self.user_mlp, self.movie_mlp = embedding(user_vocab, "user_mlp"), embedding(self.movie_vocab, "movie_mlp")
        self.mlp = MLP(n.mlp_layers, name="mlp")
        self.fusion = keras.layers.Dense(1, name="fusion")  # h and b over [GMF F, MLP last width]

    def _user(self, ids):
        """(p_u, p'_u) [..., F] each."""
        known = self.known(ids)[..., None]  # [..., 1]
        return f32(self.user_gmf(ids)) * known, f32(self.user_mlp(ids)) * known

    def _movie(self, ids):
        """(q_m, q'_m) [..., F] each."""
        known = self.known(ids)[..., None]  # [..., 1]
        return f32(self.movie_gmf(ids)) * known, f32(self.movie_mlp(ids)) * known

    def _logit(self, p, p_mlp, q, q_mlp):
        """[...] the fused logit of (user, movie) embeddings broadcast to the same leading shape [..., F]."""
        mlp = f32(self.mlp(tf.concat([p_mlp, q_mlp], axis=-1)))
        fused = tf.concat([p * q, mlp], axis=-1)  # [..., F + last MLP width]
        return tf.squeeze(f32(self.fusion(fused)), axis=-1)

    def pair_scores(self, x, training=False):
        """[B] float32 logit of each (user_id, movie_id) pair of the batch."""
        p, p_mlp = self._user(x["user_id"])
        q, q_mlp = self._movie(x["movie_id"])
        return self._logit(p, p_mlp, q, q_mlp)

    def user_vectors(self, x, training=False):
        """score = rank = ``p_u * h_gmf`` [B, F]: the retriever's user side (GMF half of the logit)."""
        p, _ = self._user(x["user_id"])
        h_gmf = tf.cast(self.fusion.kernel[:self.cfg.neumf.factors, 0], tf.float32)  # [F]
        v = p * h_gmf[None, :]
        return {"score": v, "rank": v}

    def movie_vectors(self, x, training=False):
        """score = rank = similarity = ``q_m`` [B, F]."""
        q, _ = self._movie(x["movie_id"])
        return {"score": q, "rank": q, "similarity": q}

    def build_variables(self) -> None:
        """The fusion layer first (the user vectors read its kernel), then the vectors."""
        x = self.dummy_inputs()
        self.pair_scores(x)
        self.user_vectors(x)
        self.movie_vectors(x)

    def divergence_knobs(self) -> list[str]:
        return [f"model.neumf.l2 ({self.cfg.neumf.l2:g})"]

    def named_losses(self, x, y):
        """log_loss: mean over positives of the mean log loss of the positive (label 1) and its
        ``negatives`` sampled movies (label 0); l2: on the embedding rows looked up."""
        cfg = self.cfg.neumf
        users, pos = x["user_id"], x["movie_id"]
        weight = tf.cast(f32(y) >= cfg.positive_min_rating, tf.float32)  # [B] 1 for positives
        neg = tf.random.uniform([tf.shape(pos)[0], cfg.negatives], FIRST_ID, self.movie_vocab, dtype=pos.dtype)
        p, p_mlp = self._user(users)  # [B, F]
        q_i, q_mlp_i = self._movie(pos)  # [B, F]
        q_j, q_mlp_j = self._movie(neg)  # [B, N, F]
        x_ui = self._logit(p, p_mlp, q_i, q_mlp_i)  # [B]
        shape = tf.shape(q_j)
        p_j, p_mlp_j = tf.broadcast_to(p[:, None], shape), tf.broadcast_to(p_mlp[:, None], shape)  # [B, N, F]
        x_uj = self._logit(p_j, p_mlp_j, q_j, q_mlp_j)  # [B, N]
        per_positive = (tf.nn.softplus(-x_ui) + tf.reduce_sum(tf.nn.softplus(x_uj), -1)) / (1.0 + cfg.negatives)
        count = tf.maximum(tf.reduce_sum(weight), 1.0)

        def sq(t):
            return tf.reduce_sum(tf.square(t), -1)

        norms = sq(p) + sq(p_mlp) + sq(q_i) + sq(q_mlp_i) + tf.reduce_mean(sq(q_j) + sq(q_mlp_j), -1)
        return {"log_loss": tf.reduce_sum(weight * per_positive) / count,
                "l2": cfg.l2 * tf.reduce_sum(weight * norms) / count}
