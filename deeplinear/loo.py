r"""Leave-one-input-out cross-validation at any ``P``: exact PSIS-LOO in memory, subsampled beyond it.

The pointwise terms :math:`\log p(y_i \mid Y_{-i}, \theta_s)` (exact for this non-factorized
Gaussian model: :func:`~deeplinear.likelihood.loo_log_likelihood`) form an ``S x P`` matrix. Up to
:data:`LOO_BUDGET_ENTRIES` numbers :func:`~deeplinear.fit` stores it (the ``log_likelihood``
group) and :func:`loo` is ``arviz.loo`` on it. Beyond, nothing of size ``S x P`` is built:
:func:`loo` estimates the elpd from a simple random sample of ``m`` inputs with the difference
estimator of Magnusson et al. (2019, "Bayesian leave-one-out cross-validation for large data"),

.. math::

    \widehat{\mathrm{elpd}} = \sum_{i=1}^{P} \pi_i + \frac{P}{m} \sum_{j \in \text{sample}}
    \bigl(\mathrm{elpd}_j - \pi_j\bigr),

where :math:`\mathrm{elpd}_j` is the PSIS-LOO term of a sampled input (``S x m`` numbers) and
:math:`\pi_i = \log p(y_i \mid Y_{-i}, \hat\theta)` is the point approximation at the posterior
mean :math:`\hat\theta` (of ``Q``, ``lambda_star``, ``noise_variance``), computed for every input in
one pass over the rows (``P`` numbers, in chunks). Its subsampling variance is
:math:`P^2 (1 - m/P)\, s_e^2 / m` with :math:`s_e^2` the sample variance of
:math:`\mathrm{elpd}_j - \pi_j`; the result (``arviz_stats``' ``ELPDDataLOOSubsample``, which
``arviz_stats.compare`` understands) reports it as ``subsampling_se`` next to the total ``se``. The
better :math:`\pi` approximates the exact terms (here: very well unless the posterior of
:math:`\theta` is wide), the smaller the subsampling error; it shrinks as :math:`1/\sqrt m`.
The total ``se`` estimates :math:`\sqrt{P \operatorname{Var}(\mathrm{elpd}_i)}`, as for the exact
LOO, from the same sample (:func:`difference_estimate`). These estimators are written here from the
paper, not imported from arviz-stats' private modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
import xarray as xr

from deeplinear._matmul import full_precision_jit
from deeplinear._types import RowSource
from deeplinear._validation import check_positive_int, describe
from deeplinear.inference import LOO_BUDGET_ENTRIES, PosteriorFit
from deeplinear.likelihood import _loo_draws, _loo_from_terms, loo_row_terms

if TYPE_CHECKING:
    from arviz_stats.utils import ELPDData

__all__ = ["loo", "LOO_BUDGET_ENTRIES"]

DEFAULT_SUBSAMPLE = 2000  # inputs in the subsample, unless the budget allows fewer draws x inputs
ROW_CHUNK = 2**15  # rows per compiled step of the approximation pass
ROUNDING_SPREAD = 64  # terms spread over the draws by at most this many ulps are constant (an exact posterior)


def loo(result: PosteriorFit, *, rows: RowSource | None = None, observations: int | None = None,
        seed: int = 0) -> ELPDData:
    r"""PSIS-LOO (``arviz_stats.loo``) of a fit, exact or subsampled.

    Exact when the fit stored its ``log_likelihood`` group (``P`` up to
    ``LOO_BUDGET_ENTRIES / S``) and ``observations`` is not given. Otherwise subsampled (module
    docstring): ``observations`` inputs (default ``min(P, 2000, LOO_BUDGET_ENTRIES // S)``) drawn
    without replacement with ``seed`` (the same ``seed`` and ``P`` give the same inputs, so
    subsampled fits compare through ``arviz_stats.compare``'s difference estimator).

    Parameters
    ----------
    result : PosteriorFit
    rows : iterable of (X_chunk, Y_chunk) with a ``rows(indices)`` method, optional
        For data set up by streaming (:meth:`RegressionData.from_chunks`), which keep no rows:
        the same rows again, e.g. the :class:`~deeplinear.streaming.ArrayChunks` used for the set-up.
    observations : int, optional
        Subsample size ``m`` (forces the subsampled estimate).
    seed : int, default 0

    When nothing in the posterior is random (the NNGP with fixed hyperparameters) the terms are
    identical across draws; PSIS cannot smooth constant weights, so uniform weights with Pareto
    ``k = 0`` are used.
    """
    if not isinstance(result, PosteriorFit):
        raise TypeError(f"result must be a PosteriorFit, got {type(result).__name__}")
    data = result.data
    if data.has_rows and rows is not None:
        raise ValueError("rows= is for data set up by streaming; this fit's data keep their rows")
    if observations is None and "log_likelihood" in result.datatree.children:
        return _psis(result.datatree, result.datatree["log_likelihood"].to_dataset()["Y"])
    if not data.has_rows:
        if rows is None:
            raise ValueError(
                "this fit's data were set up by streaming and keep no rows: pass the rows again, "
                "loo(result, rows=ArrayChunks(X, Y)) (the chunks used for RegressionData.from_chunks)"
            )
        if not (hasattr(rows, "rows") and hasattr(rows, "__iter__")):
            raise TypeError(f"rows must be iterable over (X_chunk, Y_chunk) with a rows(indices) method, got "
                            f"{describe(rows)}")
        num_rows = getattr(rows, "num_rows", data.num_obs)
        if num_rows != data.num_obs:
            raise ValueError(f"rows has {num_rows} rows but the fit's data have P = {data.num_obs}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return _subsampled(result, rows, observations, int(seed))


def _psis(datatree, ll: xr.DataArray, pointwise: bool | None = None):
    """``arviz_stats.loo`` of the pointwise terms ``ll`` (chain, draw, obs); constant terms (an exact
    posterior, whose terms computed in batches may differ by rounding: within ``ROUNDING_SPREAD``
    units of the last place) get uniform weights and ``k = 0``."""
    import arviz_stats

    tree = xr.DataTree.from_dict({"posterior": datatree["posterior"].to_dataset(),
                                  "log_likelihood": xr.Dataset({"Y": ll})})
    kwargs = {} if pointwise is None else {"pointwise": pointwise}
    spread = ll.max(("chain", "draw")) - ll.min(("chain", "draw"))
    rounding = ROUNDING_SPREAD * np.finfo(ll.dtype).eps * (1 + abs(ll).max(("chain", "draw")))
    if bool((spread > rounding).any()):
        return arviz_stats.loo(tree, **kwargs)
    log_weights = xr.zeros_like(ll) - np.log(ll.sizes["chain"] * ll.sizes["draw"])
    pareto_k = xr.zeros_like(ll.isel(chain=0, draw=0, drop=True))
    return arviz_stats.loo(tree, log_weights=log_weights, pareto_k=pareto_k, **kwargs)


def _eigenvector_rows(data, X):
    r""":math:`U_R` rows of inputs ``X`` ``(m, N0)``: :math:`X V S^{-1}` = ``X @ input_projection / kappa``."""
    proj = np.asarray(data.basis.input_projection, np.float64)
    return X @ (proj / np.asarray(data.basis.eigenvalues, np.float64))


def _chunks(data, rows):
    """``(U, Y)`` row chunks of the training data (float64), from the data or from ``rows``."""
    if data.has_rows:
        U, Y = np.asarray(data.basis.eigenvectors), np.asarray(data.labels)
        for start in range(0, data.num_obs, ROW_CHUNK):
            yield (np.asarray(U[start:start + ROW_CHUNK], np.float64), np.asarray(Y[start:start + ROW_CHUNK],
                                                                                   np.float64))
        return
    for X, Y in rows:
        yield _eigenvector_rows(data, np.asarray(X, np.float64)), np.asarray(Y, np.float64)


def _rows_at(data, rows, indices):
    if data.has_rows:
        return (np.asarray(data.basis.eigenvectors[indices], np.float64),
                np.asarray(data.labels[indices], np.float64))
    X, Y = rows.rows(indices)
    return _eigenvector_rows(data, np.asarray(X, np.float64)), np.asarray(Y, np.float64)


@full_precision_jit
def _point_terms(q, lam, noise, data, terms, intercept):
    return _loo_from_terms(q, lam, noise, data, terms, intercept)


def _point_approximation(result, rows):
    r""":math:`\pi_i = \log p(y_i \mid Y_{-i}, \hat\theta)` for every input, ``(P,)`` float64, in chunks
    of ``ROW_CHUNK`` rows (padded, so one compiled program)."""
    data = result.data
    dtype = data.dtype
    q = jnp.asarray(result.draws("Q").mean(0), dtype)
    lam = jnp.asarray(result.draws("lambda_star").mean(), dtype)
    noise = jnp.asarray(result.noise_draws().mean(0), dtype)
    intercept = result.intercept_draws()
    intercept = None if intercept is None else jnp.asarray(intercept.mean(0), dtype)
    out = []
    for U, Y in _chunks(data, rows):
        for start in range(0, U.shape[0], ROW_CHUNK):
            u, y = U[start:start + ROW_CHUNK], Y[start:start + ROW_CHUNK]
            n = u.shape[0]
            pad = ROW_CHUNK - n
            terms = loo_row_terms(data, np.pad(u, ((0, pad), (0, 0))), np.pad(y, ((0, pad), (0, 0))), dtype)
            out.append(np.asarray(_point_terms(q, lam, noise, data, terms, intercept), np.float64)[:n])
    approx = np.concatenate(out)
    if approx.shape != (data.num_obs,):
        raise ValueError(f"rows gave {approx.shape[0]} rows but the fit's data have P = {data.num_obs}")
    return approx


def difference_estimate(elpd_sample, approx_sample, approx_all) -> tuple[float, float, float]:
    r"""Magnusson et al.'s (2019) difference estimator under simple random sampling without replacement:
    ``(elpd, subsampling_se, se)`` from the sampled terms :math:`e_j` and approximations :math:`\pi_j`
    (``m`` each) and the approximations of all ``P`` inputs. With :math:`d_j = e_j - \pi_j`,
    :math:`\bar d` and :math:`s_d^2` their mean and sample variance (``ddof=1``), and
    :math:`\Pi_1 = \sum_i \pi_i`, :math:`\Pi_2 = \sum_i \pi_i^2`:

    .. math::

        \widehat{\mathrm{elpd}} = \Pi_1 + P \bar d, \qquad
        v = P^2 \Bigl(1 - \frac mP\Bigr) \frac{s_d^2}{m}, \qquad
        \hat\sigma^2 = \Pi_2 + \frac Pm \sum_j (e_j^2 - \pi_j^2)
            - \frac1P \Bigl[(P \bar d)^2 - v + 2 \Pi_1 \widehat{\mathrm{elpd}} - \Pi_1^2\Bigr],

    ``subsampling_se`` :math:`= \sqrt v` and ``se`` :math:`= \sqrt{\max(\hat\sigma^2, 0)}` (the
    estimate of :math:`\sum_i e_i^2 - (\sum_i e_i)^2 / P`; with every input sampled, ``v = 0`` and
    both are exact). ``m = 1`` has no variance estimate: both SEs are infinite."""
    e = np.asarray(elpd_sample, np.float64).ravel()
    pi = np.asarray(approx_sample, np.float64).ravel()
    pi_all = np.asarray(approx_all, np.float64).ravel()
    if e.shape != pi.shape or not 1 <= e.size <= pi_all.size:
        raise ValueError(f"need m sampled terms and m approximations (1 <= m <= P = {pi_all.size}), got "
                         f"{e.size} and {pi.size}")
    P, m = pi_all.size, e.size
    d = e - pi
    total, total_sq = pi_all.sum(), np.square(pi_all).sum()
    elpd = total + P * d.mean()
    if m < 2:
        return float(elpd), np.inf, np.inf
    v = P**2 * (1.0 - m / P) * d.var(ddof=1) / m
    sigma2 = total_sq + P / m * (np.square(e) - np.square(pi)).sum() - (
        (P * d.mean()) ** 2 - v + 2.0 * total * elpd - total**2) / P
    return float(elpd), float(np.sqrt(v)), float(np.sqrt(max(sigma2, 0.0)))


def _subsampled(result, rows, observations, seed):
    from arviz_stats import ELPDDataLOOSubsample

    data = result.data
    post = result.datatree["posterior"]
    C, S = post.sizes["chain"], post.sizes["draw"]
    P = data.num_obs
    if observations is None:
        observations = min(P, DEFAULT_SUBSAMPLE, max(2, LOO_BUDGET_ENTRIES // (C * S)))
    m = check_positive_int("observations", observations)
    if not 2 <= m <= P:
        raise ValueError(f"observations must be in [2, P = {P}], got {m}")
    if m * C * S > LOO_BUDGET_ENTRIES:
        raise ValueError(
            f"observations = {m} with {C * S} draws makes {m * C * S:.3g} pointwise terms, more than "
            f"LOO_BUDGET_ENTRIES = {LOO_BUDGET_ENTRIES:.3g}; use fewer observations"
        )
    indices = np.sort(np.random.default_rng(seed).choice(P, m, replace=False))
    approx = _point_approximation(result, rows)
    U, Y = _rows_at(data, rows, indices)
    dtype = data.dtype
    ll = _loo_draws(jnp.asarray(result.draws("Q"), dtype), jnp.asarray(result.draws("lambda_star"), dtype),
                    jnp.asarray(result.noise_draws(), dtype), data, 64, loo_row_terms(data, U, Y, dtype),
                    None if result.intercept_draws() is None else jnp.asarray(result.intercept_draws(), dtype))
    ll = np.asarray(ll, np.float64).reshape(C, S, m)
    if not (np.all(np.isfinite(ll)) and np.all(np.isfinite(approx))):
        raise FloatingPointError(
            "the leave-one-input-out terms are not finite in this precision; rescale the inputs and labels, "
            "use a larger noise_variance or float64"
        )
    obs = xr.DataArray(ll, dims=("chain", "draw", "obs"),
                       coords={"chain": post["chain"].values, "draw": post["draw"].values, "obs": indices})
    exact = _psis(result.datatree, obs, pointwise=True)
    elpd_i = np.asarray(exact.elpd_i, np.float64)
    elpd, subsampling_se, total_se = difference_estimate(elpd_i, approx[indices], approx)
    lpd = np.log(np.mean(np.exp(ll - ll.max((0, 1))), axis=(0, 1))) + ll.max((0, 1))
    p_loo = P * np.mean(lpd - elpd_i)  # the simple random sample's estimate of sum_i (lpd_i - elpd_i)
    return ELPDDataLOOSubsample(
        elpd=float(elpd), se=float(total_se), p=float(p_loo), n_samples=C * S, n_data_points=P, scale="log",
        warning=bool(exact.warning), good_k=exact.good_k, elpd_i=None, pareto_k=exact.pareto_k,
        approx_posterior=False, subsampling_se=float(subsampling_se), subsample_size=m,
        loo_subsample_observations=indices,
        elpd_loo_approx=xr.DataArray(approx, dims=("obs",), coords={"obs": np.arange(P)}),
    )
