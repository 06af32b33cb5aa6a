"""The item autoencoder: I-AutoRec (Sedhain et al., WWW 2015), a second rating predictor the
rating network blends into its served rating (``model.autoencoder``).

Each movie's column of training ratings ``r_m`` [user vocab] (0 where a user did not rate it)
is encoded by one sigmoid layer, ``h_m = sigmoid(V^T r_m + c)`` [K], and decoded back to every
user: ``A(u, m) = <W_u, h_m> + d_u``. The loss is the squared error on the observed ratings of
the column, plus ``l2 / 2 * (|V|^2 + |W|^2)`` once per epoch. A movie is known to it when it
has training ratings, a user when it rated a training movie; any other pair is not scored by it.

Why a second model: the rating network predicts from the towers' features and ids; the
autoencoder reads each movie's whole column of ratings, an item-based signal the towers do not
see. Its errors differ from the network's, so their blend is more accurate than either
(docs/architecture.md, levers table). It is fitted after the network (``fit``, called by the
model's ``finalize`` on rank 0 with the best network weights loaded), on the training split,
and the epoch and its share ``a`` of the served rating are chosen together on validation RMSE.

Tables (non-trainable weights, kept in the checkpoint so that serving needs no data): each
movie's latest ``raters`` training raters and their ratings, [movie vocab, raters] (0-padded),
and a 0/1 flag per user id. Memory of a forward pass: its ratings x K floats (the gathered rows
of V), bounded by ``movies_per_step`` x ``raters`` x K in training.
"""

from __future__ import annotations

import os
import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.models.blend import FittedBlend  # noqa: E402

RATER_PAD = 0  # padding in the raters table: the user vocabulary's padding id, never a rater


def movie_raters_table(user_idx, movie_idx, rating, timestamp, movie_vocab: int, length: int):
    """([movie vocab, length] int32 rater ids, [movie vocab, length] float32 ratings): each
    movie's latest ``length`` training raters (latest first), 0-padded. Ratings of the unknown
    (OOV) user or movie id are left out: that id stands for many, and is served as cold.

    Args: parallel arrays of the training ratings (encoded ids, stars, unix seconds).
    """
    from recsys.features import FIRST_ID
    from recsys.models.data import latest_first

    raters = np.full((movie_vocab, length), RATER_PAD, np.int32)
    ratings = np.zeros((movie_vocab, length), np.float32)
    user_idx, movie_idx, rating, timestamp = (np.asarray(a) for a in (user_idx, movie_idx, rating, timestamp))
    named = (user_idx >= FIRST_ID) & (movie_idx >= FIRST_ID)
    user_idx, movie_idx, rating, timestamp = user_idx[named], movie_idx[named], rating[named], timestamp[named]
    order, position, keep = latest_first(movie_idx, timestamp, length)  # by movie, latest first
    cells = (movie_idx[order][keep], position[keep])
    raters[cells] = user_idx[order][keep]
    ratings[cells] = rating.astype(np.float32)[order][keep]
    return raters, ratings


