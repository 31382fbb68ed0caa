r"""Closed-form laws and moments of the priors (theory.md §2–3).

Finite width (exact, hidden widths ``N_1..N_L``, 1-based output index ``r``):

.. math::

    \log \bar V_{rr} = \sum_l \tfrac12 \log(\chi^2_{N_l-r+1}/N_l),\qquad
    \mathbb E\log\bar V_{rr} = \sum_l \tfrac12\big(\psi(\tfrac{N_l-r+1}2) + \log\tfrac2{N_l}\big),\qquad
    \mathrm{Var}\log\bar V_{rr} = \sum_l \tfrac14\psi'(\tfrac{N_l-r+1}2).

Proportional limit: :math:`\log \bar V_{rr} \sim N(-ar/2, a/2)`, :math:`\log Q_{11} \sim N(-a, 2a)`.

Second moments of ``Q`` (derived here, checked against brute-force networks by the
test suite). ``Q`` is orthogonally invariant in law, so

.. math:: \mathbb E[Q_{ij}Q_{kl}] = \alpha\,\delta_{ij}\delta_{kl} + \beta(\delta_{ik}\delta_{jl} + \delta_{il}\delta_{jk}),

and :math:`s_1 = \mathbb E(\mathrm{tr}\,Q)^2`, :math:`s_2 = \mathbb E\,\mathrm{tr}(Q^2)` obey, layer by
layer (``Q_l =d W^{1/2} Q_{l-1} W^{1/2}``, ``W ~ Wishart_D(N_l, I/N_l)``),

.. math:: s_1 \leftarrow s_1 + 2 s_2/N_l,\qquad s_2 \leftarrow s_2(1 + 1/N_l) + s_1/N_l,
          \qquad (s_1, s_2)_0 = (D^2, D).

In the limit ``L = aN``, :math:`(s_1, s_2)(a) = \exp\!\big(a\begin{pmatrix}0&2\\1&1\end{pmatrix}\big)(D^2, D)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.linalg
import scipy.special as sp

from deeplinear._types import ArrayLike
from deeplinear._validation import check_inputs, check_positive_int, check_positive_scalar, check_ratio, check_widths

__all__ = [
    "QSecondMoments",
    "finite_log_vbar_diag_mean",
    "finite_log_vbar_diag_var",
    "finite_vbar_diag_moment",
    "limit_log_vbar_diag_mean",
    "limit_log_vbar_diag_var",
    "finite_q_second_moments",
    "limit_q_second_moments",
    "linear_kernel",
    "output_covariance",
    "output_fourth_moments",
]


class QSecondMoments(NamedTuple):
    r"""Coefficients of :math:`\mathbb E[Q_{ij}Q_{kl}] = \alpha\delta_{ij}\delta_{kl} + \beta(\delta_{ik}\delta_{jl} + \delta_{il}\delta_{jk})`.

    So :math:`\mathbb E[Q_{11}^2] = \alpha + 2\beta`, :math:`\mathbb E[Q_{11}Q_{22}] = \alpha`,
    :math:`\mathbb E[Q_{12}^2] = \beta`.
    """

    alpha: float
    beta: float
    num_outputs: int

    def tensor(self) -> np.ndarray:
        r"""The ``(D, D, D, D)`` tensor :math:`\mathbb E[Q_{ij} Q_{kl}]`."""
        eye = np.eye(self.num_outputs)
        return self.alpha * np.einsum("ij,kl->ijkl", eye, eye) + self.beta * (
            np.einsum("ik,jl->ijkl", eye, eye) + np.einsum("il,jk->ijkl", eye, eye)
        )


def _r(num_outputs):
    return np.arange(1, check_positive_int("num_outputs", num_outputs) + 1)


def finite_log_vbar_diag_mean(widths: Sequence[int], num_outputs: int) -> np.ndarray:
    r""":math:`\mathbb E \log \bar V_{rr} = \sum_l \tfrac12(\psi((N_l-r+1)/2) + \log(2/N_l))`, shape ``(D,)``."""
    n = np.asarray(check_widths(widths, num_outputs), float)[:, None]
    nu = n - _r(num_outputs)[None, :] + 1
    return 0.5 * np.sum(sp.digamma(nu / 2) + np.log(2 / n), axis=0)


def finite_log_vbar_diag_var(widths: Sequence[int], num_outputs: int) -> np.ndarray:
    r""":math:`\mathrm{Var} \log \bar V_{rr} = \sum_l \tfrac14 \psi'((N_l-r+1)/2)`, shape ``(D,)``."""
    n = np.asarray(check_widths(widths, num_outputs), float)[:, None]
    nu = n - _r(num_outputs)[None, :] + 1
    return 0.25 * np.sum(sp.polygamma(1, nu / 2), axis=0)


def finite_vbar_diag_moment(widths: Sequence[int], num_outputs: int, s: float) -> np.ndarray:
    r""":math:`\mathbb E \bar V_{rr}^s = \prod_l (2/N_l)^{s/2}\,\Gamma((N_l-r+1+s)/2)/\Gamma((N_l-r+1)/2)`, shape ``(D,)``."""
    n = np.asarray(check_widths(widths, num_outputs), float)[:, None]
    nu = n - _r(num_outputs)[None, :] + 1
    if not np.all(nu + s > 0):
        raise ValueError(f"s must exceed -(N_l - D + 1) = {-(nu.min())} for the moment to exist, got {s}")
    log_terms = 0.5 * s * np.log(2 / n) + sp.gammaln((nu + s) / 2) - sp.gammaln(nu / 2)
    return np.exp(np.sum(log_terms, axis=0))


def limit_log_vbar_diag_mean(ratio: float, num_outputs: int) -> np.ndarray:
    r"""Proportional limit: :math:`\mathbb E \log \bar V_{rr} = -ar/2`, shape ``(D,)``."""
    return -float(check_ratio(ratio)) * _r(num_outputs) / 2


def limit_log_vbar_diag_var(ratio: float, num_outputs: int) -> np.ndarray:
    r"""Proportional limit: :math:`\mathrm{Var} \log \bar V_{rr} = a/2` for every ``r``, shape ``(D,)``."""
    return np.full(len(_r(num_outputs)), float(check_ratio(ratio)) / 2)


def _from_traces(s1: float, s2: float, D: int) -> QSecondMoments:
    # Solve  s1 = alpha D^2 + 2 beta D,  s2 = alpha D + beta (D^2 + D).
    if D == 1:
        return QSecondMoments(alpha=s1, beta=0.0, num_outputs=1)
    a = np.array([[D * D, 2 * D], [D, D * D + D]], float)
    alpha, beta = np.linalg.solve(a, [s1, s2])
    return QSecondMoments(alpha=float(alpha), beta=float(beta), num_outputs=D)


def finite_q_second_moments(widths: Sequence[int], num_outputs: int) -> QSecondMoments:
    r"""Exact :math:`\mathbb E[Q_{ij} Q_{kl}]` for hidden widths ``N_1..N_L`` (see module docstring)."""
    widths = check_widths(widths, num_outputs)
    D = num_outputs
    s1, s2 = float(D * D), float(D)
    for n in widths:
        s1, s2 = s1 + 2 * s2 / n, s2 * (1 + 1 / n) + s1 / n
    return _from_traces(s1, s2, D)


def limit_q_second_moments(ratio: float, num_outputs: int) -> QSecondMoments:
    r"""Proportional limit of :math:`\mathbb E[Q_{ij} Q_{kl}]`: the ODE solution
    :math:`(s_1, s_2)(a) = e^{aA}(D^2, D)`, :math:`A = \begin{pmatrix}0&2\\1&1\end{pmatrix}`.

    For ``D = 1`` this is :math:`\mathbb E Q^2 = e^{2a}`, the second moment of
    :math:`\log Q \sim N(-a, 2a)`.
    """
    a = float(check_ratio(ratio))
    D = check_positive_int("num_outputs", num_outputs)
    s1, s2 = scipy.linalg.expm(a * np.array([[0.0, 2.0], [1.0, 1.0]])) @ np.array([D * D, D], float)
    return _from_traces(float(s1), float(s2), D)


def linear_kernel(X: ArrayLike) -> np.ndarray:
    r"""The linear kernel :math:`K = X X^\top / N_0` (theory.md's :math:`X^\top X/N_0`) for inputs
    ``X`` of shape ``(P, N0)``, one per row."""
    X = check_inputs(X)
    return X @ X.T / X.shape[1]


def output_covariance(q: ArrayLike, kernel: ArrayLike, lambda_star: float = 1.0) -> np.ndarray:
    r"""Covariance of :math:`f(X) \mid Q`: :math:`\mathrm{Cov}(f_i(x_p), f_j(x_q)) = \lambda_* Q_{ij} K_{pq}`.

    Returned as the ``(P, D, P, D)`` tensor, matching outputs ``f`` of shape ``(P, D)`` (reshape
    to ``(PD, PD)`` for :math:`\lambda_* K \otimes Q`, the covariance of ``f.reshape(-1)``). With
    ``q = I`` it is the prior covariance, since :math:`\mathbb E Q = I`.
    """
    check_positive_scalar("lambda_star", lambda_star)
    return lambda_star * np.einsum("ij,pq->piqj", np.asarray(q, float), np.asarray(kernel, float))


def output_fourth_moments(q_moments: QSecondMoments, kernel: ArrayLike, lambda_star: float = 1.0) -> np.ndarray:
    r"""Prior fourth moments :math:`\mathbb E[f_i(x_p) f_j(x_q) f_k(x_r) f_l(x_s)]`, shape ``(P, D)*4``
    (axes ``p, i, q, j, r, k, s, l``, matching outputs ``f`` of shape ``(P, D)``).

    Isserlis' theorem given ``Q``, then the expectation over ``Q``:

    .. math:: \lambda_*^2\big(\mathbb E[Q_{ij}Q_{kl}]K_{pq}K_{rs} + \mathbb E[Q_{ik}Q_{jl}]K_{pr}K_{qs}
              + \mathbb E[Q_{il}Q_{jk}]K_{ps}K_{qr}\big).

    Non-Gaussianity shows as :math:`\mathbb E f_1^4 = 3\lambda_*^2 K_{pp}^2\,\mathbb E Q_{11}^2 > 3\lambda_*^2 K_{pp}^2`.
    """
    check_positive_scalar("lambda_star", lambda_star)
    t = q_moments.tensor()
    k = np.asarray(kernel, float)
    m = (
        np.einsum("ijkl,pq,rs->piqjrksl", t, k, k)
        + np.einsum("ikjl,pr,qs->piqjrksl", t, k, k)
        + np.einsum("iljk,ps,qr->piqjrksl", t, k, k)
    )
    return lambda_star**2 * m
