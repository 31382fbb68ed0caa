r"""Exact posterior references for one output, ``D = 1`` (theory.md §5).

With ``D = 1``, ``Q`` is a scalar ``s > 0`` and the posterior is one-dimensional:

.. math::

    \pi(s \mid Y) \propto \pi(s) \prod_{p=1}^{R} N(\tilde y_p; 0, \lambda_* \kappa_p s + \sigma^2)
    \times (\text{null-space term, constant in } s).

Writing :math:`u = \log s`:

* **proportional limit** -- :math:`u \sim N(-a, 2a)`: every posterior expectation and the
  evidence are 1-D integrals, done by adaptive quadrature (``scipy.integrate.quad``);
* **finite width** -- :math:`u = \sum_l \log(\chi^2_{N_l}/N_l)`: the density of ``u`` is the
  ``L``-fold convolution of log-Gamma densities, computed by FFT on a fine uniform grid
  (``scipy.signal.fftconvolve``), then integrated by the trapezoid rule. The FFT's error is
  relative to the density's largest value (about :math:`10^{-16}`), so where the posterior sits
  far in the prior's tail -- at large width and many rows, the regime of
  :mod:`deeplinear.renormalized`, :math:`O(\sqrt N)` prior standard deviations away -- the
  convolution is done for the **exponentially tilted** law :math:`f_\theta(u) \propto e^{\theta u}
  f(u)`, whose factors are again log-Gamma (shape :math:`N_l/2 + \theta`) and whose normalizer
  :math:`\prod_l E[g_l^\theta] = \prod_l \Gamma(N_l/2+\theta)\,(N_l/2)^{-\theta}/\Gamma(N_l/2)` is
  known: :math:`\pi(u \mid Y) \propto f_\theta(u)\, e^{-\theta u} p(Y \mid e^u)`. The tilt
  :math:`\theta` is the log likelihood's slope at the posterior's saddle point, which puts the tilted
  law's mean there (without it, at ``N = 256``, ``L = 2``, ``P = 128`` the posterior mean of ``s``
  came out 4.19 instead of 2.17);
* **NNGP** -- :math:`s = 1`.

Returned: posterior mean and variance of ``s``, the log evidence :math:`\log p(Y)`, and
optionally the predictive mean and variance of ``f`` at test inputs
(:math:`E[m_*(s)]` and :math:`E[\Sigma_*(s)] + \operatorname{Var}(m_*(s))`).
Everything is float64 NumPy, independent of the MCMC code paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import integrate, optimize, signal, special

from deeplinear._types import ArrayLike
from deeplinear._validation import check_noise_for_data, check_positive_int, check_positive_scalar
from deeplinear.data import RegressionData, check_regression_data
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior, VbarPrior

__all__ = ["ExactPosteriorD1", "exact_posterior_d1", "log_product_density"]

GRID_POINTS_PER_SD = 60
MAX_TILT = 1e9
TILT_TOLERANCE = 1e-6  # any tilt near the posterior mode's slope serves


class ExactPosteriorD1(NamedTuple):
    """Exact posterior summaries for ``D = 1``.

    ``pred_mean``/``pred_var`` are ``(P*,)`` arrays of the predictive mean and variance
    of the network output ``f`` (not including noise), or ``None`` without test inputs.
    """

    q_mean: float
    q_var: float
    log_evidence: float
    pred_mean: np.ndarray | None
    pred_var: np.ndarray | None


def log_product_density(widths: Sequence[int], num_points: int | None = None,
                        tilt: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    r"""Density of :math:`u = \log \prod_l \chi^2_{N_l}/N_l` on a uniform grid, by FFT convolution.

    Each factor :math:`v = \log g`, :math:`g \sim \mathrm{Gamma}(N/2, \mathrm{rate}\ N/2)`, has
    density :math:`\beta^\alpha e^{\alpha v - \beta e^v}/\Gamma(\alpha)`. Returns
    ``(grid, density)`` with ``density`` integrating to 1 on ``grid``. With ``tilt`` :math:`\theta`, the
    density of the tilted law :math:`\propto e^{\theta u} f(u)` (factors of shape :math:`N_l/2 + \theta`,
    which must stay positive). The grid step is the narrowest factor's standard deviation over
    ``num_points`` (default 60).
    """
    widths = [int(w) for w in widths]
    rates = np.array(widths) / 2.0
    alphas = rates + float(tilt)
    if alphas.min() <= 0:
        raise ValueError(f"tilt must exceed -min(widths)/2 = {-rates.min():g}, got {tilt!r}")
    sds = np.sqrt(special.polygamma(1, alphas))
    h = float(sds.min()) / (GRID_POINTS_PER_SD if num_points is None else check_positive_int("num_points", num_points))
    parts, start = [], 0.0
    for a, b in zip(alphas, rates):  # shape N/2 + tilt, rate N/2
        m, sd = special.digamma(a) - np.log(b), math.sqrt(special.polygamma(1, a))
        lo, hi = m - 12 * sd - 60 / a, m + 12 * sd + 4
        v = np.arange(lo, hi, h)
        logf = a * np.log(b) - special.gammaln(a) + a * v - b * np.exp(v)
        keep = logf > logf.max() - 60
        i0, i1 = np.argmax(keep), len(keep) - np.argmax(keep[::-1])
        parts.append(np.exp(logf[i0:i1]))
        start += v[i0]
    dens = parts[0]
    for p in parts[1:]:
        dens = signal.fftconvolve(dens, p) * h
        dens = np.clip(dens, 0, None)
    grid = start + h * np.arange(dens.size)
    dens = dens / integrate.trapezoid(dens, grid)
    return grid, dens


def _loglik(s, lam, noise, kappa, ytil, null_energy, num_null):
    """log p(Y | s) for an array of ``s`` (float64)."""
    var = lam * kappa[None, :] * s[:, None] + noise  # (M, R)
    ll = -0.5 * np.sum(np.log(2 * np.pi * var) + ytil[None, :] ** 2 / var, axis=1)
    if num_null:
        ll = ll - 0.5 * null_energy / noise - 0.5 * num_null * np.log(2 * np.pi * noise)
    return ll


def _pred_moments(s, lam, noise, kappa, ytil, ktil, kss):
    """m_*(s) and Sigma_*(s) for arrays of s: shapes (M, P*)."""
    var = lam * kappa[None, :] * s[:, None] + noise  # (M, R)
    mean = lam * s[:, None] * ((ytil[None, :] / var) @ ktil)
    cov = lam * s[:, None] * kss[None, :] - lam**2 * s[:, None] ** 2 * ((1 / var) @ ktil**2)
    return mean, cov


def exact_posterior_d1(
    data: RegressionData, prior: VbarPrior, *, lambda_star: float = 1.0, noise_variance: float = 1.0,
    X_test: ArrayLike | None = None, cross_gram: ArrayLike | None = None, test_gram: ArrayLike | None = None,
) -> ExactPosteriorD1:
    r"""Exact posterior of ``s = Q`` (``D = 1``), its evidence and predictive moments.

    Parameters
    ----------
    data : RegressionData
        With ``D = 1`` output.
    prior : ProportionalLimitPrior | FiniteWidthPrior | NNGPPrior
        With ``num_outputs = 1``.
    lambda_star, noise_variance : float
        Fixed hyperparameters :math:`\lambda_*`, :math:`\sigma^2`.
    X_test, cross_gram, test_gram : optional
        Test inputs as in :meth:`RegressionData.prediction_kernel` (``X_test`` is ``(P*, N0)``).

    Examples
    --------
    >>> import numpy as np
    >>> from deeplinear import RegressionData, ProportionalLimitPrior, exact_posterior_d1
    >>> rng = np.random.default_rng(0)
    >>> data = RegressionData.linear(rng.normal(size=(8, 2)), rng.normal(size=(8, 1)))
    >>> r = exact_posterior_d1(data, ProportionalLimitPrior(1.0, 1), noise_variance=0.5)
    >>> bool(r.q_mean > 0 and r.q_var > 0)
    True
    """
    check_regression_data(data)
    if data.num_outputs != 1:
        raise ValueError(f"exact references need D = 1 output, got D = {data.num_outputs}")
    if not isinstance(prior, (ProportionalLimitPrior, FiniteWidthPrior, NNGPPrior)) or prior.num_outputs != 1:
        raise ValueError(f"prior must be a deeplinear prior with num_outputs = 1, got {prior!r}")
    lam = float(check_positive_scalar("lambda_star", lambda_star))
    noise = float(check_noise_for_data(noise_variance, data))
    kappa = np.asarray(data.basis.eigenvalues, np.float64)
    ytil = np.asarray(data.rotated_labels, np.float64)[:, 0]
    null, num_null = float(data.null_energy), data.basis.num_null
    test = None
    if X_test is not None or cross_gram is not None:
        tk = data.prediction_kernel(X_test, cross_gram=cross_gram, test_gram=test_gram)
        test = (np.asarray(tk.rotated_cross, np.float64).T, np.asarray(tk.test_diag, np.float64))

    def loglik(s):
        return _loglik(np.atleast_1d(s), lam, noise, kappa, ytil, null, num_null)

    if isinstance(prior, NNGPPrior):
        pm = pv = None
        if test is not None:
            m, c = _pred_moments(np.ones(1), lam, noise, kappa, ytil, *test)
            pm, pv = m[0], c[0]
        return ExactPosteriorD1(1.0, 0.0, float(loglik(1.0)[0]), pm, pv)

    if isinstance(prior, ProportionalLimitPrior):
        a = float(prior.ratio)
        mu, sd = -a, math.sqrt(2 * a)

        def log_w(u):
            u = np.atleast_1d(u)
            return loglik(np.exp(u)) - 0.5 * ((u - mu) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))

        scan = np.linspace(mu - 15 * sd - 30, mu + 15 * sd + 30, 20001)
        lw = log_w(scan)
        mode, c = scan[np.argmax(lw)], lw.max()
        lo, hi = scan[0], scan[-1]

        def expect(fn):
            val, _ = integrate.quad(
                lambda u: fn(u) * math.exp(log_w(u)[0] - c), lo, hi, points=[mode], limit=400,
                epsabs=0, epsrel=1e-11,
            )
            return val

        z = expect(lambda u: 1.0)
        ev = lambda fn: expect(fn) / z  # noqa: E731
        m1, m2 = ev(math.exp), ev(lambda u: math.exp(2 * u))
        log_ev = float(math.log(z) + c)
        pm = pv = None
        if test is not None:
            P = test[0].shape[1]
            mom = lambda u, j, k: _pred_moments(np.array([math.exp(u)]), lam, noise, kappa, ytil, *test)[k][0, j]  # noqa: E731
            pm = np.array([ev(lambda u, j=j: mom(u, j, 0)) for j in range(P)])
            pm2 = np.array([ev(lambda u, j=j: mom(u, j, 0) ** 2) for j in range(P)])
            pc = np.array([ev(lambda u, j=j: mom(u, j, 1)) for j in range(P)])
            pv = pc + pm2 - pm**2
        return ExactPosteriorD1(m1, m2 - m1**2, log_ev, pm, pv)

    # finite width: FFT convolution of (tilted) log-Gamma densities, trapezoid rule
    rates = np.asarray(prior.widths, np.float64) / 2
    tilt = _tilt(rates, _log_likelihood_slope(lam, noise, kappa, ytil))
    grid, dens = log_product_density(prior.widths, tilt=tilt)
    with np.errstate(divide="ignore"):
        lw = loglik(np.exp(grid)) - tilt * grid + np.log(dens)
    c = lw.max()
    w = np.exp(lw - c)
    z = integrate.trapezoid(w, grid)
    w = w / z
    log_normalizer = float(np.sum(special.gammaln(rates + tilt) - special.gammaln(rates) - tilt * np.log(rates)))
    s = np.exp(grid)
    m1 = integrate.trapezoid(w * s, grid)
    m2 = integrate.trapezoid(w * s**2, grid)
    pm = pv = None
    if test is not None:
        mean, cov = _pred_moments(s, lam, noise, kappa, ytil, *test)
        pm = integrate.trapezoid(w[:, None] * mean, grid, axis=0)
        pv = integrate.trapezoid(w[:, None] * (cov + mean**2), grid, axis=0) - pm**2
    return ExactPosteriorD1(float(m1), float(m2 - m1**2), float(math.log(z) + c + log_normalizer), pm, pv)


def _tilt(rates, slope) -> float:
    r"""The tilt :math:`\theta` whose tilted prior has its mean at the posterior's saddle point.

    The cumulant generating function of :math:`u` is :math:`K(\theta) = \sum_l [\log\Gamma(a_l+\theta) -
    \log\Gamma(a_l) - \theta\log a_l]` (:math:`a_l = N_l/2`); by the saddle-point approximation
    :math:`\frac{d}{du}\log f(u) = -\theta` where :math:`K'(\theta) = u`, so the posterior mode solves
    :math:`\ell'(K'(\theta)) = \theta` (:math:`\ell` the log likelihood in ``u``), found by bracketing. No
    FFT is needed for it: the untilted convolution cannot see that far out.
    """
    lowest = 0.5 - float(rates.min())  # shapes N_l/2 + tilt stay >= 1/2

    def excess(t):
        return slope(float(np.sum(special.digamma(rates + t) - np.log(rates)))) - t

    if excess(lowest) <= 0:
        return lowest
    high = max(1.0, 2 * abs(lowest))
    while excess(high) > 0:
        high *= 2
        if high > MAX_TILT:
            raise FloatingPointError(f"no exponential tilt below {MAX_TILT:g} reaches this posterior; "
                                     "rescale the labels")
    return float(optimize.brentq(excess, lowest, high, xtol=TILT_TOLERANCE))


def _log_likelihood_slope(lam, noise, kappa, ytil):
    r""":math:`u \mapsto \frac{d}{du}\log p(Y \mid s = e^u) = -\frac s2 \sum_p \lambda_*\kappa_p
    \big(1/v_p - \tilde y_p^2/v_p^2\big)`, :math:`v_p = \lambda_*\kappa_p s + \sigma^2`."""

    def slope(u):
        s = math.exp(u)
        var = lam * kappa * s + noise
        return -0.5 * s * float(np.sum(lam * kappa * (1 / var - ytil**2 / var**2)))

    return slope
