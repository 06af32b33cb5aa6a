"""Implicit-ALS fold-in: each user's rank vector refined from the movies' rank vectors and the
user's own movies (an optional export step, ``export.foldin_weight``).

The implicit-ALS user step (Hu, Koren and Volinsky, ICDM 2008) with the movies' rank vectors
``V`` [movies, d] held fixed: for a user who rated the movies ``I``,

    step = argmin_x  sum_{i in I} (1 - <x, V_i>)^2 + w0 sum_{i not in I} <x, V_i>^2 + lam |x|^2
         = (w0 V^T V + (1 - w0) V_I^T V_I + lam I_d)^-1 V_I^T 1,

computed through the Gramian ``V^T V`` (d x d), so the cost is linear in the user's ratings. The
exported rank vector is ``u + weight * (|u| / |step|) * step``: the tower's vector plus the step at
the tower vector's norm. A user without ratings keeps the tower's vector. The pair score and the
similarity vectors are unchanged; top-k stays ``<user rank, movie rank>`` (the model contract).
Measured in docs/architecture.md ("Levers measured for top-k quality").
"""

from __future__ import annotations

import numpy as np


def gramian(F: np.ndarray, w0: float, lam: float) -> np.ndarray:
    """``w0 F^T F + lam I`` [d, d] float64: the part of every row's system shared by all rows."""
    F = np.asarray(F, np.float64)
    return w0 * F.T @ F + lam * np.eye(F.shape[1])


def als_rows(F: np.ndarray, X, prior: np.ndarray, w0: float, lam: float, gram: np.ndarray | None = None) -> np.ndarray:
    """The implicit-ALS row step for every row of ``X``.

    ``F``: [n, d] fixed factors; ``X``: binary scipy CSR [rows, n] (a row's entries weigh 1 with
    target 1, every other column weighs ``w0`` with target 0); ``prior``: [rows, d], the centre
    of the ridge ``lam |x - prior_r|^2``; ``gram``: :func:`gramian` of the same arguments when
    already computed (callers that step many blocks of rows). Returns [rows, d] float64; a row
    without entries keeps its prior. Needs ``lam > 0`` and ``w0 > 0``: the system is then
    positive definite (it is sum over the row's entries of F_i F_i^T plus w0 times the rest,
    plus lam I)."""
    F = np.asarray(F, np.float64)
    gram = gramian(F, w0, lam) if gram is None else gram
    out = np.array(prior, np.float64, copy=True)
    for r in range(X.shape[0]):
        cols = X.indices[X.indptr[r]:X.indptr[r + 1]]
        if len(cols):
            Fi = F[cols]
            out[r] = np.linalg.solve(gram + (1.0 - w0) * Fi.T @ Fi, Fi.sum(0) + lam * prior[r])
    return out


def fold_in(U: np.ndarray, V: np.ndarray, X, weight: float, w0: float, lam: float,
            gram: np.ndarray | None = None) -> np.ndarray:
    """``U`` [users, d] plus ``weight`` x the implicit-ALS user step over ``V`` [movies, d] and
    the users' movies ``X`` (binary CSR [users, movies]), each step scaled to its user's |U_u|.
    Every coordinate is refined, a constant one too (the rating network's ``1`` that carries the
    popularity prior: each user's prior weight moves with the step). ``gram``: :func:`gramian`
    of ``V``, ``w0``, ``lam`` when already computed. Returns float32 [users, d]; rows of ``X``
    without entries return ``U`` unchanged."""
    U = np.asarray(U, np.float64)
    step = als_rows(V, X, np.zeros_like(U), w0, lam, gram)
    norm = np.linalg.norm(step, axis=1, keepdims=True)
    scale = np.divide(np.linalg.norm(U, axis=1, keepdims=True), norm, out=np.zeros_like(norm), where=norm > 0)
    return (U + weight * scale * step).astype(np.float32)
