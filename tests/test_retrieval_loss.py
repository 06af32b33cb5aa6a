"""The rating network's retrieval loss (in-batch softmax, logQ-corrected, in groups) against a
numpy reference written from the formula: per user, log-sum-exp over the group's movies that are
not the same movie as the positive elsewhere in the group, minus the positive's logit."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.models.rating_network import catalog_retrieval_loss, retrieval_loss

TEMPERATURE = 0.1


def reference_losses(u, m, ids, log_q, temperature=TEMPERATURE) -> np.ndarray:
    """Per-example cross-entropy of one group (float64): negatives are the group's other movies,
    minus the other occurrences of the positive movie; logits ``<u, m> / T - log q_m``."""
    u, m, log_q = (np.asarray(a, np.float64) for a in (u, m, log_q))
    out = np.empty(len(u))
    for i in range(len(u)):
        logits = u[i] @ m.T / temperature - log_q
        keep = [j for j in range(len(u)) if j == i or ids[j] != ids[i]]
        top = logits[keep].max()
        out[i] = top + np.log(np.exp(logits[keep] - top).sum()) - logits[i]
    return out


def batch(n: int, rank: int = 6, movies: int = 5, seed: int = 0):
    """Rank vectors, ids drawn from few movies (so groups hold repeats the mask must handle), log q."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, movies + 1, n).astype(np.int32)
    log_q = np.log(rng.dirichlet(np.ones(movies + 1)))[ids].astype(np.float32)
    return (rng.normal(0, 0.3, (n, rank)).astype(np.float32), rng.normal(0, 0.3, (n, rank)).astype(np.float32),
            ids, log_q)


def _tf(*arrays):
    import tensorflow as tf

    return [tf.constant(a) for a in arrays]


@pytest.mark.parametrize("group_size", [None, 12, 13, 4096])
def test_a_group_covering_the_batch_is_the_plain_in_batch_softmax(group_size):
    u, m, ids, log_q = batch(12)
    assert len(set(ids)) < len(ids)  # repeats: the same-movie mask is exercised
    got = float(retrieval_loss(*_tf(u, m, ids, log_q), TEMPERATURE, group_size))
    np.testing.assert_allclose(got, reference_losses(u, m, ids, log_q).mean(), rtol=1e-5)


def test_several_groups_give_the_mean_of_the_groups_losses():
    u, m, ids, log_q = batch(12)
    got = float(retrieval_loss(*_tf(u, m, ids, log_q), TEMPERATURE, 4))
    per_group = [reference_losses(u[s:s + 4], m[s:s + 4], ids[s:s + 4], log_q[s:s + 4]).mean() for s in (0, 4, 8)]
    np.testing.assert_allclose(got, np.mean(per_group), rtol=1e-5)
    whole = reference_losses(u, m, ids, log_q).mean()
    assert abs(got - whole) > 1e-3  # fewer negatives per user: a different (smaller) loss


def test_a_short_last_group_is_masked_and_weighted_per_example():
    """10 examples in groups of 4: groups of 4, 4 and 2; the padding is neither a negative nor counted,
    with the batch length known while tracing or not (a validation caller's last batch)."""
    import tensorflow as tf

    u, m, ids, log_q = batch(10, seed=1)
    expected = np.concatenate([reference_losses(u[s:s + 4], m[s:s + 4], ids[s:s + 4], log_q[s:s + 4])
                               for s in (0, 4, 8)]).mean()
    eager = float(retrieval_loss(*_tf(u, m, ids, log_q), TEMPERATURE, 4))
    np.testing.assert_allclose(eager, expected, rtol=1e-5)

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32), tf.TensorSpec([None, 6], tf.float32),
                                  tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32),
                                  tf.TensorSpec([], tf.int32)])
    def unknown_length(u, m, ids, log_q, _):
        return retrieval_loss(u, m, ids, log_q, TEMPERATURE, 4), retrieval_loss(u, m, ids, log_q, TEMPERATURE, 64)

    grouped, covering = unknown_length(*_tf(u, m, ids, log_q), tf.constant(0))
    np.testing.assert_allclose(float(grouped), expected, rtol=1e-5)
    np.testing.assert_allclose(float(covering), reference_losses(u, m, ids, log_q).mean(), rtol=1e-5)


def test_gradients_reach_only_the_own_group():
    """A movie vector gets gradient only from the users of its own group (and is finite)."""
    import tensorflow as tf

    u, m, ids, log_q = _tf(*batch(8, seed=2))
    m = tf.Variable(m)
    with tf.GradientTape() as tape:
        loss = retrieval_loss(u, m, ids, log_q, TEMPERATURE, 4)
    grad = tape.gradient(loss, m).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    with tf.GradientTape() as tape:
        first = retrieval_loss(u[:4], m[:4], ids[:4], log_q[:4], TEMPERATURE)
    np.testing.assert_allclose(grad[:4], tape.gradient(first, m).numpy()[:4] / 2, rtol=1e-5, atol=1e-7)


def test_catalog_loss_is_the_softmax_over_every_catalog_movie():
    """``model.retrieval_negatives: catalog``: log-sum-exp over all M catalog movies minus the
    positive's logit, no sampling correction, averaged over the batch."""
    rng = np.random.default_rng(3)
    u, catalog = rng.normal(0, 0.3, (5, 4)).astype(np.float32), rng.normal(0, 0.3, (7, 4)).astype(np.float32)
    rows = np.array([0, 6, 3, 3, 1], np.int32)  # the catalog row of each example's movie
    logits = u.astype(np.float64) @ catalog.T.astype(np.float64) / TEMPERATURE
    expected = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(5), rows])
    assert float(catalog_retrieval_loss(*_tf(u, catalog, rows), TEMPERATURE)) == pytest.approx(expected, rel=1e-5)
