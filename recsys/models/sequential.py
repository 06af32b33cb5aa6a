"""A sequential model (``model.kind: sequential``): a GRU over the user's time-ordered history.

    score(user, movie) = <u, m> + b_m = <[u, 1], [m, b_m]>,   u = W GRU(h_1, ..., h_n) + c

``h_1..h_n`` are embeddings of the movies the user rated, oldest first (at most
``model.sequential.history_length`` of them), after a start token (the movie vocabulary's OOV
id, which no training movie has), so no sequence is empty. ``m`` and ``b_m`` are a movie
embedding and bias. The model is GRU4Rec-style next-item prediction (Hidasi et al., ICLR
2016; the seed work's LSTM over the rating history): each training rating is a positive
predicted from the ratings its user made strictly before it, by the in-batch softmax with
logQ correction (:func:`recsys.models.rating_network.retrieval_loss`).

**No look-ahead.** Histories come from the prepared ``ratings_train`` table alone (the
training split; validation and test ratings never enter). A training example ``(u, m, t)``
sees only u's training ratings with a timestamp strictly before ``t`` (ratings of the same
second are not "before": a tie never leaks), looked up in the graph by the pair (prepare
keeps one rating per pair). Served and evaluated user vectors read the user's latest
``history_length`` training ratings: the state after the whole training period. On the
temporal split (``prepare.split.strategy: temporal``: per user, training ratings, then the
validation ratings, then the test ratings, in time) the test is next-items prediction after a
gap, the validation period, whose ratings no history holds.

Memory: the serving table [user vocab, L+1] int32 travels in the checkpoint (a non-trainable
weight); the training lookup holds 16 bytes per training rating on every rank (a sorted
int64 pair key, an int32 history end, the int32 time-ordered movie sequence): 320 MB at 20M
training ratings. A new user has only the start token: the list is the movie biases plus
``<W GRU(start) + c, m>``, a learnt popularity order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.features import OOV_ID, PAD_ID  # noqa: E402
from recsys.models.contract import NDCG, IdModel, biased_movie_vectors, biased_user_vectors, f32  # noqa: E402

START = OOV_ID  # the start token of every sequence: no training movie has the OOV id


def time_ordered_histories(user_idx, movie_idx, timestamp, user_vocab: int, movie_vocab: int):
    """The training lookup, from parallel arrays of the training ratings (encoded ids, unix seconds).

    Returns a dict of numpy arrays:
        sequence [N] int32: every rating's movie, by user then time (ties by movie id);
        user_end [user vocab + 1] int64: user u's ratings are ``sequence[user_end[u]:user_end[u + 1]]``;
        keys [N] int64: the sorted pair keys ``user * movie_vocab + movie``;
        cut [N] int32: for ``keys[i]``'s rating, the end (exclusive, in ``sequence``) of the ratings
        its user made strictly before it: the ratings of the same second are left out.
    """
    user = np.asarray(user_idx, np.int64)
    movie = np.asarray(movie_idx, np.int64)
    ts = np.asarray(timestamp, np.int64)
    order = np.lexsort((movie, ts, user))  # by user, then time, then movie
    user, movie, ts = user[order], movie[order], ts[order]
    n = len(user)
    # the first position of each (user, second) run: everything before it is strictly earlier
    new_run = np.ones(n, bool)
    new_run[1:] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    keys = user * movie_vocab + movie
    by_key = np.argsort(keys, kind="stable")
    counts = np.bincount(user, minlength=user_vocab)
    return {"sequence": movie.astype(np.int32), "user_end": np.r_[0, np.cumsum(counts)].astype(np.int64),
            "keys": keys[by_key], "cut": run_start[by_key].astype(np.int32)}


class SequentialGRU(IdModel):
    """GRU over the user's time-ordered training movies; see the module docstring."""

    kind = "sequential"
    label = "sequential GRU"
    rates = False
    default_validation_metric = NDCG
    shape_keys = ("kind", "sequential.history_length", "sequential.embedding_dim", "sequential.units")

    @classmethod
    def vector_widths(cls, cfg) -> dict[str, int]:
        """score = rank ``[u, 1]`` / ``[m, b_m]`` E+1; similarity ``m`` E."""
        e = cfg.sequential.embedding_dim
        return {"score": e + 1, "rank": e + 1, "similarity": e}

    def __init__(self, spec: dict, stats: dict, cfg):
        super().__init__(spec, stats, cfg)
        s = cfg.sequential
        self.length = s.history_length + 1  # the start token first
        self.user_vocab = self.feature_defs["user_id"]["vocab_size"]
        self.movie_vocab = self.feature_defs["movie_id"]["vocab_size"]
        reg = keras.regularizers.l2(s.l2) if s.l2 > 0 else None
        self.movie_embedding = keras.layers.Embedding(self.movie_vocab, s.embedding_dim, embeddings_regularizer=reg,
                                                      name="movie_embedding")
        self.movie_bias = keras.layers.Embedding(self.movie_vocab, 1, embeddings_initializer="zeros",
                                                 name="movie_bias")
        self.input_embedding = keras.layers.Embedding(self.movie_vocab, s.embedding_dim, embeddings_regularizer=reg,
                                                      name="input_embedding")
        self.gru = keras.layers.GRU(s.units, name="gru")
        self.dropout = keras.layers.Dropout(s.dropout)
        self.project = keras.layers.Dense(s.embedding_dim, kernel_regularizer=reg, name="project")
        # the served histories: [user vocab, L + 1] encoded movie ids, start token first, then the
        # user's latest L training movies oldest first, right-padded (a checkpointed constant)
        self.history = self.add_weight(name="user_history", shape=(self.user_vocab, self.length), dtype=tf.int32,
                                       initializer="zeros", trainable=False)
        self.lookup = None  # the training lookup (time_ordered_histories), set by prepare()
        self.log_q = None

    def prepare(self, prepared: Path) -> None:
        from recsys.models.data import movie_log_sampling_probability, training_ratings

        t = training_ratings(prepared, ["user_idx", "movie_idx", "timestamp"])
        lookup = time_ordered_histories(t["user_idx"], t["movie_idx"], t["timestamp"], self.user_vocab, self.movie_vocab)
        self.lookup = {k: tf.constant(v) for k, v in lookup.items()}
        users = np.arange(self.user_vocab, dtype=np.int64)
        self.history.assign(self.histories(tf.constant(users), tf.constant(lookup["user_end"][1:])))
        self.log_q = tf.constant(movie_log_sampling_probability(prepared, self.spec["features"], t["movie_idx"]),
                                 tf.float32)

    def histories(self, users: tf.Tensor, ends: tf.Tensor) -> tf.Tensor:
        """[B, L + 1] int32: the start token, then user ``users[b]``'s training movies in
        ``sequence[.. : ends[b]]``, the latest L of them oldest first, right-padded."""
        seq, user_end = self.lookup["sequence"], self.lookup["user_end"]
        start = tf.gather(user_end, users)
        n = tf.minimum(ends - start, self.length - 1)  # [B] movies kept
        pos = tf.range(self.length - 1, dtype=tf.int64)[None]  # [1, L]
        idx = (ends - n)[:, None] + pos
        keep = pos < n[:, None]
        movies = tf.where(keep, tf.gather(seq, tf.where(keep, idx, 0)), PAD_ID)
        return tf.concat([tf.fill([tf.shape(users)[0], 1], START), tf.cast(movies, tf.int32)], axis=1)

    def training_ends(self, users: tf.Tensor, movies: tf.Tensor) -> tf.Tensor:
        """[B] int64: for each training pair (user, movie), the end in ``sequence`` of the ratings its
        user made strictly before it (a pair missing from the table, never for prepared shards, gets
        the empty history)."""
        keys, cut = self.lookup["keys"], self.lookup["cut"]
        key = users * self.movie_vocab + movies
        pos = tf.minimum(tf.searchsorted(keys, key, out_type=tf.int64), tf.size(keys, out_type=tf.int64) - 1)
        found = tf.equal(tf.gather(keys, pos), key)
        return tf.where(found, tf.cast(tf.gather(cut, pos), tf.int64), tf.gather(self.lookup["user_end"], users))

    def _user_from_history(self, history: tf.Tensor, training: bool) -> tf.Tensor:
        """u [B, E] from histories [B, L + 1] (start token first, right-padded)."""
        # the start token's step always runs (a table not yet loaded is all padding: no empty sequence for cuDNN)
        mask = tf.not_equal(history, PAD_ID) | (tf.range(tf.shape(history)[1]) == 0)[None]
        state = self.gru(self.dropout(self.input_embedding(history), training=training), mask=mask, training=training)
        return f32(self.project(state))

    def _movie(self, ids):
        known = self.known(ids)
        return f32(self.movie_embedding(ids)) * known[..., None], f32(tf.squeeze(self.movie_bias(ids), -1)) * known

    def user_vectors(self, x, training=False):
        """score = rank ``[u, 1]`` [B, E+1], u from the user's latest training movies."""
        return biased_user_vectors(self._user_from_history(tf.gather(self.history, x["user_id"]), training))

    def movie_vectors(self, x, training=False):
        """score = rank ``[m, b_m]`` [B, E+1]; similarity ``m``."""
        return biased_movie_vectors(*self._movie(x["movie_id"]))

    def divergence_knobs(self) -> list[str]:
        s = self.cfg.sequential
        return [f"model.sequential.temperature ({s.temperature:g})", f"model.sequential.l2 ({s.l2:g})"]

    def named_losses(self, x, y):
        """next_item: the in-batch softmax (logQ-corrected) of each rating's movie given the user's
        strictly earlier training ratings; regularization: the embeddings' L2."""
        from recsys.models.rating_network import retrieval_loss

        s = self.cfg.sequential
        users, movies = x["user_id"], x["movie_id"]
        u = self._user_from_history(self.histories(users, self.training_ends(users, movies)), training=True)
        user_rank, movie_rank = biased_user_vectors(u)["rank"], biased_movie_vectors(*self._movie(movies))["rank"]
        out = {"next_item": retrieval_loss(user_rank, movie_rank, movies, tf.gather(self.log_q, movies),
                                           s.temperature, s.group_size)}
        if self.losses:
            out["regularization"] = tf.add_n([f32(t) for t in self.losses])
        return out