class ItemAutoencoder(FittedBlend):
    """I-AutoRec over the movie columns of the training ratings (module docstring).

    Args:
        user_vocab, movie_vocab: vocabulary sizes of the user and movie ids.
        cfg: the ``model.autoencoder`` config section (``units`` K > 0).
    """

    def __init__(self, user_vocab: int, movie_vocab: int, cfg, name: str = "item_autoencoder"):
        super().__init__(name=name)  # self.share: a, the autoencoder's share of the served rating
        self.cfg, k, length = cfg, cfg.units, cfg.raters
        self.raters = self.table("raters", (movie_vocab, length), dtype=tf.int32)
        self.ratings = self.table("ratings", (movie_vocab, length))
        self.user_known = self.table("user_known", (user_vocab,))
        # zeros until fit() draws them from its seed: no draw here, so the network's own initial
        # weights are those it gets without the autoencoder
        self.encoder = self.table("encoder", (user_vocab, k))  # V
        self.encoder_bias = self.table("encoder_bias", (k,))  # c
        self.decoder = self.table("decoder", (user_vocab, k))  # W
        self.decoder_bias = self.table("decoder_bias", (user_vocab,))  # d

    @property
    def fitted_variables(self) -> list[tf.Variable]:
        return [self.encoder, self.encoder_bias, self.decoder, self.decoder_bias]

    def set_tables(self, raters: np.ndarray, ratings: np.ndarray) -> None:
        """Load the [movie vocab, raters] tables (``movie_raters_table``); a user is known when
        it appears in them.

        Raises:
            ConfigError: above ``max_ratings`` ratings in the tables (one pass may gather them all).
        """
        from recsys.errors import ConfigError

        held = int((raters != RATER_PAD).sum())
        if held > self.cfg.max_ratings:
            raise ConfigError(f"model.autoencoder: the training split gives its tables {held:,} ratings, above "
                              f"model.autoencoder.max_ratings ({self.cfg.max_ratings:,}); a pass over the movies "
                              f"gathers up to that many x {self.cfg.units} floats. Lower model.autoencoder.raters, "
                              f"raise the limit, or set model.autoencoder.units=0")
        self.raters.assign(raters)
        self.ratings.assign(ratings)
        known = np.zeros(self.user_known.shape[0], np.float32)
        known[raters[raters != RATER_PAD]] = 1.0
        self.user_known.assign(known)

    def movie_codes(self, movie_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(h [B, K], known [B] float 0/1) for encoded movie ids [B]; h = sigmoid(V^T r_m + c).

        Each distinct movie is encoded once and gathered back: a batch of pairs repeats popular
        movies, whose columns are the longest."""
        unique, index = tf.unique(movie_ids)
        h, _, _, _ = self._encode(unique)
        known = tf.reduce_any(tf.not_equal(tf.gather(self.raters, unique), RATER_PAD), axis=1)
        return tf.gather(h, index), tf.gather(tf.cast(known, tf.float32), index)

    def user_codes(self, user_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(W_u [B, K], d_u [B], known [B] float 0/1) for encoded user ids [B]."""
        return (tf.gather(self.decoder, user_ids), tf.gather(self.decoder_bias, user_ids),
                tf.gather(self.user_known, user_ids))

    def _encode(self, movie_ids):
        """h [B, K] and the observed entries of the B columns: (row [N], user id [N], rating [N]).
        Only the N observed ratings are gathered from V: memory N x K, not B x raters x K."""
        raters = tf.gather(self.raters, movie_ids)  # [B, L]
        where = tf.where(tf.not_equal(raters, RATER_PAD))  # [N, 2]
        row, user = tf.cast(where[:, 0], tf.int32), tf.gather_nd(raters, where)
        value = tf.gather_nd(tf.gather(self.ratings, movie_ids), where)
        summed = tf.math.unsorted_segment_sum(tf.gather(self.encoder, user) * value[:, None], row,
                                              tf.shape(movie_ids)[0])
        return tf.sigmoid(summed + self.encoder_bias), row, user, value

    def predict(self, user_ids: np.ndarray, movie_ids: np.ndarray, block: int) -> np.ndarray:
        """A(u, m) [N] for parallel encoded ids (meaningful for known pairs only): every movie's
        code computed once, ``block`` movies at a time ([movie vocab, K] floats), then the pairs
        ``block`` at a time."""
        vocab = self.raters.shape[0]
        codes = np.concatenate([self._encode(tf.range(s, min(s + block, vocab)))[0].numpy()
                                for s in range(0, vocab, block)])
        w, d = self.decoder.numpy(), self.decoder_bias.numpy()
        return np.concatenate([np.einsum("nk,nk->n", w[user_ids[s:s + block]], codes[movie_ids[s:s + block]])
                               + d[user_ids[s:s + block]] for s in range(0, len(user_ids), block)] or [np.zeros(0)])

    def fit(self, valid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
            scale: tuple[float, float], seed: int, log) -> dict:
        """Train V, c, W, d on the tables, then keep the epoch and share ``a`` (of ``cfg.share_grid``)
        whose blend ``N + a (A - N)`` has the lowest validation RMSE; ``a`` 0 (the network alone)
        when none beats it. Validation every ``cfg.validate_every`` epochs.

        Args:
            valid: (user ids [V], movie ids [V], ratings [V], network predictions N [V]) of the
                validation ratings; only known pairs are blended.
            scale: (min, max) rating, predictions are clipped to it as the evaluation does.
        Returns: the choice, for model.json.
        """
        cfg = self.cfg
        tf.random.set_seed(seed)
        # reproducible for a fixed seed; V and W start from the same draw (as a tied-weight
        # autoencoder does): their gradients differ from the first step
        for var in (self.encoder, self.decoder):
            var.assign(keras.initializers.GlorotUniform(seed=seed)(var.shape))
        for var in (self.encoder_bias, self.decoder_bias):
            var.assign(tf.zeros_like(var))
        movies = np.flatnonzero(np.any(self.raters.numpy() != RATER_PAD, axis=1)).astype(np.int32)
        batches = max(1, len(movies) // cfg.movies_per_step)
        share_of_epoch = 1.0 / batches  # each step carries its share of the epoch's L2
        optimizer = keras.optimizers.Adam(cfg.learning_rate)
        variables = self.fitted_variables

        @tf.function
        def step(ids):
            with tf.GradientTape() as tape:
                tape.watch(variables)
                h, row, user, value = self._encode(ids)
                pred = tf.reduce_sum(tf.gather(self.decoder, user) * tf.gather(h, row), axis=-1) + \
                    tf.gather(self.decoder_bias, user)
                penalty = tf.reduce_sum(tf.square(self.encoder)) + tf.reduce_sum(tf.square(self.decoder))
                loss = tf.reduce_sum(tf.square(pred - value)) + share_of_epoch * cfg.l2 / 2 * penalty
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

        users, movie_ids, y, network = valid
        lo, hi = scale
        known = np.any(self.raters.numpy()[movie_ids] != RATER_PAD, axis=1) & (self.user_known.numpy()[users] > 0)
        rmse = lambda p: float(np.sqrt(np.mean((np.clip(p, lo, hi) - y) ** 2)))  # noqa: E731
        best = {"share": 0.0, "epoch": 0, "valid_rmse": rmse(network), "network_valid_rmse": rmse(network)}
        kept = [v.numpy() for v in variables]
        rng = np.random.default_rng(seed)
        log(f"item autoencoder: {len(movies):,} movies, {cfg.units} units, l2 {cfg.l2:g}, up to {cfg.epochs} "
            f"epochs; network alone: validation rmse {best['valid_rmse']:.4f}")
        for epoch in range(1, cfg.epochs + 1):
            for ids in np.array_split(rng.permutation(movies), batches):
                step(tf.constant(ids))
            if epoch % cfg.validate_every and epoch != cfg.epochs:
                continue
            auto = self.predict(users, movie_ids, cfg.movies_per_step)
            scores = {a: rmse(np.where(known, network + a * (auto - network), network)) for a in cfg.share_grid}
            a = min(scores, key=scores.get)
            log(f"item autoencoder epoch {epoch}: validation rmse {rmse(np.where(known, auto, network)):.4f} "
                f"alone, {scores[a]:.4f} blended with share {a:g}")
            if scores[a] < best["valid_rmse"]:
                best.update(share=float(a), epoch=epoch, valid_rmse=scores[a])
                kept = [v.numpy() for v in variables]
        for var, value in zip(variables, kept):
            var.assign(value)
        self.share.assign(best["share"])
        log(f"item autoencoder: kept epoch {best['epoch']}, share {best['share']:g} (validation rmse "
            f"{best['valid_rmse']:.4f}, network alone {best['network_valid_rmse']:.4f})")
        return best
