"""LightGCN (``model.kind: lightgcn``, He et al., SIGIR 2020): propagation over the rating graph.

    e^(k+1) = A_hat e^(k),   e = (e^(0) + e^(1) + ... + e^(K)) / (K + 1),   score = <e_u, e_m>

``e^(0)`` are user and movie id embeddings of width ``model.lightgcn.factors``; ``A_hat =
D^-1/2 A D^-1/2`` is the symmetrically normalised adjacency of the bipartite user-movie graph
of the training ratings at or above ``model.lightgcn.positive_min_rating`` (the prepared
``ratings_train`` table alone: validation and test ratings never enter the graph);
``K = model.lightgcn.layers``. The loss is BPR over ``model.lightgcn.negatives`` uniformly
drawn movies per positive, plus L2 (``model.lightgcn.l2``) on the layer-0 rows the batch
looks up, as in the paper. It ranks but does not predict ratings (validation NDCG@10).

**Serving.** The propagated tables ``e_u`` [user vocab, F] and ``e_m`` [movie vocab, F] are
non-trainable weights recomputed from ``e^(0)`` by :meth:`LightGCN.derive_weights` before
every validation and checkpoint, so the artifact serves without the graph: factorised, an
inner-product index serves it exactly. An id the model never trained on (OOV, padding) has
no edges and its row is zeroed: a new user's list carries no signal (ties), a new movie
scores 0.

**Under Horovod** every rank holds the whole training graph (propagation needs every edge, not
just the rank's shard of examples) and runs the same full propagation each step; the
gradient of ``e^(0)`` is dense ([users + movies, F], allreduced). Per rank the graph costs
20 bytes per directed edge (int64 row and column, float32 weight), two per rating: 800 MB at
20M training ratings (MovieLens-25M's 80% split), plus ``(K + 2) x (users + movies) x F x 4``
bytes of activations (about 0.3 GB there at F = 64, K = 3). A step then costs ``2 K`` sparse
products over 40M entries, forward and back: many hours per epoch on CPU. ``model.lightgcn.max_edges``
bounds it: a larger graph stops before training with one line saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.errors import ArtifactError  # noqa: E402
from recsys.features import FIRST_ID  # noqa: E402
from recsys.models.bpr import bpr_losses  # noqa: E402
from recsys.models.contract import NDCG, IdModel, f32  # noqa: E402

BYTES_PER_DIRECTED_EDGE = 20  # int64 row, int64 column, float32 weight


def normalised_adjacency(user_idx, movie_idx, user_vocab: int, movie_vocab: int):
    """(indices [2E, 2] int64, values [2E] float32) of ``D^-1/2 A D^-1/2`` over the nodes
    ``[users (user vocab), movies (movie vocab)]``, A the symmetric bipartite graph of the
    distinct (user, movie) pairs given; rows sorted (a canonical SparseTensor)."""
    pairs = np.unique(np.stack([np.asarray(user_idx, np.int64), np.asarray(movie_idx, np.int64)], 1), axis=0)
    u, m = pairs[:, 0], pairs[:, 1] + user_vocab
    degree = np.bincount(np.r_[u, m], minlength=user_vocab + movie_vocab).astype(np.float64)
    rows, cols = np.r_[u, m], np.r_[m, u]
    values = (1.0 / np.sqrt(degree[rows] * degree[cols])).astype(np.float32)
    order = np.lexsort((cols, rows))
    return np.stack([rows[order], cols[order]], 1), values[order]


class LightGCN(IdModel):
    """Layer-averaged propagation of id embeddings over the training graph; see the module docstring."""

    kind = "lightgcn"
    label = "LightGCN"
    rates = False
    default_validation_metric = NDCG
    shape_keys = ("kind", "lightgcn.factors")
    xla_unsupported = "its sparse graph products have no XLA kernel"

    @classmethod
    def vector_widths(cls, cfg) -> dict[str, int]:
        """score = rank = similarity: the propagated embeddings, width F."""
        f = cfg.lightgcn.factors
        return {"score": f, "rank": f, "similarity": f}

    def __init__(self, spec: dict, stats: dict, cfg):
        super().__init__(spec, stats, cfg)
        g = cfg.lightgcn
        self.user_vocab = self.feature_defs["user_id"]["vocab_size"]
        self.movie_vocab = self.feature_defs["movie_id"]["vocab_size"]
        self.user_embedding = keras.layers.Embedding(self.user_vocab, g.factors, name="user_embedding",
                                                     embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1))
        self.movie_embedding = keras.layers.Embedding(self.movie_vocab, g.factors, name="movie_embedding",
                                                      embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1))
        # the propagated tables the artifact serves (derive_weights)
        self.user_out = self.add_weight(name="user_propagated", shape=(self.user_vocab, g.factors),
                                        initializer="zeros", trainable=False)
        self.movie_out = self.add_weight(name="movie_propagated", shape=(self.movie_vocab, g.factors),
                                         initializer="zeros", trainable=False)
        self.adjacency = None  # tf.SparseTensor [users + movies, users + movies], set by prepare()

    def prepare(self, prepared: Path) -> None:
        from recsys.models.data import training_ratings

        g = self.cfg.lightgcn
        t = training_ratings(prepared, ["user_idx", "movie_idx", "rating"])
        keep = t["rating"] >= g.positive_min_rating
        edges = int(keep.sum())
        if edges > g.max_edges:
            raise ArtifactError(
                f"model.kind=lightgcn: the training graph has {edges:,} edges, above model.lightgcn.max_edges "
                f"({g.max_edges:,}); every rank would hold {2 * edges * BYTES_PER_DIRECTED_EDGE / 2**30:.1f} GiB "
                f"of graph and propagate over all of it every step (raise the limit, or pick another model.kind)")
        indices, values = normalised_adjacency(t["user_idx"][keep], t["movie_idx"][keep], self.user_vocab,
                                               self.movie_vocab)
        n = self.user_vocab + self.movie_vocab
        self.adjacency = tf.SparseTensor(indices, values, [n, n])

    def propagate(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(e_u [user vocab, F], e_m [movie vocab, F]): the layer average over the graph."""
        e = tf.concat([f32(self.user_embedding.embeddings), f32(self.movie_embedding.embeddings)], axis=0)
        total = e
        for _ in range(self.cfg.lightgcn.layers):
            e = tf.sparse.sparse_dense_matmul(self.adjacency, e)
            total = total + e
        total = total / float(self.cfg.lightgcn.layers + 1)
        return total[:self.user_vocab], total[self.user_vocab:]

    def derive_weights(self) -> None:
        """Recompute the served tables from the current embeddings (no graph: nothing to derive)."""
        if self.adjacency is None:
            return
        users, movies = self.propagate()
        self.user_out.assign(users)
        self.movie_out.assign(movies)

    def user_vectors(self, x, training=False):
        """score = rank = ``e_u`` [B, F] (zero for an id never trained on)."""
        ids = x["user_id"]
        v = tf.gather(self.user_out, ids) * self.known(ids)[:, None]
        return {"score": v, "rank": v}

    def movie_vectors(self, x, training=False):
        """score = rank = similarity = ``e_m`` [B, F]."""
        ids = x["movie_id"]
        v = tf.gather(self.movie_out, ids) * self.known(ids)[:, None]
        return {"score": v, "rank": v, "similarity": v}

    def build_variables(self) -> None:
        x = self.dummy_inputs()
        self.user_embedding(x["user_id"])
        self.movie_embedding(x["movie_id"])
        super().build_variables()

    def divergence_knobs(self) -> list[str]:
        return [f"model.lightgcn.l2 ({self.cfg.lightgcn.l2:g})"]

    def named_losses(self, x, y):
        """bpr: mean over positives of mean over negatives of softplus(-(x_ui - x_uj)) on the
        propagated embeddings; l2: on the layer-0 rows the batch looks up."""
        g = self.cfg.lightgcn
        users, pos = x["user_id"], x["movie_id"]
        weight = tf.cast(f32(y) >= g.positive_min_rating, tf.float32)  # [B] 1 for positives
        neg = tf.random.uniform([tf.shape(pos)[0], g.negatives], FIRST_ID, self.movie_vocab, dtype=pos.dtype)
        e_u, e_m = self.propagate()
        u, m_i, m_j = tf.gather(e_u, users), tf.gather(e_m, pos), tf.gather(e_m, neg)  # [B, F], [B, F], [B, N, F]
        x_ui = tf.reduce_sum(u * m_i, -1)  # [B]
        x_uj = tf.einsum("bf,bnf->bn", u, m_j)  # [B, N]
        u0 = f32(self.user_embedding(users))
        m0_i, m0_j = f32(self.movie_embedding(pos)), f32(self.movie_embedding(neg))
        norms = (tf.reduce_sum(tf.square(u0), -1) + tf.reduce_sum(tf.square(m0_i), -1)
                 + tf.reduce_mean(tf.reduce_sum(tf.square(m0_j), -1), -1))
        return bpr_losses(x_ui, x_uj, norms, weight, g.l2)
