#!/usr/bin/env python
"""I-AutoRec (Sedhain et al., WWW 2015) on a prepared split: what test RMSE does the item-based
autoencoder family, the one behind the published ML-100K figures at 0.895 and below (Sparse FC,
GLocal-K), reach on this project's split?

    python bench/bench_autorec.py --config conf/ml-100k.yaml --seeds 1,2,3

A research check for docs/architecture.md ("Levers measured for top-k quality"), not a shipped
recommender: it has no top-k objective, no cold start and no side features. It is written with
dense Keras layers over the whole [movies, users] matrix, apart from the shipped
``recsys/models/item_autoencoder.py`` (the rating network's blend, which gathers only the
observed ratings), so that the two implementations check each other's figures. Each movie's column
of training ratings [n_users] goes through one sigmoid layer (``--hidden`` units) and an identity
decoder back to [n_users]; the loss is the squared error on the observed ratings plus
``l2 / 2`` times the squared weights. The prediction for (user, movie) is the decoder's output
for that movie at that user; a movie without training ratings gets the training mean.

Protocol: every L2 of the grid is fitted on train and scored by validation RMSE every 10 epochs
(``Data.tuning_view()``, no test rating). With the chosen L2 and epoch count each seed is then
fitted twice and scored on test by ``rating_metrics``, the report's own metric code (clipped to
the rating scale): on train alone, the ratings the rating network trains on, and refitted on
train + validation, the rating baselines' protocol. Dense [movies, users] inputs: ML-100K-sized
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


class IAutoRec(Recommender):
    """Item-based AutoRec: [n_users] column of a movie's ratings -> sigmoid(hidden) -> [n_users]."""

    label, kind, rates, ranks = "I-AutoRec", "rating prediction", True, False

    def __init__(self, hidden: int, l2: float, epochs: int, seed: int,
                 learning_rate: float = 1e-3, movies_per_step: int = 128):
        self.hidden, self.l2, self.epochs, self.seed = hidden, l2, epochs, seed
        self.learning_rate, self.movies_per_step = learning_rate, movies_per_step

    def fit(self, data, every: int = 0, on_epoch=None) -> "IAutoRec":
        """Train on ``data.train``; ``on_epoch(epoch)`` after every ``every`` epochs."""
        import tensorflow as tf

        tf.random.set_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        tr = data.train
        self.mean = float(tr.rating.mean())
        r = np.zeros((data.n_movies, data.n_users), np.float32)  # [M, U] observed ratings, 0 elsewhere
        r[tr.m.to_numpy(), tr.u.to_numpy()] = tr.rating.to_numpy(np.float32)
        observed = (r > 0).astype(np.float32)
        self.r, self.rated = r, observed.any(axis=1)
        init = tf.keras.initializers.GlorotUniform(seed=self.seed)
        self.encoder = tf.keras.layers.Dense(self.hidden, activation="sigmoid", kernel_initializer=init)
        self.decoder = tf.keras.layers.Dense(data.n_users, kernel_initializer=init)
        optimizer = tf.keras.optimizers.Adam(self.learning_rate)
        share = self.movies_per_step / data.n_movies  # each step carries its share of the epoch's L2

        @tf.function
        def step(x, mask):
            with tf.GradientTape() as tape:
                err = (self.decoder(self.encoder(x)) - x) * mask
                penalty = tf.reduce_sum(self.encoder.kernel ** 2) + tf.reduce_sum(self.decoder.kernel ** 2)
                loss = tf.reduce_sum(err ** 2) + share * self.l2 / 2 * penalty
            weights = self.encoder.trainable_variables + self.decoder.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))

        batches = max(1, data.n_movies // self.movies_per_step)
        for epoch in range(1, self.epochs + 1):
            for rows in np.array_split(rng.permutation(data.n_movies), batches):
                step(tf.constant(r[rows]), tf.constant(observed[rows]))
            if every and on_epoch is not None and epoch % every == 0:
                self._out = None
                on_epoch(epoch)
        self._out = None
        return self

    def predict(self, u: np.ndarray, m: np.ndarray) -> np.ndarray:
        if getattr(self, "_out", None) is None:  # [M, U] reconstruction, computed once per fit state
            self._out = self.decoder(self.encoder(self.r)).numpy()
        return np.where(self.rated[m], self._out[m, u], self.mean)


def main(argv=None) -> int:
    from _split import load_split
    from recsys.evaluation import rating_metrics

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of the fits scored on test")
    ap.add_argument("--hidden", type=int, default=500, help="sigmoid units (the paper's 500)")
    ap.add_argument("--l2", default="1,10,30,100", help="L2 weights tried on validation")
    ap.add_argument("--epochs", type=int, default=300, help="most epochs tried (validation every 10)")
    args = ap.parse_args(argv)
    cfg, data, view = load_split(args.config, "nothing to tune on")
    lo, hi = data.rating_min, data.rating_max
    t0, best = time.time(), None
    for l2 in (float(v) for v in args.l2.split(",")):
        curve = []
        model = IAutoRec(args.hidden, l2, args.epochs, seed=1)
        model.fit(view, every=10, on_epoch=lambda e: curve.append(
            (rating_metrics(model, view.test, lo, hi)["rmse"], e)))
        value, epoch = min(curve)
        print(f"[i-autorec] hidden {args.hidden} l2 {l2:g}: best validation rmse {value:.4f} at epoch {epoch}",
              flush=True)
        if best is None or value < best[0]:
            best = (value, l2, epoch)
    _, l2, epochs = best
    print(f"[i-autorec] chosen on validation: l2 {l2:g}, {epochs} epochs", flush=True)
    figures = {"train": [], "train + validation": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, fit_on in (("train", view), ("train + validation", data)):
            model = IAutoRec(args.hidden, l2, epochs, seed).fit(fit_on)
            figures[name].append(rating_metrics(model, data.test, lo, hi)["rmse"])
            print(f"[i-autorec] seed {seed}, fitted on {name}: test rmse {figures[name][-1]:.4f}", flush=True)
    for name, values in figures.items():
        sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
        print(f"{args.config}: I-AutoRec fitted on {name}: test RMSE {np.mean(values):.4f} ± {sd:.4f} "
              f"over seeds {args.seeds}")
    print(f"({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
