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
:meth:`~deeplinear.RegressionData.prediction_kernel`. (The direct form subtracts two terms of size
:math:`\lambda_* \|Q\| k_{**}` to leave one of size :math:`\sigma^2/\kappa`: in float32 it lost
everything at :math:`\sigma^2 = 10^{-6}`; see ``docs/numerical_range.md``.)

The posterior predictive is the mixture :math:`\int N(m_*(Q), \Sigma_*(Q))\,\pi(dQ \mid Y)`,
estimated over posterior draws: mean :math:`E[m_*]`, covariance
:math:`E[\Sigma_*] + \operatorname{Cov}(m_*)`. Everything is vectorized over draws. Rows are
test inputs: means are ``(P*, D)``, per-input covariances ``(P*, D, D)``, joint covariances
``(P*, D, P*, D)`` and samples ``(..., P*, D)``.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from deeplinear._linalg import batched_map, gaussian_logpdf, psd_root, whiten_q, whiten_rows
from deeplinear._matmul import full_precision_jit
from deeplinear._random import normal
from deeplinear._types import ArrayLike, KeyLike, Shape
from deeplinear._validation import (
    check_bool,
    check_draw_hyperparameters,
    check_intercept,
    check_key,
    check_labels,
    check_one_draw_noise,
    check_positive_int,
    check_positive_scalar,
    check_progress_bar,
    check_sample_shape,
    is_concrete,
)
from deeplinear.data import PredictionKernel, RegressionData, check_joint_size, check_regression_data

__all__ = ["PredictiveMixture", "conditional_predictive", "correlation_matrix", "predictive_moments"]


def _check_prediction_kernel(test, data):
    if not isinstance(test, PredictionKernel):
        raise TypeError(
            f"test must be a PredictionKernel (from data.prediction_kernel(...)), got {type(test).__name__}"
        )
    if test.rotated_cross.shape[-1] != data.basis.rank:
        raise ValueError(
            f"test has rank {test.rotated_cross.shape[-1]} but data's kernel has rank {data.basis.rank}; "
            "build it with this data's prediction_kernel(...)"
        )
    return test


