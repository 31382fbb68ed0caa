r"""The renormalized kernel: the large-width saddle point of the posterior over ``Q`` (finite width).

At finite width the prior of ``Q`` is a chain of Wishart matrices (theory.md §2, conditioning from
the output side): :math:`Q_L \sim W_D(N_L, I/N_L)`, :math:`Q_l \mid Q_{l+1} \sim W_D(N_l, Q_{l+1}/N_l)`
for :math:`l = L-1, \dots, 1`, and :math:`Q = Q_1`. With :math:`Q_{L+1} = I` its joint log density is

.. math::

    \log \pi(Q_1, \dots, Q_L) = -\sum_{l=1}^{L} N_l\, \mathrm{KL}\big(N(0, Q_l)\,\|\,N(0, Q_{l+1})\big)
        - \frac{D+1}{2}\sum_{l=1}^L \log\det Q_l + \text{const},

    \mathrm{KL}\big(N(0, A)\,\|\,N(0, B)\big) = \tfrac12\big[\operatorname{tr}(B^{-1}A) - D
        - \log\det(B^{-1}A)\big],

and the posterior multiplies it by :math:`p(Y \mid Q_1) = \prod_p N(\tilde y_p; 0, \lambda_*\kappa_p Q_1 +
\Sigma_\varepsilon)` (theory.md §4). As the widths :math:`N_l` and the number of informative rows grow
together (``P/N`` and ``P/N0`` fixed, depth ``L`` fixed) both the prior's KL terms and the log
likelihood are of order ``N`` while the ``(D+1)/2`` terms stay of order one, so the posterior of
:math:`(Q_l)` concentrates, with fluctuations :math:`O(N^{-1/2})`, at the minimum of the **action**

.. math::

    S(Q_1, \dots, Q_L) = \sum_{l=1}^{L} N_l\, \mathrm{KL}\big(N(0, Q_l)\,\|\,N(0, Q_{l+1})\big)
        + \frac12\sum_{p=1}^{R}\Big[\log\det C_p + \tilde y_p^\top C_p^{-1}\tilde y_p\Big],
    \qquad C_p = \lambda_*\kappa_p Q_1 + \Sigma_\varepsilon .

Its minimizer :math:`\bar Q = Q_1^\star` is the **renormalized kernel**: the outputs' posterior is then
approximately Gaussian with the kernel :math:`\lambda_* \bar Q \otimes K` in place of the prior's
:math:`\lambda_* I \otimes K`, a label-dependent ``D x D`` renormalization of the output covariance.
This is the "kernel shape renormalization" of Bassetti, Gherardi, Ingrosso, Pastore and Rotondo
(JMLR 2025; arXiv 2406.03260), derived here from the package's own Wishart-chain formulation; for
``D = 1`` it is the scalar renormalization of Li and Sompolinsky (PRX 2021).

**Equal widths** (:math:`N_l = N`). Stationarity in :math:`Q_l`, :math:`2 \le l \le L`, reads
:math:`Q_l Q_{l+1}^{-1} Q_l = Q_{l-1}`: the layers lie on the geodesic from :math:`I` to :math:`Q = Q_1`,
:math:`Q_l = Q^{(L+1-l)/L}`, and the action reduces to one matrix,

.. math::

    S(Q) = \frac{NL}{2}\big[\operatorname{tr} Q^{1/L} - D\big] - \frac N2 \log\det Q
        - \log p(Y\mid Q) + \text{const};

for ``D = 1``, ``L = 1`` and interpolation (:math:`\sigma^2 = 0`, :math:`r = y^\top K^{-1}y`, :math:`\alpha = P/N`)
its minimum solves :math:`\bar q^2 - (1-\alpha)\bar q - r/(\lambda_* N) = 0`. The tests check the general
solver against both.

**Where it holds.** The derivation keeps the depth fixed while the widths grow.
``benchmarks/results/renormalized_kernel_cpu.md`` measures the distance of the renormalized predictive
from the exact posterior's (``D = 1``: exact; ``D = 2``: NUTS): at fixed ``P/N`` it falls like ``1/N``
(``N x`` distance constant from ``N = 16`` to ``1024`` at ``L = 1, 2, 4``), while the NNGP's stays near
0.5. At fixed ``N = 64``, ``P = 32`` it grows with the depth, from 0.004 at ``L = 1`` to 0.027 at
``L = 128``, and levels off there (with ``P`` of order ``N`` the likelihood, not the prior, holds the
posterior in place); from ``L/N = 1/8`` on, the proportional-limit prior with ``a = L/N`` is closer to
the finite posterior than the saddle point. The proportional-limit prior itself has no Wishart chain
to take a saddle point of: give the finite prior of its depth and width instead, or sample it with
:func:`~deeplinear.fit`.

The solver works in float64 whatever the data's precision (the unknowns are ``L`` lower Cholesky
factors, :math:`L\,D(D+1)/2` numbers, with log-diagonals), by Newton's method with a trust region
(``scipy.optimize.minimize(method="trust-exact")``, exact Hessian by JAX) from :math:`Q_l = I`, then
plain Newton steps until the gradient is below :data:`GRADIENT_TOLERANCE` times :math:`\sum_l N_l + RD`
(the trust region's test compares values of size ``N`` whose last changes are below their rounding).
The programs are compiled once per ``(L, D, R)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from deeplinear._matmul import full_precision_jit
from deeplinear._types import ArrayLike, InterceptLike, NoiseCorrelationLike, NoiseVarianceLike, ScaleLike
from deeplinear._validation import check_positive_int, describe
from deeplinear.data import RegressionData, check_regression_data
from deeplinear.inference import ConvergenceWarning
from deeplinear.models import ModelSpec
from deeplinear.predictive import PredictiveMixture
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior, VbarPrior

__all__ = ["RenormalizedKernel", "renormalized_kernel"]

GRADIENT_TOLERANCE = 1e-9  # relative to the action's scale, sum(N_l) + R D
MAX_ITERATIONS = 500
POLISH_STEPS = 5


@dataclass(frozen=True, eq=False)
class RenormalizedKernel:
    r"""The saddle point :math:`\bar Q` of the posterior over ``Q`` (module docstring).

    Attributes
    ----------
    q : ndarray ``(D, D)``
        :math:`\bar Q`, the renormalized output covariance (float64).
    layer_q : ndarray ``(L, D, D)``
        The whole chain :math:`Q_1 = \bar Q, Q_2, \dots, Q_L` at the saddle (``(0, D, D)`` for the NNGP).
    action : float
        :math:`S` at the saddle, without the terms that do not depend on ``Q``.
    gradient_norm : float
        Euclidean norm of the gradient of :math:`S` in the solver's coordinates at the end.
    iterations : int
        Newton iterations taken.
    converged : bool
        Whether the gradient met the tolerance (a :class:`~deeplinear.ConvergenceWarning` says when not).
    spec : ModelSpec
    data : RegressionData
    """

    q: np.ndarray
    layer_q: np.ndarray
    action: float
    gradient_norm: float
    iterations: int
    converged: bool
    spec: ModelSpec = field(repr=False)
    data: RegressionData = field(repr=False)

    def predict(self, X_test: ArrayLike | None = None, *, cross_gram: ArrayLike | None = None,
                test_gram: ArrayLike | None = None) -> PredictiveMixture:
        r"""The Gaussian predictive :math:`N(m_*(\bar Q), \Sigma_*(\bar Q))` at test inputs (theory.md §4),
        as a one-component :class:`~deeplinear.PredictiveMixture`; arguments as in
        :meth:`~deeplinear.PosteriorFit.predict`."""
        test = self.data.prediction_kernel(X_test, cross_gram=cross_gram, test_gram=test_gram)
        dtype = self.data.dtype
        spec = self.spec
        noise = spec.fixed_noise_covariance
        noise_variance, noise_covariance, intercept = None, None, None
        if spec.noise_model == "scalar":
            noise_variance = jnp.asarray([spec.noise_variance], dtype)
        else:
            noise_covariance = jnp.asarray(np.asarray(noise)[None], dtype)
        if spec.intercept is not None:
            intercept = jnp.asarray(np.asarray(spec.intercept)[None], dtype)
        return PredictiveMixture(jnp.asarray(self.q[None], dtype), jnp.asarray([spec.lambda_star], dtype),
                                 noise_variance, self.data, test, noise_covariance=noise_covariance,
                                 intercept=intercept)

    def __repr__(self):
        return (f"RenormalizedKernel(q={np.array2string(self.q, precision=4)}, layers={self.layer_q.shape[0]}, "
                f"converged={self.converged}, iterations={self.iterations})")


def _check_spec(spec: ModelSpec) -> None:
    if isinstance(spec.prior, ProportionalLimitPrior):
        raise ValueError(
            "renormalized_kernel needs a FiniteWidthPrior (or NNGPPrior): its action is that of the finite-width "
            "Wishart chain, which the proportional limit does not have. Give FiniteWidthPrior.from_depth_width(...) "
            "of the depth and width you mean, or sample the limit with fit()"
        )
    if spec.inferred:
        raise ValueError(
            f"renormalized_kernel takes fixed hyperparameters; {', '.join(spec.inferred)} "
            f"{'has' if len(spec.inferred) == 1 else 'have'} a prior. Fix them (e.g. at posterior means from fit())"
        )


def _unpack(theta, L: int, D: int):
    """Lower Cholesky factors ``(L, D, D)`` from ``(L, D(D+1)/2)`` numbers, log-diagonal first."""
    rows, cols = np.tril_indices(D, -1)
    diag = jnp.exp(theta[:, :D])
    c = jax.vmap(jnp.diag)(diag)
    return c.at[:, rows, cols].set(theta[:, D:])


def _action(theta, widths, kappa, rotated, lam, noise):
    r"""``S`` of the module docstring from the layers' Cholesky factors (float64)."""
    L, D = len(widths), rotated.shape[1]
    chol = _unpack(theta, L, D)
    parents = jnp.concatenate([chol[1:], jnp.eye(D, dtype=chol.dtype)[None]])
    half_logdet = jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)).sum(-1)  # log det Q_l / 2
    parent_half_logdet = jnp.concatenate([half_logdet[1:], jnp.zeros(1, chol.dtype)])
    ratio = jax.scipy.linalg.solve_triangular(parents, chol, lower=True)  # B^{-1/2} A^{1/2}
    kl = 0.5 * ((ratio**2).sum((-1, -2)) - D) + parent_half_logdet - half_logdet
    prior = jnp.sum(jnp.asarray(widths, chol.dtype) * kl)
    q = chol[0] @ chol[0].T
    c = lam * kappa[:, None, None] * q + noise
    cc = jnp.linalg.cholesky(c)
    white = jax.scipy.linalg.solve_triangular(cc, rotated[..., None], lower=True)[..., 0]
    nll = jnp.log(jnp.diagonal(cc, axis1=1, axis2=2)).sum() + 0.5 * (white**2).sum()
    return prior + nll


