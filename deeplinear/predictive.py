r"""Posterior predictive mixtures at new inputs (theory.md §4).

Given ``Q`` (and :math:`\lambda_*`, :math:`\sigma^2`), the network outputs at a test
input :math:`x_*` are Gaussian with, in the eigenbasis of ``K``
(:math:`\tilde k = U_R^\top k_*`, :math:`C_p = \lambda_*\kappa_p Q + \sigma^2 I`),

.. math::

    m_*(Q) = \lambda_* Q \sum_p C_p^{-1} \tilde y_p\, \tilde k_p, \qquad
    \Sigma_*(Q)(x_*, x_*') = \lambda_* Q\, k(x_*, x_*') - \lambda_*^2 \sum_p \tilde k_p \tilde k'_p\,
        Q C_p^{-1} Q .

The covariance is evaluated in a form without cancellation: with
:math:`k(x_*, x_*') = \sum_p \tilde k_p \tilde k'_p/\kappa_p + k_\perp(x_*, x_*')` and
:math:`\lambda_* Q/\kappa_p - \lambda_*^2 Q C_p^{-1} Q = \sigma^2 \lambda_* Q C_p^{-1}/\kappa_p`,

.. math::

    \Sigma_*(Q)(x_*, x_*') = \lambda_* Q\, k_\perp(x_*, x_*')
        + \sigma^2 \sum_p \frac{\tilde k_p \tilde k'_p}{\kappa_p}\, \lambda_* Q C_p^{-1},

a sum of positive semi-definite terms. With :math:`Q = W \operatorname{diag}(w) W^\top`,
:math:`\lambda_* Q C_p^{-1} = W \operatorname{diag}\big(\lambda_* w / (\lambda_*\kappa_p w + \sigma^2)\big) W^\top`,
so one ``eigh`` of ``Q`` per draw serves every ``p``; :math:`k_\perp` comes in float64 from
:meth:`~deeplinear.RegressionData.test_kernel`. (The direct form subtracts two terms of size
:math:`\lambda_* \|Q\| k_{**}` to leave one of size :math:`\sigma^2/\kappa`: in float32 it lost
everything at :math:`\sigma^2 = 10^{-6}`; see ``docs/numerical_range.md``.)

The posterior predictive is the mixture :math:`\int N(m_*(Q), \Sigma_*(Q))\,\pi(dQ \mid Y)`,
estimated over posterior draws: mean :math:`E[m_*]`, covariance
:math:`E[\Sigma_*] + \operatorname{Cov}(m_*)`. Everything is vectorized over draws.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from deeplinear._checks import check_key, check_positive_int
from deeplinear.data import RegressionData, TestKernel, check_labels
from deeplinear.likelihood import psd_root

__all__ = ["PredictiveMixture", "conditional_predictive", "correlation_matrix"]

_LOG_2PI = math.log(2 * math.pi)


def conditional_predictive(q, lambda_star, noise_variance, data: RegressionData, test: TestKernel, joint=False):
    r"""Gaussian predictive of the outputs ``f`` at test inputs given one ``Q``.

    Returns ``(mean, cov)``: ``mean`` ``(D, P*)`` is :math:`m_*(Q)`; ``cov`` is
    :math:`\Sigma_*(Q)` per test input ``(P*, D, D)`` or, with ``joint=True``, the joint
    ``(P*, D, P*, D)``, both in the cancellation-free form of the module docstring. Cost
    :math:`O(D^3 + R D^2 + R P_* D + P_* D^2)` per input set (``joint``: :math:`P_*^2` in
    place of :math:`P_*`).
    """
    dtype = q.dtype
    lam = jnp.asarray(lambda_star, dtype)
    noise = jnp.asarray(noise_variance, dtype)
    kappa = data.basis.eigenvalues.astype(dtype)  # (R,)
    w, vecs = jnp.linalg.eigh((q + q.T) / 2)
    w = jnp.clip(w, 0)  # rounding can make tiny eigenvalues negative
    denom = lam * kappa[:, None] * w + noise  # (R, D): eigenvalues of C_p
    positive = denom > 0
    gain = jnp.where(positive, lam * w / jnp.where(positive, denom, 1), 0)  # eigenvalues of lambda Q C_p^-1
    kt = test.rotated_cross.astype(dtype)  # (R, P*)
    labels = data.rotated_labels.T.astype(dtype) @ vecs  # (R, D): W^T y_p
    mean = vecs @ ((gain * labels).T @ kt)
    shrink = noise * gain  # (R, D): eigenvalues of sigma^2 lambda Q C_p^-1
    resid = test.residual_gram.astype(dtype)
    if joint:
        weights = jnp.einsum("pj,pk,pe->jke", kt, kt / kappa[:, None], shrink)
        cov = lam * jnp.einsum("jk,de->jdke", resid, q) + jnp.einsum("de,jke,fe->jdkf", vecs, weights, vecs)
    else:
        weights = (kt**2 / kappa[:, None]).T @ shrink  # (P*, D)
        cov = lam * jnp.diagonal(resid)[:, None, None] * q + jnp.einsum("de,je,fe->jdf", vecs, weights, vecs)
    return mean, cov


@partial(jax.jit, static_argnames="batch_size")
def _all_draws(q, lam, noise, data, test, batch_size):
    """Per-draw predictive mean and per-input covariance, ``(S, D, P*)`` and ``(S, P*, D, D)``;
    module-level so that repeated calls with the same shapes reuse the compiled code."""
    fn = partial(conditional_predictive, data=data, test=test)
    return jax.lax.map(lambda a: fn(*a), (q, lam, noise), batch_size=batch_size)


def correlation_matrix(cov):
    r"""Correlations :math:`\Sigma_{de} / \sqrt{\Sigma_{dd}\Sigma_{ee}}` of covariance
    matrices ``(..., D, D)`` (e.g. draws of ``Q``); a NumPy array in, a NumPy array out (its
    dtype kept), a JAX array in, a JAX array out."""
    sd = cov.diagonal(axis1=-2, axis2=-1) ** 0.5
    return cov / (sd[..., :, None] * sd[..., None, :])


class PredictiveMixture:
    r"""Posterior predictive mixture of the outputs at test inputs, over ``S`` posterior draws.

    Construct it with :meth:`deeplinear.PosteriorFit.predict` or directly from draws.

    Parameters
    ----------
    q : array ``(S, D, D)``
        Posterior draws of :math:`Q`.
    lambda_star, noise_variance : arrays ``(S,)`` or scalars
    data : RegressionData
        Training data (kernel eigenbasis and rotated labels).
    test : TestKernel
        Kernel quantities at the test inputs (:meth:`RegressionData.test_kernel`).
    batch_size : int, default 256
        Draws processed at once (memory bound).
    """

    def __init__(self, q, lambda_star, noise_variance, data: RegressionData, test: TestKernel, batch_size=256):
        q = jnp.asarray(q, data.dtype)
        if q.ndim != 3 or q.shape[1:] != (data.num_outputs,) * 2:
            raise ValueError(f"q must have shape (S, D, D) with D = {data.num_outputs}, got {q.shape}")
        if not isinstance(data, RegressionData):
            raise TypeError(f"data must be a RegressionData, got {type(data).__name__}")
        if not isinstance(test, TestKernel):
            raise TypeError(f"test must be a TestKernel (from data.test_kernel(...)), got {type(test).__name__}")
        S = q.shape[0]
        if S == 0:
            raise ValueError("q must hold at least one draw, got shape (0, D, D)")
        for name, value in (("q", q), ("lambda_star", lambda_star), ("noise_variance", noise_variance)):
            arr = jnp.asarray(value)
            if not isinstance(arr, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(arr))):
                raise ValueError(f"{name} contains NaN or infinite values")
        self.q = q
        self.lambda_star = jnp.broadcast_to(jnp.asarray(lambda_star, data.dtype), (S,))
        self.noise_variance = jnp.broadcast_to(jnp.asarray(noise_variance, data.dtype), (S,))
        self.data = data
        self.test = test
        self.batch_size = check_positive_int("batch_size", batch_size)
        self._draw_means = None
        self._draw_covs = None

    @property
    def num_draws(self) -> int:
        """``S``, the number of posterior draws in the mixture."""
        return self.q.shape[0]

    @property
    def num_test(self) -> int:
        """``P*``, the number of test inputs."""
        return self.test.test_gram.shape[0]

    def _compute(self):
        if self._draw_means is None:
            self._draw_means, self._draw_covs = _all_draws(
                self.q, self.lambda_star, self.noise_variance, self.data, self.test, self.batch_size
            )
        return self._draw_means, self._draw_covs

    @property
    def draw_means(self):
        r""":math:`m_*(Q_s)` for every draw, ``(S, D, P*)``."""
        return self._compute()[0]

    @property
    def draw_covariances(self):
        r""":math:`\Sigma_*(Q_s)` per test input for every draw, ``(S, P*, D, D)``."""
        return self._compute()[1]

    @property
    def mean(self):
        r"""Predictive mean :math:`E[m_*(Q) \mid Y]`, ``(D, P*)``."""
        return jnp.mean(self.draw_means, axis=0)

    def covariance(self, include_noise: bool = False):
        r"""Per-input ``D x D`` predictive covariance :math:`E[\Sigma_*] + \operatorname{Cov}(m_*)`,
        ``(P*, D, D)``; ``include_noise`` adds :math:`E[\sigma^2] I` (new labels, not ``f``)."""
        m = self.draw_means
        dev = m - m.mean(axis=0)
        cov = self.draw_covariances.mean(axis=0) + jnp.einsum("sdj,sej->jde", dev, dev) / m.shape[0]
        if include_noise:
            cov = cov + jnp.mean(self.noise_variance) * jnp.eye(m.shape[1], dtype=m.dtype)
        return cov

    def correlation(self):
        """Per-input predictive correlation between outputs, ``(P*, D, D)``."""
        return correlation_matrix(self.covariance())

    def joint_covariance(self, include_noise: bool = False):
        r"""Joint predictive covariance over all test inputs and outputs, ``(P*, D, P*, D)``."""

        def step(acc, a):
            mean, cov = conditional_predictive(*a, data=self.data, test=self.test, joint=True)
            return (acc[0] + cov, acc[1] + jnp.einsum("dj,ek->jdke", mean, mean)), None

        P, D = self.num_test, self.data.num_outputs
        zero = jnp.zeros((P, D, P, D), self.q.dtype)
        (sum_cov, sum_mm), _ = jax.lax.scan(step, (zero, zero), (self.q, self.lambda_star, self.noise_variance))
        S = self.num_draws
        m = self.mean
        cov = sum_cov / S + sum_mm / S - jnp.einsum("dj,ek->jdke", m, m)
        if include_noise:
            cov = cov + jnp.mean(self.noise_variance) * jnp.eye(P * D, dtype=cov.dtype).reshape(P, D, P, D)
        return cov

    def sample(self, key, num_samples: int, include_noise: bool = False):
        r"""Joint draws from the mixture, ``(num_samples, D, P*)``: pick a posterior draw
        uniformly, then :math:`f_* \sim N(m_*(Q), \Sigma_*(Q))` (plus noise if asked)."""
        key = check_key(key)
        num_samples = check_positive_int("num_samples", num_samples)
        P, D = self.num_test, self.data.num_outputs

        def one(k):
            k1, k2, k3 = jax.random.split(k, 3)
            s = jax.random.randint(k1, (), 0, self.num_draws)
            mean, cov = conditional_predictive(
                self.q[s], self.lambda_star[s], self.noise_variance[s], self.data, self.test, joint=True
            )
            root = psd_root(jnp.transpose(cov, (1, 0, 3, 2)).reshape(D * P, D * P))  # output-major
            f = mean.reshape(-1) + root @ jax.random.normal(k2, (D * P,), self.q.dtype)
            f = f.reshape(D, P)
            if include_noise:
                f = f + jnp.sqrt(self.noise_variance[s]) * jax.random.normal(k3, (D, P), self.q.dtype)
            return f

        return jax.lax.map(one, jax.random.split(key, num_samples), batch_size=self.batch_size)

    def log_predictive_density(self, Y_test, joint: bool = False):
        r"""Held-out log predictive density of labels ``Y_test`` (``D x P*``).

        ``joint=False`` (default): :math:`\sum_j \log \frac1S \sum_s N(y_{*j}; m_{*j}(Q_s),
        \Sigma_{*jj}(Q_s) + \sigma_s^2 I)`, the usual pointwise sum. ``joint=True``:
        :math:`\log \frac1S \sum_s N(\operatorname{vec} Y_*; m_*(Q_s), \Sigma_*(Q_s) + \sigma_s^2 I)`.
        """
        P, D = self.num_test, self.data.num_outputs
        Y_test = jnp.asarray(check_labels(Y_test, P, "Y_test"), self.q.dtype)
        if Y_test.shape[0] != D:
            raise ValueError(f"Y_test has {Y_test.shape[0]} rows but the model has D = {D} outputs")
        eye = jnp.eye(D, dtype=self.q.dtype)

        def per_draw(a):
            q, lam, noise = a
            mean, cov = conditional_predictive(q, lam, noise, self.data, self.test, joint=joint)
            if joint:
                c = jnp.transpose(cov, (1, 0, 3, 2)).reshape(D * P, D * P) + noise * jnp.eye(D * P, dtype=q.dtype)
                return _mvn_logpdf((Y_test - mean).reshape(-1), c)
            c = cov + noise * eye
            return jax.vmap(_mvn_logpdf)((Y_test - mean).T, c)

        lp = jax.lax.map(per_draw, (self.q, self.lambda_star, self.noise_variance), batch_size=self.batch_size)
        lpd = jax.scipy.special.logsumexp(lp, axis=0) - jnp.log(self.num_draws)
        return jnp.sum(lpd)

    def __repr__(self):
        return (
            f"PredictiveMixture(num_draws={self.num_draws}, num_outputs={self.data.num_outputs}, "
            f"num_test={self.num_test})"
        )


def _mvn_logpdf(x, cov):
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, x, lower=True)
    return -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * x.shape[0] * _LOG_2PI

