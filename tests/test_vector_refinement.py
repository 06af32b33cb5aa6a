"""The implicit-ALS row step of bench/bench_vector_refinement.py against the objective minimised directly."""

import importlib.util
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_vector_refinement", ROOT / "bench" / "bench_vector_refinement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_als_row_step_minimises_the_weighted_objective():
    """Each row is the minimiser of sum_i w_ri (p_ri - <x, F_i>)^2 + lam |x - prior_r|^2 with
    p = 1, w = 1 on the row's entries and p = 0, w = w0 elsewhere (found here by a generic
    optimiser over the dense objective); a row without entries keeps its prior."""
    rng = np.random.default_rng(3)
    F = rng.normal(size=(7, 3))
    prior = rng.normal(size=(4, 3))
    X = sparse.csr_matrix(np.array([[1, 0, 1, 0, 0, 1, 0],
                                    [0, 0, 0, 0, 0, 0, 0],
                                    [1, 1, 1, 1, 0, 0, 0],
                                    [0, 0, 0, 0, 0, 0, 1]], bool))
    w0, lam = 0.3, 0.7
    got = _bench().als_rows(F, X, prior, w0, lam)
    dense = X.toarray()
    for r in range(4):
        if not dense[r].any():
            np.testing.assert_array_equal(got[r], prior[r])
            continue
        weight, target = np.where(dense[r], 1.0, w0), dense[r].astype(float)

        def objective(x):
            return float((weight * (target - F @ x) ** 2).sum() + lam * ((x - prior[r]) ** 2).sum())

        best = minimize(objective, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
        np.testing.assert_allclose(got[r], best, atol=1e-5)
        assert objective(got[r]) <= objective(best) + 1e-9