def _flat_action(theta, shape, *args):
    return _action(theta.reshape(shape), *args)


# compiled once per (L, D, R) and precision: a sweep over widths or data of one size reuses them
_value = full_precision_jit(_flat_action, static_argnums=1)
_gradient = full_precision_jit(jax.grad(_flat_action), static_argnums=1)
_hessian = full_precision_jit(jax.hessian(_flat_action), static_argnums=1)


def _polish(theta, shape, args, tolerance):
    """Plain Newton steps from the trust-region solution until the gradient meets ``tolerance``: near
    the minimum the trust region's test compares values of size ``N`` whose change is below their
    rounding, and stops early; Newton's steps need only the gradient."""
    for i in range(POLISH_STEPS):
        g = np.asarray(_gradient(jnp.asarray(theta), shape, *args))
        if np.linalg.norm(g) <= tolerance:
            return theta, i
        h = np.asarray(_hessian(jnp.asarray(theta), shape, *args))
        try:
            theta = theta - np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            return theta, i
    return theta, POLISH_STEPS


def renormalized_kernel(
    data: RegressionData,
    prior: VbarPrior | ModelSpec,
    *,
    lambda_star: ScaleLike = 1.0,
    noise_variance: NoiseVarianceLike = 1.0,
    noise_model: str = "scalar",
    noise_correlation: NoiseCorrelationLike | None = None,
    intercept: InterceptLike | None = None,
    max_iterations: int = MAX_ITERATIONS,
) -> RenormalizedKernel:
    r"""The renormalized kernel :math:`\bar Q = \arg\min S`: the large-width saddle point of the
    posterior over ``Q`` of a finite-width prior (module docstring for the action and its derivation).

    Parameters
    ----------
    data : RegressionData
    prior : FiniteWidthPrior | NNGPPrior | ModelSpec
        As in :func:`~deeplinear.fit`, with fixed hyperparameters only (same keywords, but no ``ratio``:
        the proportional limit has no saddle point). The NNGP gives :math:`\bar Q = I`.
    max_iterations : int, default 500
        Newton iterations before giving up with a :class:`~deeplinear.ConvergenceWarning`.

    Returns
    -------
    RenormalizedKernel
        :math:`\bar Q`, the chain at the saddle, and :meth:`RenormalizedKernel.predict`.

    Examples
    --------
    >>> import numpy as np
    >>> from deeplinear import RegressionData, FiniteWidthPrior
    >>> from deeplinear.renormalized import renormalized_kernel
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 20))
    >>> Y = X @ rng.normal(size=(20, 2)) @ np.array([[1.0, 0.9], [0.0, 0.4]]) / np.sqrt(20)
    >>> rk = renormalized_kernel(RegressionData.linear(X, Y), FiniteWidthPrior((60, 60), 2), noise_variance=0.1)
    >>> rk.converged, bool(rk.q[0, 1] > 0.1)
    (True, True)
    """
    check_regression_data(data)
    spec = ModelSpec.build(prior, lambda_star, noise_variance, None, noise_model, noise_correlation, intercept)
    spec.check_data(data)
    _check_spec(spec)
    max_iterations = check_positive_int("max_iterations", max_iterations)
    D = data.num_outputs
    if isinstance(spec.prior, NNGPPrior):
        return RenormalizedKernel(np.eye(D), np.zeros((0, D, D)), float("nan"), 0.0, 0, True, spec, data)
    if not isinstance(spec.prior, FiniteWidthPrior):  # pragma: no cover - ModelSpec admits only the three priors
        raise TypeError(f"prior must be a FiniteWidthPrior or NNGPPrior, got {describe(spec.prior)}")

    widths = np.asarray(spec.prior.widths, np.float64)
    kappa = np.asarray(data.basis.eigenvalues, np.float64)
    rotated = np.asarray(data.rotated_labels, np.float64)
    if spec.intercept is not None:
        ones = np.asarray(data.intercept_terms.rotated_ones, np.float64)  # type: ignore[union-attr]  # checked
        rotated = rotated - ones[:, None] * np.asarray(spec.intercept, np.float64)[None, :]
    noise = np.asarray(spec.fixed_noise_covariance, np.float64)
    L, n = len(widths), D * (D + 1) // 2
    scale = float(widths.sum() + kappa.size * D)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(v, jnp.float64) for v in (widths, kappa, rotated, spec.lambda_star, noise))
        shape = (L, n)
        result = optimize.minimize(
            lambda t: float(_value(jnp.asarray(t), shape, *args)), np.zeros(L * n),
            jac=lambda t: np.asarray(_gradient(jnp.asarray(t), shape, *args)),
            hess=lambda t: np.asarray(_hessian(jnp.asarray(t), shape, *args)), method="trust-exact",
            options={"gtol": GRADIENT_TOLERANCE * scale, "maxiter": max_iterations},
        )
        theta, iterations = _polish(np.asarray(result.x, np.float64), shape, args, GRADIENT_TOLERANCE * scale)
        chol = np.asarray(_unpack(jnp.asarray(theta.reshape(shape)), L, D))
        grad_norm = float(np.linalg.norm(np.asarray(_gradient(jnp.asarray(theta), shape, *args))))
        action = float(_value(jnp.asarray(theta), shape, *args))
    layer_q = chol @ np.swapaxes(chol, -1, -2)
    converged = bool(grad_norm <= GRADIENT_TOLERANCE * scale)
    if not np.all(np.isfinite(layer_q)) or not math.isfinite(action):
        raise FloatingPointError("the renormalized kernel is not finite; check the data's scale and the noise")
    if not converged:
        warnings.warn(
            f"renormalized_kernel: Newton's method stopped after {result.nit + iterations} iterations with "
            f"gradient norm {grad_norm:.3g} (tolerance {GRADIENT_TOLERANCE * scale:.3g}): {result.message}",
            ConvergenceWarning, stacklevel=2,
        )
    return RenormalizedKernel(layer_q[0], layer_q, action, grad_norm, int(result.nit) + iterations, converged, spec,
                              data)
