"""BPR-MF (``model.kind: bpr``): matrix factorisation trained by Bayesian Personalised Ranking.

    score(user, movie) = <u, m> + b_m = <[u, 1], [m, b_m]>

``u`` and ``m`` are id embeddings of width ``model.bpr.factors``, ``b_m`` a per-movie bias.
The loss (Rendle et al., UAI 2009) treats every training rating at or above
``model.bpr.positive_min_rating`` as an implicit positive and, for each, draws
``model.bpr.negatives`` movies uniformly from the catalog as negatives:
``-log sigmoid(score(u, i) - score(u, j))``, plus L2 on the rows the batch looks up. Time and
memory are linear in the batch (B x negatives gathers, no B x B block). It ranks but does not
predict ratings, so it is selected on validation NDCG@10.

Cold start: an id the model never trained on (the vocabulary's OOV or padding id) gets the
zero vector, so a new user's list is the movie biases (a learnt popularity order) and a new
movie scores ``b_OOV = 0`` with no similar movies to speak of.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.features import FIRST_ID  # noqa: E402
from recsys.models.contract import NDCG, IdModel, biased_movie_vectors, biased_user_vectors, f32  # noqa: E402


class BPRMF(IdModel):
    """User and movie factors plus a movie bias; see the module docstring."""

    kind = "bpr"
    label = "BPR-MF"
    rates = False
    default_validation_metric = NDCG
    shape_keys = ("kind", "bpr.factors")

    @classmethod
    def vector_widths(cls, cfg) -> dict[str, int]:
        """score = rank ``[u, 1]`` / ``[m, b_m]`` F+1; similarity ``m`` F."""
        return {"score": cfg.bpr.factors + 1, "rank": cfg.bpr.factors + 1, "similarity": cfg.bpr.factors}

    def __init__(self, spec: dict, stats: dict, cfg):
        super().__init__(spec, stats, cfg)
        b = cfg.bpr
        self.movie_vocab = self.feature_defs["movie_id"]["vocab_size"]
        self.user_factors = keras.layers.Embedding(self.feature_defs["user_id"]["vocab_size"], b.factors,
                                                   embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1), name="user_factors")
        self.movie_factors = keras.layers.Embedding(self.movie_vocab, b.factors, name="movie_factors",
                                                    embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1))
        self.movie_bias = keras.layers.Embedding(self.movie_vocab, 1, embeddings_initializer="zeros",
                                                 name="movie_bias")

    def _user(self, ids):
        return f32(self.user_factors(ids)) * self.known(ids)[:, None]

    def _movie(self, ids):
        known = self.known(ids)
        return f32(self.movie_factors(ids)) * known[..., None], f32(tf.squeeze(self.movie_bias(ids), -1)) * known

    def user_vectors(self, x, training=False):
        """score = rank = ``[u, 1]`` [B, F+1]."""
        return biased_user_vectors(self._user(x["user_id"]))

    def movie_vectors(self, x, training=False):
        """score = rank = ``[m, b_m]`` [B, F+1]; similarity ``m``."""
        return biased_movie_vectors(*self._movie(x["movie_id"]))

    def divergence_knobs(self) -> list[str]:
        return [f"model.bpr.l2 ({self.cfg.bpr.l2:g})"]

    def named_losses(self, x, y):
        """bpr: mean over positives of mean over negatives of softplus(-(x_ui - x_uj)); l2: on the looked-up rows."""
        cfg = self.cfg.bpr
        users, pos = x["user_id"], x["movie_id"]
        weight = tf.cast(f32(y) >= cfg.positive_min_rating, tf.float32)  # [B] 1 for positives
        neg = tf.random.uniform([tf.shape(pos)[0], cfg.negatives], FIRST_ID, self.movie_vocab, dtype=pos.dtype)
        u = self._user(users)  # [B, F]
        m_i, b_i = self._movie(pos)  # [B, F], [B]
        m_j, b_j = self._movie(neg)  # [B, N, F], [B, N]
        x_ui = tf.reduce_sum(u * m_i, -1) + b_i  # [B]
        x_uj = tf.einsum("bf,bnf->bn", u, m_j) + b_j  # [B, N]
        norms = (tf.reduce_sum(tf.square(u), -1) + tf.reduce_sum(tf.square(m_i), -1) + tf.square(b_i)
                 + tf.reduce_mean(tf.reduce_sum(tf.square(m_j), -1) + tf.square(b_j), -1))
        return bpr_losses(x_ui, x_uj, norms, weight, cfg.l2)


def bpr_losses(x_ui: tf.Tensor, x_uj: tf.Tensor, norms: tf.Tensor, weight: tf.Tensor, l2: float) -> dict:
    """BPR's two losses over the positives (``weight`` [B], 1 for a positive): ``bpr``, the mean over
    positives of the mean over negatives of softplus(-(x_ui - x_uj)) (``x_ui`` [B], ``x_uj`` [B, N]);
    ``l2``, ``l2`` times the mean over positives of ``norms`` [B] (the squared rows looked up)."""
    count = tf.maximum(tf.reduce_sum(weight), 1.0)
    pairwise = tf.reduce_mean(tf.nn.softplus(-(x_ui[:, None] - x_uj)), axis=-1)  # [B]
    return {"bpr": tf.reduce_sum(weight * pairwise) / count, "l2": l2 * tf.reduce_sum(weight * norms) / count}
