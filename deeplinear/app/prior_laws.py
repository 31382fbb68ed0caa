r"""Prior laws against theory: the paper's first two experiments as reusable functions.

* :func:`lognormal_convergence` -- ``D = 1``: :math:`\log \bar V` of finite products with
  ``L = aN`` against the exact finite law and the limit :math:`N(-a/2, a/2)`.
* :func:`offdiagonal_variance` -- ``D = 2``: :math:`\mathbb E[Q_{12}^2]` (the variance of the
  off-diagonal entry, since :math:`\mathbb E Q_{12} = 0`) as a function of ``1/N``, finite
  products against the limit simulator and the closed forms of :mod:`deeplinear.moments`.

Both return plain lists of :class:`typing.NamedTuple` rows (easy to print or to turn into a
table) and have a matching ``plot_*`` function in :mod:`deeplinear.app.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
import scipy.stats as st

from deeplinear import moments as mom
from deeplinear._types import KeyLike
from deeplinear._validation import check_key, check_positive_int, check_ratio
from deeplinear.priors import FiniteWidthPrior, ProportionalLimitPrior

__all__ = [
    "LogNormalRow",
    "OffDiagonalRow",
    "lognormal_convergence",
    "offdiagonal_variance",
]


class LogNormalRow(NamedTuple):
    """One ``(a, N)`` cell of :func:`lognormal_convergence` (all for ``log Vbar``, ``D = 1``)."""

    ratio: float
    width: int
    depth: int
    mc_mean: float
    mc_var: float
    exact_mean: float
    exact_var: float
    limit_mean: float
    limit_var: float
    ks_distance_to_limit: float
    samples: np.ndarray


class OffDiagonalRow(NamedTuple):
    """One width of :func:`offdiagonal_variance`: ``E[Q_12^2]`` for ``D = 2``."""

    width: int
    depth: int
    mc: float
    mc_se: float
    exact: float
    limit: float


def _depth(ratio, width):
    """``L = aN``, which must be a whole number ``>= 1``: a rounded depth would make ``L/N`` differ from
    the ``a`` of the limit it is compared with (``a = 0.25, N = 2`` would give ``L = 1``, ``L/N = 0.5``)."""
    depth = ratio * width
    if depth < 1 - 1e-9 or abs(depth - round(depth)) > 1e-9:
        raise ValueError(f"L = a N must be a whole number >= 1 so that L/N = a, but a = {ratio:g} and N = {width} give "
                         f"aN = {depth:g}; choose widths that are multiples of 1/a")
    return int(round(depth))


def lognormal_convergence(key: KeyLike, ratios: Sequence[float] = (0.25, 0.5, 1.0), widths: Sequence[int] = (4, 16, 64),
                          num_samples: int = 20_000) -> list[LogNormalRow]:
    r"""``D = 1``: :math:`\log \bar V` for ``L = aN`` (a whole number, else a ``ValueError``) against
    :math:`N(-a/2, a/2)`.

    The exact finite law has mean :math:`\sum_l \tfrac12(\psi(N/2) + \log(2/N))` and
    variance :math:`L\,\psi'(N/2)/4`; both tend to the limit's at rate ``O(1/N)``.
    """
    key = check_key(key)
    num_samples = check_positive_int("num_samples", num_samples)
    rows = []
    for ratio in ratios:
        ratio = float(check_ratio(ratio))
        for width in widths:
            width = check_positive_int("width", width)
            depth = _depth(ratio, width)
            key, sub = jax.random.split(key)
            prior = FiniteWidthPrior.from_depth_width(depth, width, 1)
            logv = np.log(np.asarray(prior.sample_vbar(sub, num_samples)[:, 0, 0], np.float64))
            lm, lv = -ratio / 2, ratio / 2
            rows.append(
                LogNormalRow(
                    ratio=ratio,
                    width=width,
                    depth=depth,
                    mc_mean=float(logv.mean()),
                    mc_var=float(logv.var(ddof=1)),
                    exact_mean=float(mom.finite_log_vbar_diag_mean(prior.widths, 1)[0]),
                    exact_var=float(mom.finite_log_vbar_diag_var(prior.widths, 1)[0]),
                    limit_mean=lm,
                    limit_var=lv,
                    ks_distance_to_limit=float(st.kstest(logv, st.norm(lm, np.sqrt(lv)).cdf).statistic),
                    samples=logv,
                )
            )
    return rows


def offdiagonal_variance(key: KeyLike, ratio: float = 0.5, widths: Sequence[int] = (2, 4, 8, 16, 32),
                         num_samples: int = 50_000, num_steps: int = 256) -> list[OffDiagonalRow]:
    r"""``D = 2``: :math:`\mathbb E[Q_{12}^2]` of finite products (``L = aN``) as ``N`` grows.

    Returns one row per width plus, as the last row (``width = 0``), the limit simulator with
    ``num_steps`` steps. ``exact`` is :func:`deeplinear.moments.finite_q_second_moments`'s
    :math:`\beta`; ``limit`` is :func:`deeplinear.moments.limit_q_second_moments`'s.
    """
    key = check_key(key)
    ratio = float(check_ratio(ratio))
    num_samples = check_positive_int("num_samples", num_samples)
    limit = mom.limit_q_second_moments(ratio, 2).beta
    rows = []
    for width in widths:
        width = check_positive_int("width", width, minimum=2)
        key, sub = jax.random.split(key)
        prior = FiniteWidthPrior.from_depth_width(_depth(ratio, width), width, 2)
        q12 = np.asarray(prior.sample_q(sub, num_samples)[:, 0, 1], np.float64) ** 2
        exact = mom.finite_q_second_moments(prior.widths, 2).beta
        rows.append(
            OffDiagonalRow(width, prior.depth, q12.mean(), q12.std(ddof=1) / np.sqrt(num_samples), exact, limit)
        )
    key, sub = jax.random.split(key)
    q = ProportionalLimitPrior(ratio, 2, num_steps).sample_q(sub, num_samples)
    q12 = np.asarray(q[:, 0, 1], np.float64) ** 2
    rows.append(OffDiagonalRow(0, num_steps, q12.mean(), q12.std(ddof=1) / np.sqrt(num_samples), np.nan, limit))
    return rows
