"""The history autoencoder: Mult-DAE (Liang et al., WWW 2018), a second top-k scorer the rating
network blends into its served rank vectors (``model.history_autoencoder``).

Each user's set of training movies ``x_u`` [movie vocab] (1 where the user rated the movie) is
L2-normalised, dropped out in training, encoded by one tanh layer, ``h_u = tanh(W_e^T x_u / |x_u|
+ c)`` [H], and decoded to a logit for every movie, ``D(u, m) = <h_u, W_m> + d_m``. The loss is
the multinomial log-likelihood of the user's movies under the softmax of those logits, plus
``l2 * (|W_e|^2 + |W|^2)`` every step.

Why a second model: the network's rank score comes from the towers' features, ids and (with the
FISM term) a pooled history; the autoencoder reads each user's whole history through a non-linear
code trained for exactly the top-k task. Their errors differ, so their blend ranks better than
either (docs/architecture.md, levers table).

Fit and choice (``fit``, called by the model's ``finalize`` on rank 0 with the best network
weights loaded): trained on the training split; every ``validate_every`` epochs each share ``b``
of ``share_grid`` is scored by the validation NDCG@10 of the served rank vectors. The epoch and
share with the best NDCG@10 are kept, ``b = 0`` (the network alone) when none beats it. Then,
as the report's top-k baselines are, it is refitted from the same seed for that many epochs on
the training and validation movies, and each user's code is computed from both.

Served as an exact inner product: the user's rank vector gains ``s k_u [h_u, 1]`` and the
movie's ``k_m [W_m - W_bar, d_m - d_bar]`` (bars: means over the training movies, so that a movie
it does not know, ``k_m = 0``, scores as its average one; ``k``: 1 for a user or movie with
training ratings, else 0). ``s = b * spread(network) / spread(autoencoder)``, the spreads being
the standard deviations of each user's centred rank scores over the catalog, so ``b`` is in units
of the network's own spread whatever its temperature.

Tables (non-trainable weights, kept in the checkpoint so that serving needs no data): the
encoder and decoder [movie vocab, H], each user's code [user vocab, H] and the known flags.
Memory of training: ``users_per_step`` x movie vocab floats per step (dense rows of the history).
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from recsys.models.blend import FittedBlend  # noqa: E402


def history_matrix(user_idx, movie_idx, user_vocab: int, movie_vocab: int):
    """Binary scipy CSR [user vocab, movie vocab] float32 of (encoded user, encoded movie) pairs,
    one entry per pair. Pairs with the unknown (OOV) user or movie id are left out: that id stands
    for many, and is served as cold."""
    import pandas as pd

    from recsys.evaluation import pair_matrix
    from recsys.features import FIRST_ID

    user_idx, movie_idx = np.asarray(user_idx, np.int64), np.asarray(movie_idx, np.int64)
    named = (user_idx >= FIRST_ID) & (movie_idx >= FIRST_ID)
    pairs = pd.DataFrame({"u": user_idx[named], "m": movie_idx[named]})
    return pair_matrix(pairs, user_vocab, movie_vocab).astype(np.float32)


class HistoryAutoencoder(FittedBlend):
    """Mult-DAE over the users' training histories (module docstring).

    Args:
        user_vocab, movie_vocab: vocabulary sizes of the user and movie ids.
        cfg: the ``model.history_autoencoder`` config section (``units`` H > 0).
    """

    def __init__(self, user_vocab: int, movie_vocab: int, cfg, name: str = "history_autoencoder"):
        super().__init__(name=name)  # self.share: s, the served part's scale (0: off)
        self.cfg, h = cfg, cfg.units
        self.encoder = self.table("encoder", (movie_vocab, h))  # W_e
        self.encoder_bias = self.table("encoder_bias", (h,))  # c
        self.decoder = self.table("decoder", (movie_vocab, h))  # W (served centred: W_m - W_bar)
        self.decoder_bias = self.table("decoder_bias", (movie_vocab,))  # d (served centred)
        self.codes = self.table("codes", (user_vocab, h))  # h_u of each known user
        self.user_known = self.table("user_known", (user_vocab,))
        self.movie_known = self.table("movie_known", (movie_vocab,))
        self.history = None  # the training split's [user vocab, movie vocab] CSR (set_history), for fit()

    @property
    def width(self) -> int:
        """Entries the blend adds to each rank vector: H + 1."""
        return self.cfg.units + 1

    def check_size(self, pairs: int) -> None:
        """Stop before training when the training split's ``pairs`` (user, movie) pairs (or
        ratings, an upper bound) are above ``max_ratings``.

        Raises:
            ConfigError: naming the key (fit holds the pairs, twice with validation, on rank 0).
        """
        from recsys.errors import ConfigError

        if pairs > self.cfg.max_ratings:
            raise ConfigError(f"model.history_autoencoder: the training split holds {pairs:,} (user, movie) "
                              f"pairs, above model.history_autoencoder.max_ratings ({self.cfg.max_ratings:,}); its fit "
                              f"holds them in memory and runs on rank 0 alone. Raise the limit, or set "
                              f"model.history_autoencoder.units=0")

    def set_history(self, history) -> None:
        """Keep the training split's binary [user vocab, movie vocab] CSR (``history_matrix``) for
        ``fit``, and flag the users and movies it holds as known (``check_size`` first)."""
        self.check_size(history.nnz)
        self.history = history
        self.user_known.assign((np.diff(history.indptr) > 0).astype(np.float32))
        self.movie_known.assign((np.bincount(history.indices, minlength=history.shape[1]) > 0).astype(np.float32))

    def user_part(self, user_ids: tf.Tensor) -> tf.Tensor:
        """[B, H+1] ``s k_u [h_u, 1]`` for encoded user ids [B] (zeros while the share is 0)."""
        if not self.blends:
            return tf.zeros([tf.shape(user_ids)[0], self.width], tf.float32)
        k = (self.share * tf.gather(self.user_known, user_ids))[:, None]
        return tf.concat([k * tf.gather(self.codes, user_ids), k], axis=-1)

    def movie_part(self, movie_ids: tf.Tensor) -> tf.Tensor:
        """[B, H+1] ``k_m [W_m, d_m]`` (centred at fit) for encoded movie ids [B] (zeros while the
        share is 0)."""
        if not self.blends:
            return tf.zeros([tf.shape(movie_ids)[0], self.width], tf.float32)
        k = tf.gather(self.movie_known, movie_ids)[:, None]
        return k * tf.concat([tf.gather(self.decoder, movie_ids), tf.gather(self.decoder_bias, movie_ids)[:, None]],
                             axis=-1)

    # ------------------------------------------------------------------ fitting (rank 0, numpy in, numpy out)

    def _encode(self, x: tf.Tensor, encoder, bias, rate: float = 0.0, seed=None) -> tf.Tensor:
        """h [B, H] for dense binary histories x [B, movie vocab]; dropout ``rate`` in training."""
        h = tf.nn.l2_normalize(x, axis=1)
        if rate > 0:
            h = tf.nn.experimental.stateless_dropout(h, rate, seed=seed)
        return tf.tanh(tf.matmul(h, encoder) + bias)

    def _train(self, history, epochs: int, seed: int, on_epoch=None) -> list[tf.Variable]:
        """Fit fresh encoder and decoder variables (drawn from ``seed``) on the CSR ``history``'s
        users with movies for ``epochs`` epochs; ``on_epoch(epoch, variables)`` every
        ``validate_every`` epochs and after the last. Returns the variables."""
        cfg = self.cfg
        movie_vocab = history.shape[1]
        init = keras.initializers.GlorotUniform(seed=seed)
        variables = [tf.Variable(init((movie_vocab, cfg.units))), tf.Variable(tf.zeros([cfg.units])),
                     tf.Variable(keras.initializers.GlorotUniform(seed=seed + 1)((movie_vocab, cfg.units))),
                     tf.Variable(tf.zeros([movie_vocab]))]
        optimizer = keras.optimizers.Adam(cfg.learning_rate)

        @tf.function
        def step(x, dropout_seed):
            with tf.GradientTape() as tape:
                encoder, bias, decoder, decoder_bias = variables
                logits = tf.matmul(self._encode(x, encoder, bias, cfg.dropout, dropout_seed), decoder,
                                   transpose_b=True) + decoder_bias
                loss = -tf.reduce_mean(tf.reduce_sum(tf.nn.log_softmax(logits) * x, axis=1))
                loss += cfg.l2 * (tf.reduce_sum(tf.square(encoder)) + tf.reduce_sum(tf.square(decoder)))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

        users = np.flatnonzero(np.diff(history.indptr) > 0)
        batches = max(1, len(users) // cfg.users_per_step)
        rng = np.random.default_rng(seed)
        count = 0
        for epoch in range(1, epochs + 1):
            for rows in np.array_split(rng.permutation(users), batches):
                count += 1
                step(tf.constant(history[rows].toarray()), tf.constant([seed, count], tf.int64))
            if on_epoch is not None and (epoch % cfg.validate_every == 0 or epoch == epochs):
                on_epoch(epoch, variables)
        return variables

    def _serve(self, history, variables, sample: np.ndarray) -> float:
        """Assign the served tables from ``variables``: every user's code from its row of
        ``history``, the decoder centred over the known movies. Returns the spread of the
        autoencoder's centred scores over the ``sample`` users: the standard deviation of
        ``D(u, m) - mean_m D(u, m)`` over the known movies."""
        encoder, bias, decoder, decoder_bias = (v.numpy() for v in variables)
        known = self.movie_known.numpy() > 0
        decoder = np.where(known[:, None], decoder - decoder[known].mean(axis=0), 0.0)
        decoder_bias = np.where(known, decoder_bias - decoder_bias[known].mean(), 0.0)
        block = self.cfg.users_per_step  # [users_per_step, movie vocab] dense rows at a time
        codes = np.concatenate([self._encode(tf.constant(history[s:s + block].toarray()), encoder, bias).numpy()
                                for s in range(0, history.shape[0], block)])
        codes *= (np.diff(history.indptr) > 0)[:, None]  # a user without movies keeps no code
        for var, value in ((self.encoder, encoder), (self.encoder_bias, bias), (self.decoder, decoder),
                           (self.decoder_bias, decoder_bias), (self.codes, codes)):
            var.assign(value.astype(np.float32))
        squares, count = 0.0, 0
        for s in range(0, len(sample), self.cfg.users_per_step):  # [users_per_step, known movies] at a time
            scores = codes[sample[s:s + self.cfg.users_per_step]].astype(np.float64) @ decoder[known].T \
                + decoder_bias[known]
            squares += float(np.square(scores - scores.mean(axis=1, keepdims=True)).sum())
            count += scores.size
        return float(np.sqrt(squares / max(count, 1)))

    def fit(self, valid_pairs: tuple[np.ndarray, np.ndarray], ranking, seed: int, log) -> dict:
        """Train on the training histories, keep the epoch and share ``b`` (of ``cfg.share_grid``)
        whose served rank vectors score the best validation NDCG@10 (``b`` 0, the network alone,
        when none beats it), then refit on training + validation histories (module docstring).

        Args:
            valid_pairs: (user ids [V], movie ids [V]) of the validation ratings, encoded.
            ranking: the served model's validation ranking; ``ranking.ndcg()`` is its NDCG@10
                and ``ranking.spread()`` the spread of the rank scores (the network's while the
                share is 0).
        Returns: the choice, for model.json: ``share`` b, ``epoch``, the validation NDCG@10 of the
            blend and of the network alone, and (when b > 0) the spreads and the served scale s.
        """
        cfg = self.cfg
        train = self.history
        self.share.assign(0.0)
        network = ranking.ndcg()
        spread = ranking.spread()
        users = np.flatnonzero(self.user_known.numpy() > 0)
        sample = np.sort(np.random.default_rng(seed).choice(users, min(len(users), cfg.spread_users), replace=False))
        best = {"share": 0.0, "epoch": 0, "valid_ndcg@10": network, "network_valid_ndcg@10": network}
        log(f"history autoencoder: {len(users):,} users, {train.nnz:,} training pairs, {cfg.units} units, up to "
            f"{cfg.epochs} epochs; network alone: validation ndcg@10 {network:.4f}")

        def on_epoch(epoch, variables):
            own = self._serve(train, variables, sample)
            scores = {}
            for b in cfg.share_grid:
                self.share.assign(b * spread / own)
                scores[b] = ranking.ndcg()
            self.share.assign(0.0)
            b = max(scores, key=scores.get)
            log(f"history autoencoder epoch {epoch}: validation ndcg@10 {scores[b]:.4f} with share {b:g}")
            if scores[b] > best["valid_ndcg@10"]:
                best.update(share=float(b), epoch=epoch)
                best["valid_ndcg@10"] = scores[b]

        self._train(train, cfg.epochs, seed, on_epoch)
        if best["share"] == 0:
            for var in (self.encoder, self.encoder_bias, self.decoder, self.decoder_bias, self.codes):
                var.assign(tf.zeros_like(var))  # no last-epoch entries left behind (a traced pass reads them)
            log(f"history autoencoder: no share beat the network alone (validation ndcg@10 {network:.4f}); off")
            return best
        # the refit: the same seed and epochs, the validation movies added to the histories
        extra = history_matrix(*valid_pairs, *train.shape)
        both = train + extra
        both.data[:] = 1.0
        own = self._serve(both, self._train(both, best["epoch"], seed), sample)
        self.share.assign(best["share"] * spread / own)
        # model.json: share is b; the served scale s = b * network_spread / autoencoder_spread
        best.update(network_spread=spread, autoencoder_spread=own, scale=float(self.share.numpy()))
        log(f"history autoencoder: kept epoch {best['epoch']}, share {best['share']:g} (validation ndcg@10 "
            f"{best['valid_ndcg@10']:.4f}, network alone {network:.4f}); refitted on train + validation")
        return best
