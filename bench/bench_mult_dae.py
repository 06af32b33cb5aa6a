#!/usr/bin/env python
"""Mult-DAE (Liang et al., WWW 2018) on a prepared split: does a per-user multinomial objective beat
the linear top-k baselines (EASE, implicit ALS) where the rating network does not?

    python bench/bench_mult_dae.py --config conf/ml-100k.yaml --seeds 1,2,3

A research check for docs/architecture.md ("Levers measured for top-k quality"), not a shipped
recommender: it has no rating head, no cold start and no side features. Protocol as the report's
top-k baselines (recsys.evaluation): every (hidden width, L2) of the grid is fitted on train and
scored by validation NDCG@10 every 10 epochs (``Data.tuning_view()``, no test rating); the best
width, L2 and epoch count are refitted on train + validation for each seed and scored on test by
``ranking_metrics``, the report's own metric code. Dense [users, movies] inputs: ML-100K-sized
data only (about 6 MB here).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from recsys.evaluation import Recommender  # noqa: E402  (numpy and pandas only; TensorFlow loads in fit)


class MultDAE(Recommender):
    """L2-normalised binary history -> dropout -> tanh layer -> softmax over the catalog; loss: the
    multinomial log-likelihood of the user's movies."""

    label, kind, rates = "Mult-DAE", "top-k", False

    def __init__(self, hidden: int, l2: float, epochs: int, seed: int, dropout: float = 0.5,
                 learning_rate: float = 1e-3, users_per_step: int = 100):
        self.hidden, self.l2, self.epochs, self.seed = hidden, l2, epochs, seed
        self.dropout, self.learning_rate, self.users_per_step = dropout, learning_rate, users_per_step

    def fit(self, data, every: int = 0, on_epoch=None) -> "MultDAE":
        """Train on ``data.train`` (binary: every rating is an interaction); ``on_epoch(epoch)``
        after every ``every`` epochs (validation scoring during tuning)."""
        import tensorflow as tf

        from recsys.evaluation import pair_matrix

        tf.random.set_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.x = pair_matrix(data.train, data.n_users, data.n_movies).astype(np.float32).toarray()  # [U, M]
        reg = tf.keras.regularizers.l2(self.l2) if self.l2 > 0 else None
        self.encoder = tf.keras.layers.Dense(self.hidden, activation="tanh", kernel_regularizer=reg)
        self.decoder = tf.keras.layers.Dense(data.n_movies, kernel_regularizer=reg)
        optimizer = tf.keras.optimizers.Adam(self.learning_rate)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                logits = self._logits(x, training=True)
                loss = -tf.reduce_mean(tf.reduce_sum(tf.nn.log_softmax(logits) * x, axis=1))
                loss += tf.add_n(self.encoder.losses + self.decoder.losses) if reg else 0.0
            weights = self.encoder.trainable_variables + self.decoder.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))

        batches = max(1, data.n_users // self.users_per_step)
        for epoch in range(1, self.epochs + 1):
            for rows in np.array_split(rng.permutation(data.n_users), batches):
                step(tf.constant(self.x[rows]))
            if every and on_epoch is not None and epoch % every == 0:
                on_epoch(epoch)
        return self

    def _logits(self, x, training: bool):
        import tensorflow as tf

        h = tf.nn.l2_normalize(x, axis=1)
        if training:
            h = tf.nn.dropout(h, self.dropout)
        return self.decoder(self.encoder(h))

    def scores(self, users: np.ndarray) -> np.ndarray:
        """[len(users), n_movies] logits from each user's training movies."""
        return self._logits(self.x[users], training=False).numpy()


def main(argv=None) -> int:
    from _split import load_split
    from recsys.evaluation import ranking_metrics

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of the refits scored on test")
    ap.add_argument("--hidden", default="200,600", help="tanh widths tried on validation")
    ap.add_argument("--l2", default="0,1e-5", help="L2 weights tried on validation")
    ap.add_argument("--epochs", type=int, default=200, help="most epochs tried (validation every 10)")
    args = ap.parse_args(argv)
    cfg, data, view = load_split(args.config, "nothing to tune on")
    t0, best = time.time(), None
    for hidden in (int(h) for h in args.hidden.split(",")):
        for l2 in (float(v) for v in args.l2.split(",")):
            curve = []
            model = MultDAE(hidden, l2, args.epochs, seed=1)
            model.fit(view, every=10, on_epoch=lambda e: curve.append(
                (ranking_metrics(model, view)[0]["ndcg@10"], e)))
            value, epoch = max(curve)
            print(f"[mult-dae] hidden {hidden} l2 {l2:g}: best validation ndcg@10 {value:.4f} at epoch {epoch}",
                  flush=True)
            if best is None or value > best[0]:
                best = (value, hidden, l2, epoch)
    _, hidden, l2, epochs = best
    print(f"[mult-dae] chosen on validation: hidden {hidden}, l2 {l2:g}, {epochs} epochs", flush=True)
    figures = []
    for seed in (int(s) for s in args.seeds.split(",")):
        metrics = ranking_metrics(MultDAE(hidden, l2, epochs, seed).fit(data), data)[0]
        figures.append(metrics["ndcg@10"])
        print(f"[mult-dae] seed {seed}: test ndcg@10 {figures[-1]:.4f}", flush=True)
    sd = np.std(figures, ddof=1) if len(figures) > 1 else 0.0
    print(f"{args.config}: Mult-DAE test NDCG@10 {np.mean(figures):.4f} ± {sd:.4f} over seeds {args.seeds} "
          f"({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