def conditional_predictive(q: ArrayLike, lambda_star: ArrayLike, noise_variance: ArrayLike | None, data: RegressionData,
                           test: PredictionKernel, joint: bool = False, *, noise_covariance: ArrayLike | None = None,
                           intercept: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Gaussian predictive of the outputs ``f`` at test inputs given one ``Q``.

    Returns ``(mean, cov)``: ``mean`` ``(P*, D)`` is :math:`m_*(Q)`; ``cov`` is
    :math:`\Sigma_*(Q)` per test input ``(P*, D, D)`` or, with ``joint=True``, the joint
    ``(P*, D, P*, D)``, both in the cancellation-free form of the module docstring. Cost
    :math:`O(D^3 + R D^2 + R P_* D + P_* D^2)` per input set (``joint``: :math:`P_*^2` in
    place of :math:`P_*`). Arguments are validated when concrete (not under ``jit``). A general
    output-noise covariance :math:`\Sigma_\varepsilon` (``noise_covariance`` ``(D, D)``,
    ``noise_variance=None``) is handled by whitening (:func:`_whitened`); with per-output
    intercepts :math:`\mu` (``intercept`` ``(D,)``) it is the predictive of :math:`f + \mu` given
    :math:`Y - 1\mu^\top`.
    """
    check_regression_data(data)
    _check_prediction_kernel(test, data)
    q = jnp.asarray(q, data.dtype)
    D = data.num_outputs
    if q.shape != (D, D):
        raise ValueError(f"q must have shape ({D}, {D}), got {q.shape}")
    if is_concrete(q) and not bool(jnp.all(jnp.isfinite(q))):
        raise ValueError("q contains NaN or infinite values")
    check_positive_scalar("lambda_star", lambda_star)
    check_bool("joint", joint)
    if intercept is not None:
        intercept = _draw_intercepts(intercept, 1, data)[0]
    noise = check_one_draw_noise(noise_variance, noise_covariance, data)
    return _conditional(q, lambda_star, noise, data, test, joint, intercept)


def _whitened(q, noise, data, intercept=None):
    r"""``(q, noise, rotated labels, factor)`` in coordinates where the noise is :math:`\sigma^2 I`: as
    given for a scalar ``noise`` (``factor`` None); for a ``(D, D)`` noise covariance
    :math:`\Sigma_\varepsilon = LL^\top`, :math:`\tilde Q = L^{-1}QL^{-\top}`, labels :math:`L^{-1}\tilde y_p`,
    noise 1 and ``factor`` :math:`L`. A predictive computed there maps back by :math:`f = L\tilde f`
    (theory.md §4: the predictive formulas hold with :math:`\sigma^2 I` replaced by :math:`\Sigma_\varepsilon`).
    With an ``intercept`` :math:`\mu` the rotated labels are those of :math:`Y - 1\mu^\top`."""
    dtype = q.dtype
    rotated = data.rotated_labels.astype(dtype)
    if intercept is not None:  # labels Y - 1 mu^T (InterceptTerms)
        rotated = rotated - data.intercept_terms.rotated_ones.astype(dtype)[:, None] * intercept.astype(dtype)
    if jnp.ndim(noise) != 2:
        return q, noise, rotated, None
    factor = jnp.linalg.cholesky(jnp.asarray(noise, dtype))
    return whiten_q(q, factor), jnp.ones((), dtype), whiten_rows(rotated, factor), factor


def _eigen_gain(q, lambda_star, noise_variance, data, rotated):
    r"""One draw in the eigenbasis of ``Q = V diag(w) V^T``: ``(lam, noise, kappa, V, gain, labels)``,
    ``gain`` ``(R, D)`` the eigenvalues of :math:`\lambda Q C_p^{-1}` and ``labels`` the rows
    :math:`V^\top \tilde y_p` of the rotated labels ``rotated`` ``(R, D)``."""
    dtype = q.dtype
    lam = jnp.asarray(lambda_star, dtype)
    noise = jnp.asarray(noise_variance, dtype)
    kappa = data.basis.eigenvalues.astype(dtype)  # (R,)
    w, vecs = jnp.linalg.eigh((q + q.T) / 2)
    w = jnp.clip(w, 0)  # rounding can make tiny eigenvalues negative
    denom = lam * kappa[:, None] * w + noise  # (R, D): eigenvalues of C_p
    positive = denom > 0
    gain = jnp.where(positive, lam * w / jnp.where(positive, denom, 1), 0)
    labels = rotated @ vecs  # (R, D)
    return lam, noise, kappa, vecs, gain, labels


def _conditional(q, lambda_star, noise_variance, data, test, joint=False, intercept=None):
    r""":func:`conditional_predictive` without validation (for use under ``jit``/``map``);
    ``noise_variance`` is a scalar or a ``(D, D)`` noise covariance (:func:`_whitened`); with an
    ``intercept`` :math:`\mu` the mean is that of :math:`f + \mu` given :math:`Y - 1\mu^\top`."""
    dtype = q.dtype
    q, noise_variance, rotated, factor = _whitened(q, noise_variance, data, intercept)
    lam, noise, kappa, vecs, gain, labels = _eigen_gain(q, lambda_star, noise_variance, data, rotated)
    kt = test.rotated_cross.astype(dtype)  # (P*, R)
    mean = (kt @ (gain * labels)) @ vecs.T  # (P*, D)
    shrink = noise * gain  # (R, D): eigenvalues of sigma^2 lambda Q C_p^-1
    if joint:
        resid = test.residual_gram.astype(dtype)  # (P*, P*), built on request
        weights = jnp.einsum("jp,kp,pe->jke", kt, kt / kappa, shrink)
        cov = lam * jnp.einsum("jk,de->jdke", resid, q) + jnp.einsum("de,jke,fe->jdkf", vecs, weights, vecs)
    else:
        resid = test.residual_diag.astype(dtype)  # (P*,): per-input predictions never build P* x P*
        weights = (kt**2 / kappa) @ shrink  # (P*, D)
        cov = lam * resid[:, None, None] * q + jnp.einsum("de,je,fe->jdf", vecs, weights, vecs)
    if factor is not None:
        mean = mean @ factor.T
        cov = jnp.einsum("ad,jdke,be->jakb", factor, cov, factor) if joint else factor @ cov @ factor.T
    return (mean if intercept is None else mean + intercept.astype(dtype)), cov


@partial(full_precision_jit, static_argnames="batch_size")
def _all_draws(q, lam, noise, mu, data, test, batch_size):
    """Per-draw predictive mean and per-input covariance, ``(S, P*, D)`` and ``(S, P*, D, D)``
    (``mu``: intercepts ``(S, D)`` or None); module-level so that repeated calls with the same
    shapes reuse the compiled code."""
    return jax.lax.map(lambda a: _conditional(*a[:3], data, test, intercept=a[3]), (q, lam, noise, mu),
                       batch_size=batch_size)


MEMORY_BUDGET_ENTRIES = 2**25  # numbers held per batch of draws (128 MB in float32): bounds b * P* * D^2
TEST_BATCH = 4096  # test inputs per step when the moments come from the draws' summaries
LPD_CHUNK_PAIRS = 2**21  # draw-input pairs per chunk of pointwise log densities (about a second on a core)


def _batches(a, batch_size: int):
    """``(S, ...)`` -> ``(ceil(S / b), b, ...)``, padded by repeating the first draw (``None`` stays ``None``)."""
    if a is None:
        return None
    S = a.shape[0]
    num = -(-S // batch_size)
    pad = num * batch_size - S
    if pad:
        a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)])
    return a.reshape((num, batch_size) + a.shape[1:])


def _draw_weights(S: int, batch_size: int, dtype):
    """1 for real draws, 0 for the padding of the last batch, shaped like :func:`_batches`."""
    num = -(-S // batch_size)
    return (jnp.arange(num * batch_size) < S).astype(dtype).reshape(num, batch_size)


@partial(full_precision_jit, static_argnames="batch_size")
def _mixture_moments(q, lam, noise, mu, data, test, batch_size):
    r"""Mixture mean ``(P*, D)``, :math:`E[\Sigma_*]` and :math:`\operatorname{Cov}(m_*)` ``(P*, D, D)``,
    accumulated over batches of ``batch_size`` draws in two passes (the mean, then the spread
    about it, exactly as from the stored per-draw arrays): memory ``O(b P* D^2)``, never
    ``(S, P*, D, D)``."""
    S = q.shape[0]
    P, D = test.num_test, data.num_outputs
    args = (_batches(q, batch_size), _batches(lam, batch_size), _batches(noise, batch_size), _batches(mu, batch_size),
            _draw_weights(S, batch_size, q.dtype))
    per_draw = jax.vmap(lambda q1, l1, n1, m1: _conditional(q1, l1, n1, data, test, intercept=m1))

    def sums(acc, a):
        mean, cov = per_draw(*a[:4])
        return (acc[0] + jnp.tensordot(a[4], mean, 1), acc[1] + jnp.tensordot(a[4], cov, 1)), None

    zero_cov = jnp.zeros((P, D, D), q.dtype)
    (sum_mean, sum_cov), _ = jax.lax.scan(sums, (jnp.zeros((P, D), q.dtype), zero_cov), args)
    mean = sum_mean / S

    def spread(acc, a):
        dev = per_draw(*a[:4])[0] - mean  # the covariances are not used: compiled away
        return acc + jnp.einsum("s,sjd,sje->jde", a[4], dev, dev), None

    sum_spread, _ = jax.lax.scan(spread, zero_cov, args)
    return mean, sum_cov / S, sum_spread / S


def _draw_tensors(q, lambda_star, noise_variance, intercept, data):
    r"""One draw's predictive in terms that do not depend on the test inputs: with
    :math:`Q = V\operatorname{diag}(w)V^\top`, ``gain``/``shrink`` as in :func:`_conditional`,

    * ``A`` ``(R + 1, D)``: :math:`m_{*j} = \sum_p \tilde k_{jp} A_p + A_{R+1}` (``A = (gain * labels) V^T``,
      and the last row the intercept :math:`\mu`, zero without one);
    * ``B`` ``(R, D, D)``: :math:`B_p = V \operatorname{diag}(\text{shrink}_p) V^\top`;
    * :math:`\lambda Q` ``(D, D)``,

    so that :math:`\Sigma_{*j} = k_{\perp,j}\,\lambda Q + \sum_p (\tilde k_{jp}^2/\kappa_p) B_p`."""
    lam_q = jnp.asarray(lambda_star, q.dtype) * q
    q, noise_variance, rotated, factor = _whitened(q, noise_variance, data, intercept)
    lam, noise, _, vecs, gain, labels = _eigen_gain(q, lambda_star, noise_variance, data, rotated)
    A = (gain * labels) @ vecs.T
    B = jnp.einsum("de,pe,fe->pdf", vecs, noise * gain, vecs)
    if factor is not None:  # back from whitened coordinates (f = L f-tilde)
        A, B = A @ factor.T, factor @ B @ factor.T
    last = jnp.zeros((1, A.shape[1]), A.dtype) if intercept is None else intercept.astype(A.dtype)[None]
    return jnp.concatenate([A, last]), B, lam_q


@partial(full_precision_jit, static_argnames="batch_size")
def _mixture_moments_from_draw_summaries(q, lam, noise, mu, data, test, batch_size):
    r""":func:`_mixture_moments` in ``O(S R^2 D^2 + P_* R^2 D^2)`` instead of ``O(S P_* R D^2)``: the
    per-draw predictive is linear in the draw's ``A``, ``B``, :math:`\lambda Q` (:func:`_draw_tensors`),
    so :math:`E[m_*] = \tilde k\,\bar A`, :math:`E[\Sigma_*] = k_\perp E[\lambda Q] + (\tilde k^2/\kappa)\,\bar B`
    and :math:`\operatorname{Cov}(m_{*j}) = \sum_{pq} \tilde k_{jp} \tilde k_{jq} \operatorname{Cov}(A_p, A_q)`
    (two passes over the draws: the means, then the spread about them). Exact, not an
    approximation; used when ``R`` is small next to ``S`` and ``(R D)^2`` fits the memory budget."""
    S = q.shape[0]
    dtype = q.dtype
    args = (_batches(q, batch_size), _batches(lam, batch_size), _batches(noise, batch_size), _batches(mu, batch_size),
            _draw_weights(S, batch_size, dtype))
    per_draw = jax.vmap(partial(_draw_tensors, data=data))

    def sums(acc, a):
        A, B, lq = per_draw(*a[:4])
        return tuple(x + jnp.tensordot(a[4], y, 1) for x, y in zip(acc, (A, B, lq))), None

    R, D = data.basis.rank, data.num_outputs
    zeros = (jnp.zeros((R + 1, D), dtype), jnp.zeros((R, D, D), dtype), jnp.zeros((D, D), dtype))
    (sum_a, sum_b, sum_lq), _ = jax.lax.scan(sums, zeros, args)
    mean_a, mean_b, mean_lq = sum_a / S, sum_b / S, sum_lq / S

    def spread(acc, a):
        dev = per_draw(*a[:4])[0] - mean_a  # (b, R + 1, D)
        return acc + jnp.einsum("s,spd,sqe->pdqe", a[4], dev, dev), None

    cov_a, _ = jax.lax.scan(spread, jnp.zeros((R + 1, D, R + 1, D), dtype), args)
    cov_a = cov_a / S
    kappa = data.basis.eigenvalues.astype(dtype)

    def one_input(row):  # O(R^2 D^2) per test input, mapped in batches: memory O(batch R D^2)
        k, resid = row
        k1 = jnp.concatenate([k, jnp.ones((1,), dtype)])  # the intercept's row of A
        return (k1 @ mean_a, resid * mean_lq + jnp.einsum("p,pdf->df", k**2 / kappa, mean_b),
                jnp.einsum("p,pdqe,q->de", k1, cov_a, k1))

    rows = (test.rotated_cross.astype(dtype), test.residual_diag.astype(dtype))
    return batched_map(one_input, rows, TEST_BATCH)


def _moments(q, lam, noise, mu, data, test, batch_size):
    """The mixture moments by whichever of the two exact forms costs less (see
    :func:`_mixture_moments_from_draw_summaries`)."""
    R, D, S = data.basis.rank, data.num_outputs, q.shape[0]
    if R < S and ((R + 1) * D) ** 2 <= MEMORY_BUDGET_ENTRIES:
        return _mixture_moments_from_draw_summaries(q, lam, noise, mu, data, test, min(batch_size, S))
    return _mixture_moments(q, lam, noise, mu, data, test, batch_size)


@partial(full_precision_jit, static_argnames="batch_size")
def _pointwise_log_density(q, lam, noise, mu, data, test, Y_test, batch_size):
    r""":math:`\log \frac1S \sum_s N(y_{*j}; m_{*j}(Q_s), \Sigma_{*jj}(Q_s) + \sigma_s^2 I)` for each test
    input ``j``, ``(P*,)``, with a running log-sum-exp over batches of draws: memory ``O(b P* D^2)``,
    never ``(S, P*)``."""
    S = q.shape[0]
    P, D = test.num_test, data.num_outputs
    args = (_batches(q, batch_size), _batches(lam, batch_size), _batches(noise, batch_size), _batches(mu, batch_size),
            _draw_weights(S, batch_size, q.dtype))

    def one(q1, lam1, noise1, mu1):
        mean, cov = _conditional(q1, lam1, noise1, data, test, intercept=mu1)
        return gaussian_logpdf(Y_test - mean, jnp.linalg.cholesky(cov + _noise_matrix(noise1, D)))  # (P*,)

    def step(carry, a):
        top, total = carry
        lp = jnp.where(a[4][:, None] > 0, jax.vmap(one)(*a[:4]), -jnp.inf)  # (b, P*); padding counts 0
        new_top = jnp.maximum(top, lp.max(axis=0))
        total = total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(lp - new_top), axis=0)
        return (new_top, total), None

    start = (jnp.full((P,), -jnp.inf, q.dtype), jnp.zeros((P,), q.dtype))
    (top, total), _ = jax.lax.scan(step, start, args)
    return top + jnp.log(total) - jnp.log(S)


def _noise_matrix(noise, D: int):
    r"""The ``D x D`` noise covariance of one draw: :math:`\sigma^2 I_D` for a scalar ``noise``, else ``noise``."""
    return noise if jnp.ndim(noise) == 2 else noise * jnp.eye(D, dtype=jnp.result_type(noise))


def _draw_intercepts(intercept, num_draws: int, data):
    """Per-draw intercepts ``(S, D)`` in the data's precision (validated), or ``None``."""
    if intercept is None:
        return None
    check_intercept(intercept, data.num_outputs, num_draws=num_draws)
    if data.intercept_terms is None:
        raise ValueError("intercepts need data.intercept_terms; set the data up with this version of deeplinear")
    return jnp.broadcast_to(jnp.asarray(intercept, data.dtype), (num_draws, data.num_outputs))


def predictive_moments(q: ArrayLike, lambda_star: ArrayLike, noise_variance: ArrayLike | None, data: RegressionData,
                       test: PredictionKernel, *, batch_size: int = 256, noise_covariance: ArrayLike | None = None,
                       intercept: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Mixture mean ``(P*, D)`` and per-input covariance ``(P*, D, D)`` of the predictive over draws
    ``q`` ``(S, D, D)``: :math:`E[m_*]` and :math:`E[\Sigma_*] + \operatorname{Cov}(m_*)` (of ``f``,
    without noise), as :meth:`PredictiveMixture.mean` and :meth:`PredictiveMixture.covariance`.

    Pure and jittable: with :func:`deeplinear.data.linear_prediction_kernel` the whole prediction
    can run inside your own ``jit`` (arguments are validated when concrete, not under a trace).
    ``batch_size`` draws at a time; memory ``O(batch_size P* D^2)``. A general output-noise
    covariance: ``noise_covariance`` ``(S, D, D)`` or ``(D, D)`` with ``noise_variance=None``.
    Per-output intercepts :math:`\mu` (``intercept`` ``(S, D)`` or ``(D,)``): the predictive of
    :math:`f + \mu` given the labels :math:`Y - 1\mu^\top`, draw by draw.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    check_regression_data(data)
    _check_prediction_kernel(test, data)
    q = jnp.asarray(q, data.dtype)
    D = data.num_outputs
    if q.ndim != 3 or q.shape[1:] != (D, D):
        raise ValueError(f"q must have shape (S, D, D) with D = {D}, got {q.shape}")
    lam, noise = check_draw_hyperparameters(lambda_star, noise_variance, q.shape[0], data, noise_covariance)
    mu = _draw_intercepts(intercept, q.shape[0], data)
    mean, expected_cov, spread = _moments(q, lam, noise, mu, data, test, min(batch_size, q.shape[0]))
    return mean, expected_cov + spread


def _check_finite(what: str, *arrays) -> None:
    """Results are finite before they are returned (the argument checks make this the rule; a
    failure here names the quantity and the remedy rather than returning NaN)."""
    if all(is_concrete(a) for a in arrays) and not all(bool(jnp.all(jnp.isfinite(a))) for a in arrays):
        raise FloatingPointError(
            f"{what} are not finite in this precision; rescale the inputs and labels (e.g. standardize "
            "them), use a larger noise_variance, or float64 (jax_enable_x64)"
        )


def correlation_matrix[T: (np.ndarray, jax.Array)](cov: T) -> T:
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
        :math:`\lambda_*` and the noise variance :math:`\sigma^2` (noise :math:`\sigma^2 I_D`);
        ``noise_variance=None`` with ``noise_covariance``.
    data : RegressionData
        Training data (kernel eigenbasis and rotated labels).
    test : PredictionKernel
        Kernel quantities at the test inputs (:meth:`RegressionData.prediction_kernel`).
    batch_size : int, default 256
        Draws processed at once (memory bound).
    noise_covariance : array ``(S, D, D)`` or ``(D, D)``, optional
        A general output-noise covariance :math:`\Sigma_\varepsilon` per draw, in place of
        :math:`\sigma^2 I_D` (per-output or correlated noise, theory.md §4).
    intercept : array ``(S, D)`` or ``(D,)``, optional
        Per-output intercepts :math:`\mu` per draw: the mixture is then that of :math:`f + \mu`
        (each draw conditioned on :math:`Y - 1\mu^\top`), whose mean includes the intercept.

    Notes
    -----
    Raises ``FloatingPointError`` (naming the quantity and the remedy) rather than returning a
    non-finite mean, covariance or log density; the argument checks of
    :class:`~deeplinear.data.RegressionData` and :meth:`~deeplinear.data.RegressionData.prediction_kernel`
    refuse, before any compilation, the magnitudes that would cause one.
    """

    def __init__(self, q: ArrayLike, lambda_star: ArrayLike, noise_variance: ArrayLike | None, data: RegressionData,
                 test: PredictionKernel, batch_size: int = 256, *, noise_covariance: ArrayLike | None = None,
                 intercept: ArrayLike | None = None) -> None:
        check_regression_data(data)
        _check_prediction_kernel(test, data)
        q = jnp.asarray(q, data.dtype)
        if q.ndim != 3 or q.shape[1:] != (data.num_outputs,) * 2:
            raise ValueError(f"q must have shape (S, D, D) with D = {data.num_outputs}, got {q.shape}")
        S = q.shape[0]
        if S == 0:
            raise ValueError("q must hold at least one draw, got shape (0, D, D)")
        lam, noise = check_draw_hyperparameters(lambda_star, noise_variance, S, data, noise_covariance)
        if not bool(jnp.all(jnp.isfinite(q))):
            raise ValueError("q contains NaN or infinite values")
        self.q = q
        self.lambda_star = lam
        self._noise = noise  # (S,) variances or (S, D, D) covariances
        self._intercept = _draw_intercepts(intercept, S, data)  # (S, D) or None
        self.data = data
        self.test = test
        self.batch_size = check_positive_int("batch_size", batch_size)
        self._draw_means = None
        self._draw_covs = None
        self._moments = None

    @property
    def noise_variance(self) -> jax.Array | None:
        r"""Per-draw noise variances ``(S,)`` under :math:`\sigma^2 I_D` noise, else ``None``."""
        return None if self._noise.ndim == 3 else self._noise

    @property
    def intercept(self) -> jax.Array | None:
        """Per-draw intercepts ``(S, D)``, or ``None`` for a model without intercepts."""
        return self._intercept

    @property
    def noise_covariance(self) -> jax.Array:
        r"""Per-draw output-noise covariances ``(S, D, D)`` (:math:`\sigma^2 I_D` for scalar noise)."""
        if self._noise.ndim == 3:
            return self._noise
        return self._noise[:, None, None] * jnp.eye(self.data.num_outputs, dtype=self._noise.dtype)

    @property
    def num_draws(self) -> int:
        """``S``, the number of posterior draws in the mixture."""
        return self.q.shape[0]

    @property
    def num_test(self) -> int:
        """``P*``, the number of test inputs."""
        return self.test.num_test

    def _draw_batch(self, num_test: int | None = None) -> int:
        """Draws per batch: ``batch_size``, lowered so that a batch holds at most
        ``MEMORY_BUDGET_ENTRIES`` numbers (``b P* D^2``; ``num_test`` test inputs, default all)."""
        per_draw = max((self.num_test if num_test is None else num_test) * self.data.num_outputs**2, 1)
        return max(1, min(self.batch_size, self.num_draws, MEMORY_BUDGET_ENTRIES // per_draw))

    def _mixture(self):
        if self._moments is None:
            moments = _moments(
                self.q, self.lambda_star, self._noise, self._intercept, self.data, self.test, self._draw_batch()
            )
            _check_finite("the predictive means and covariances", *moments)
            self._moments = moments
        return self._moments

    def _compute(self):
        if self._draw_means is None:
            means, covs = _all_draws(
                self.q, self.lambda_star, self._noise, self._intercept, self.data, self.test, self.batch_size
            )
            _check_finite("the predictive means and covariances", means, covs)
            self._draw_means, self._draw_covs = means, covs
        return self._draw_means, self._draw_covs

    def _pointwise_terms(self, Y_test: jax.Array, progress_bar: bool) -> jax.Array:
        """The ``P*`` pointwise log predictive densities, in chunks of test inputs when there are more
        than ``LPD_CHUNK_PAIRS`` draw-input pairs (the last chunk padded, so all share one program)."""
        P, S = self.num_test, self.num_draws
        rows = max(1, LPD_CHUNK_PAIRS // S)
        if rows >= P:
            return _pointwise_log_density(self.q, self.lambda_star, self._noise, self._intercept, self.data,
                                          self.test, Y_test, self._draw_batch(P))
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=P, desc="log predictive density", unit="input")
        terms = []
        try:
            for start in range(0, P, rows):
                take = min(rows, P - start)
                index = jnp.minimum(jnp.arange(start, start + rows), P - 1)  # the padding repeats the last input
                test = PredictionKernel(self.test.rotated_cross[index], self.test.test_diag[index],
                                        self.test.residual_diag[index])
                chunk = _pointwise_log_density(self.q, self.lambda_star, self._noise, self._intercept, self.data,
                                               test, Y_test[index], self._draw_batch(rows))
                terms.append(jax.block_until_ready(chunk[:take]))  # waited for, so that the bar tells the truth
                if bar is not None:
                    bar.update(take)
        finally:
            if bar is not None:
                bar.close()
        return jnp.concatenate(terms)

    @property
    def draw_means(self) -> jax.Array:
        r""":math:`m_*(Q_s)` for every draw, ``(S, P*, D)`` (stored on first use: ``O(S P* D)`` memory)."""
        return self._compute()[0]

    @property
    def draw_covariances(self) -> jax.Array:
        r""":math:`\Sigma_*(Q_s)` per test input for every draw, ``(S, P*, D, D)`` (stored on first
        use: ``O(S P* D^2)`` memory; :meth:`covariance` does not need it)."""
        return self._compute()[1]

    @property
    def mean(self) -> jax.Array:
        r"""Predictive mean :math:`E[m_*(Q) \mid Y]`, ``(P*, D)`` (accumulated over batches of draws)."""
        return self._mixture()[0]

    def covariance(self, include_noise: bool = False) -> jax.Array:
        r"""Per-input ``D x D`` predictive covariance :math:`E[\Sigma_*] + \operatorname{Cov}(m_*)`,
        ``(P*, D, D)``; ``include_noise`` adds :math:`E[\Sigma_\varepsilon]` (new labels, not ``f``).
        Accumulated over batches of draws: memory ``O(b P* D^2)``, time ``O(S P* R D^2)``."""
        include_noise = check_bool("include_noise", include_noise)
        _, expected_cov, spread = self._mixture()
        cov = expected_cov + spread
        if include_noise:
            cov = cov + jnp.mean(self.noise_covariance, axis=0)
        return cov

    def correlation(self) -> jax.Array:
        """Per-input predictive correlation between outputs, ``(P*, D, D)``."""
        return correlation_matrix(self.covariance())

    def joint_covariance(self, include_noise: bool = False) -> jax.Array:
        r"""Joint predictive covariance over all test inputs and outputs, ``(P*, D, P*, D)``."""

        include_noise = check_bool("include_noise", include_noise)

        def step(acc, a):
            mean, cov = _conditional(*a[:3], self.data, self.test, True, a[3])
            return (acc[0] + cov, acc[1] + jnp.einsum("jd,ke->jdke", mean, mean)), None

        P, D = self.num_test, self.data.num_outputs
        check_joint_size(P, D)
        zero = jnp.zeros((P, D, P, D), self.q.dtype)
        draws = (self.q, self.lambda_star, self._noise, self._intercept)
        (sum_cov, sum_mm), _ = jax.lax.scan(step, (zero, zero), draws)
        S = self.num_draws
        m = self.mean
        cov = sum_cov / S + sum_mm / S - jnp.einsum("jd,ke->jdke", m, m)
        if include_noise:
            noise = jnp.mean(self.noise_covariance, axis=0)
            cov = cov + jnp.einsum("jk,de->jdke", jnp.eye(P, dtype=cov.dtype), noise)
        return cov

    def sample(self, key: KeyLike, sample_shape: Shape = (), include_noise: bool = False) -> jax.Array:
        r"""Joint draws from the mixture, ``sample_shape + (P*, D)``: pick a posterior draw
        uniformly, then :math:`f_* \sim N(m_*(Q), \Sigma_*(Q))` jointly over the test inputs
        (plus :math:`\Sigma_\varepsilon` noise with ``include_noise``: new labels instead of ``f``)."""
        key = check_key(key)
        sample_shape = check_sample_shape(sample_shape)
        include_noise = check_bool("include_noise", include_noise)
        P, D = self.num_test, self.data.num_outputs
        check_joint_size(P, D)
        n = math.prod(sample_shape)
        if n == 0:
            return jnp.zeros(sample_shape + (P, D), self.q.dtype)

        def one(k):
            k1, k2, k3 = jax.random.split(k, 3)
            s = jax.random.randint(k1, (), 0, self.num_draws)
            lam, noise = self.lambda_star[s], self._noise[s]
            mu = None if self._intercept is None else self._intercept[s]
            mean, cov = _conditional(self.q[s], lam, noise, self.data, self.test, joint=True, intercept=mu)
            root = psd_root(cov.reshape(P * D, P * D))  # row-major over (test input, output)
            f = (mean.reshape(-1) + root @ jax.random.normal(k2, (P * D,), self.q.dtype)).reshape(P, D)
            if include_noise:
                noise_root = jnp.linalg.cholesky(_noise_matrix(noise, D))
                f = f + normal(k3, (P, D), self.q.dtype) @ noise_root.T
            return f

        out = batched_map(one, jax.random.split(key, n), self.batch_size)
        return out.reshape(sample_shape + (P, D))

    def log_predictive_density(self, Y_test: ArrayLike, joint: bool = False, pointwise: bool = False, *,
                               progress_bar: bool | None = None) -> jax.Array:
        r"""Held-out log predictive density of labels ``Y_test`` (``(P*, D)``, one row per test input).

        ``joint=False`` (default): :math:`\sum_j \log \frac1S \sum_s N(y_{*j}; m_{*j}(Q_s),
        \Sigma_{*jj}(Q_s) + \Sigma_{\varepsilon,s})`, the usual pointwise sum (:math:`\Sigma_{\varepsilon,s} =
        \sigma_s^2 I` for scalar noise); with ``pointwise=True`` its ``P*`` terms (an array), e.g. for
        the standard error of a paired difference between models. ``joint=True``: :math:`\log \frac1S \sum_s
        N(\operatorname{vec} Y_*; m_*(Q_s), \Sigma_*(Q_s) + I_{P_*}\otimes\Sigma_{\varepsilon,s})`.

        The pointwise terms cost :math:`O(S P_* D^3)`: about a microsecond per draw and test input
        on a CPU core (4000 draws and :math:`10^5` test inputs: minutes). Above ``LPD_CHUNK_PAIRS``
        draw-input pairs they are computed in chunks of test inputs (one compiled program for
        all chunks), with a progress bar over the test inputs when ``progress_bar`` (default: when
        interactive).
        """
        P, D = self.num_test, self.data.num_outputs
        Y_test = jnp.asarray(check_labels(Y_test, num_obs=P, num_outputs=D, name="Y_test"), self.q.dtype)
        joint = check_bool("joint", joint)
        pointwise = check_bool("pointwise", pointwise)
        progress_bar = check_progress_bar(progress_bar)
        if joint and pointwise:
            raise ValueError("pointwise=True gives one term per test input; the joint density has no such terms")
        if not joint:
            terms = self._pointwise_terms(Y_test, progress_bar)
            _check_finite("the held-out log predictive density", terms)
            return terms if pointwise else jnp.sum(terms)
        check_joint_size(P, D)

        def per_draw(a):
            q, lam, noise, mu = a
            mean, cov = _conditional(q, lam, noise, self.data, self.test, joint=True, intercept=mu)
            c = cov.reshape(P * D, P * D) + jnp.kron(jnp.eye(P, dtype=q.dtype), _noise_matrix(noise, D))
            return gaussian_logpdf((Y_test - mean).reshape(-1), jnp.linalg.cholesky(c))

        lp = batched_map(per_draw, (self.q, self.lambda_star, self._noise, self._intercept), self.batch_size)
        lpd = jnp.sum(jax.scipy.special.logsumexp(lp, axis=0) - jnp.log(self.num_draws))
        _check_finite("the held-out log predictive density", lpd)
        return lpd

    def __repr__(self):
        return (
            f"PredictiveMixture(num_draws={self.num_draws}, num_outputs={self.data.num_outputs}, "
            f"num_test={self.num_test})"
        )
