"""The implicit-ALS fold-in (recsys/foldin.py) against its objective minimised directly."""

import numpy as np
from scipy import sparse
from scipy.optimize import minimize

from recsys.foldin import als_rows, fold_in


def _objective(F, row, prior, w0, lam):
    """sum_i w_i (p_i - <x, F_i>)^2 + lam |x - prior|^2: p = 1, w = 1 on the row's entries,
    p = 0, w = w0 on every other column (the dense form, no Gramian)."""
    weight, target = np.where(row, 1.0, w0), row.astype(float)
    return lambda x: float((weight * (target - F @ x) ** 2).sum() + lam * ((x - prior) ** 2).sum())


def _minimiser(f, d):
    return minimize(f, np.zeros(d), method="BFGS", options={"gtol": 1e-10}).x


def test_als_rows_minimise_the_weighted_objective_and_keep_the_prior_of_empty_rows():
    rng = np.random.default_rng(3)
    F = rng.normal(size=(7, 3))
    prior = rng.normal(size=(4, 3))
    dense = np.array([[1, 0, 1, 0, 0, 1, 0],
                      [0, 0, 0, 0, 0, 0, 0],
                      [1, 1, 1, 1, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0, 1]], bool)
    for w0, lam in ((0.3, 0.7), (3.0, 1.0)):  # w0 above 1 too: the export default
        got = als_rows(F, sparse.csr_matrix(dense), prior, w0, lam)
        np.testing.assert_array_equal(got[1], prior[1])
        for r in (0, 2, 3):
            f = _objective(F, dense[r], prior[r], w0, lam)
            best = _minimiser(f, 3)
            np.testing.assert_allclose(got[r], best, atol=1e-5)
            assert f(got[r]) <= f(best) + 1e-9


def test_fold_in_adds_the_step_at_the_users_norm():
    """u + weight (|u| / |x*|) x*, with x* the minimiser at prior zero; a user without movies
    keeps u exactly."""
    rng = np.random.default_rng(5)
    V = rng.normal(size=(9, 4))
    U = rng.normal(size=(3, 4))
    dense = np.zeros((3, 9), bool)
    dense[0, [1, 4, 8]] = True
    dense[2, [0, 2]] = True
    got = fold_in(U, V, sparse.csr_matrix(dense), 0.5, 3.0, 1.0)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[1], U[1], rtol=1e-6)
    for r in (0, 2):
        step = _minimiser(_objective(V, dense[r], np.zeros(4), 3.0, 1.0), 4)
        want = U[r] + 0.5 * np.linalg.norm(U[r]) / np.linalg.norm(step) * step
        np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-5)
        assert not np.allclose(got[r], U[r], atol=1e-3)
