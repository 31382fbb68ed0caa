r"""The Gaussian likelihood of a deep linear network given ``Q`` (theory.md §4).

.. math::

    \operatorname{vec} Y \mid Q \sim N\!\left(0,\ \lambda_* Q \otimes K + \sigma^2 I_{DP}\right),

evaluated in the eigenbasis of ``K`` (see :mod:`deeplinear.data`): with
:math:`C_p = \lambda_* \kappa_p Q + \sigma^2 I_D`,

.. math::

    \log p(Y \mid Q) = \sum_{p=1}^{R} \log N(\tilde y_p; 0, C_p)
      - \frac{(P-R) D}{2} \log(2\pi\sigma^2) - \frac{\|Y_\perp\|_F^2}{2\sigma^2},

``R`` factorizations of ``D x D`` matrices per evaluation. Labels are ``(P, D)``, one
observation per row (theory.md's :math:`Y` is their transpose; :mod:`deeplinear.data`).
This module holds the distribution and its exact leave-one-input-out terms.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve, solve_triangular
from numpyro import distributions as dist
from numpyro.distributions import constraints

from deeplinear._linalg import (
    LOG_2PI,
    batched_map,
    block_cholesky_from_root,
    block_covariances,
    gaussian_logpdf,
    psd_root,
    whiten_q,
    whiten_rows,
)
from deeplinear._matmul import full_precision
from deeplinear._random import normal
from deeplinear._types import ArrayLike
from deeplinear._validation import (
    check_draw_hyperparameters,
    check_intercept,
    check_noise_covariance,
    check_noise_for_data,
    check_one_draw_noise,
    check_positive_int,
    check_positive_scalar,
    is_concrete,
)
from deeplinear.cache import reuse_traces
from deeplinear.data import RegressionData, check_regression_data

__all__ = ["KroneckerNormal", "loo_log_likelihood", "loo_log_likelihood_draws"]


def _relative_deviance(x, dtype):
    r""":math:`h(x) = \log x + 1/x - 1 \ge 0` (zero at ``x = 1``), as :math:`\log(1 + d) - d/(1 + d)`,
    :math:`d = x - 1`, for :math:`|d| < 1/2` (free of cancellation), with safe arguments in both
    branches (no NaN gradients)."""
    x = jnp.maximum(x, jnp.finfo(dtype).tiny)
    d = x - 1
    near = jnp.abs(d) < 0.5
    d_near = jnp.where(near, d, 0.0)
    x_far = jnp.where(near, 2.0, x)
    return jnp.where(near, jnp.log1p(d_near) - d_near / (1 + d_near), jnp.log(x_far) + 1 / x_far - 1)


def _null_term_scalar(null_energy, noise_variance, n, dtype, relative):
    r"""Null-space columns under :math:`\sigma^2 I`: :math:`-\tfrac n2 \log(2\pi\sigma^2) - E/(2\sigma^2)`
    (``n = (P - R) D`` entries, energy ``E``); ``relative``: :math:`-\tfrac n2 h(\sigma^2/\hat\sigma^2)`,
    :math:`\hat\sigma^2 = E/n` (:func:`_relative_deviance`), the same less the data constant
    :math:`\tfrac n2 (\log 2\pi\hat\sigma^2 + 1)`."""
    noise = jnp.asarray(noise_variance, dtype)
    absolute = -0.5 * null_energy / noise - 0.5 * n * (LOG_2PI + jnp.log(noise))
    if not relative:
        return absolute
    has_energy = null_energy > 0
    scale = jnp.where(has_energy, null_energy / n, 1.0)  # sigma-hat^2 (a safe 1 when E = 0)
    return jnp.where(has_energy, -0.5 * n * _relative_deviance(noise / scale, dtype), absolute)


def _null_term_matrix(null_scatter, noise_factor, num_null, dtype, relative):
    r"""Null-space columns under :math:`\Sigma_\varepsilon = LL^\top`: :math:`\sum_p \log N(\tilde y_p; 0,
    \Sigma_\varepsilon)` over the ``n = P - R`` null directions, from their scatter ``S`` (``D x D``):
    :math:`-\tfrac n2 (D\log 2\pi + \log\det\Sigma_\varepsilon) - \tfrac12\operatorname{tr}(\Sigma_\varepsilon^{-1} S)`.

    ``relative``: with :math:`\hat\Sigma = S/n = L_S L_S^\top` and the lower-triangular
    :math:`A = L_S^{-1} L`,

    .. math:: \log\det(\Sigma_\varepsilon\hat\Sigma^{-1}) + \operatorname{tr}(\Sigma_\varepsilon^{-1} \hat\Sigma) - D
        = \sum_i h(A_{ii}^2) + \sum_{i > j} (A^{-1})_{ij}^2

    (:func:`_relative_deviance`; :math:`(A^{-1})_{ii} = 1/A_{ii}`), a sum of non-negative terms
    without cancellation, and the term is :math:`-\tfrac n2` times that: the absolute value less the data constant
    :math:`\tfrac n2(D \log 2\pi + \log\det\hat\Sigma + D)`. Where :math:`\hat\Sigma` is singular
    (``n < D``, or labels confined to a subspace) the absolute value is used."""
    D = noise_factor.shape[-1]
    eye = jnp.eye(D, dtype=dtype)
    scatter = jnp.asarray(null_scatter, dtype)
    logdet = 2 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(noise_factor, axis1=-2, axis2=-1))), axis=-1)
    shape = jnp.broadcast_shapes(scatter.shape, noise_factor.shape)
    noise_factor = jnp.broadcast_to(noise_factor, shape)
    half = solve_triangular(noise_factor, jnp.broadcast_to(scatter, shape), lower=True)
    trace = jnp.trace(solve_triangular(noise_factor, jnp.swapaxes(half, -1, -2), lower=True), axis1=-2, axis2=-1)
    absolute = -0.5 * num_null * (D * LOG_2PI + logdet) - 0.5 * trace
    if not relative:
        return absolute
    ref = jnp.linalg.cholesky(scatter / num_null)
    diag_ref = jnp.diagonal(ref)
    usable = jnp.all(jnp.isfinite(ref)) & jnp.all(diag_ref > jnp.sqrt(jnp.finfo(dtype).eps) * jnp.max(
        jnp.abs(diag_ref)))
    ref = jnp.where(usable, ref, eye)  # safe in the unused branch
    a = solve_triangular(ref, noise_factor, lower=True)  # (..., D, D), lower
    a_inv = solve_triangular(a, jnp.broadcast_to(eye, a.shape), lower=True)
    diag = jnp.diagonal(a, axis1=-2, axis2=-1)
    off = jnp.sum(jnp.tril(a_inv, -1) ** 2, axis=(-2, -1))
    deviance = jnp.sum(_relative_deviance(diag**2, dtype), axis=-1) + off
    return jnp.where(usable, -0.5 * num_null * deviance, absolute)


def relative_constant(data, *, matrix_noise: bool, intercept: bool) -> float:
    r"""The data constant that ``relative=True`` leaves out of :meth:`KroneckerNormal.data_log_prob`,
    in float64: absolute = relative + this (zero without a null space).

    Scalar noise (:func:`_null_term_scalar`): :math:`-\tfrac n2(\log 2\pi\hat\sigma^2 + 1)`,
    ``n = (P - R) D``, :math:`\hat\sigma^2 = E/n` (zero when :math:`E = 0`). Per-output or full noise
    (:func:`_null_term_matrix`): :math:`-\tfrac n2(D\log 2\pi + \log\det\hat\Sigma + D)`, ``n = P - R``,
    :math:`\hat\Sigma = S/n` (zero where :math:`\hat\Sigma` is numerically singular, as there). With
    ``intercept`` the scatter is the centred one, :math:`S_c`."""
    n = data.basis.num_null
    if not n:
        return 0.0
    D = data.num_outputs
    scatter = data.intercept_terms.centred_null_scatter if intercept else data.null_scatter
    scatter = np.asarray(scatter, np.float64)
    if not matrix_noise:
        energy, size = float(np.trace(scatter)), n * D
        return -0.5 * size * (np.log(2 * np.pi * energy / size) + 1) if energy > 0 else 0.0
    try:
        diag = np.diagonal(np.linalg.cholesky(scatter / n))
    except np.linalg.LinAlgError:
        return 0.0
    if not np.all(diag > np.sqrt(np.finfo(data.dtype).eps) * diag.max()):
        return 0.0
    return -0.5 * n * (D * LOG_2PI + 2 * np.sum(np.log(diag)) + D)


def _rotated_log_prob(chol, rotated, null_scatter, noise_variance, num_null, relative=False, noise_factor=None,
                      null_shift=None):
    r"""Log density from factors ``(..., R, D, D)`` of the blocks and rotated labels ``(..., R, D)``,
    plus the null-space term from the labels' null-space scatter ``(D, D)``: under :math:`\sigma^2 I`
    (:func:`_null_term_scalar`) or, with ``noise_factor``, under :math:`\Sigma_\varepsilon`
    (:func:`_null_term_matrix`). With intercepts the scatter is the data's centred one
    :math:`S_c` and ``null_shift`` is :math:`w = \sqrt{n_1}(\mu - \hat\mu)` ``(..., D)``
    (:class:`~deeplinear.data.InterceptTerms`): the scatter of :math:`Y - 1\mu^\top` is
    :math:`S_c + ww^\top`, which adds :math:`-\tfrac12 w^\top\Sigma_\varepsilon^{-1}w` (the reference of
    the relative form stays :math:`S_c`, a constant of the data).

    With ``relative`` the null-space term leaves out a constant that depends only on the data.
    At ``P = 10^7`` that constant is ~10^7, whose float32 rounding (~1) would swamp the energy
    differences NUTS needs; the relative form is ``O(1)`` near the posterior."""
    D = chol.shape[-1]
    lp = jnp.sum(gaussian_logpdf(rotated, chol), axis=-1)
    if isinstance(num_null, jax.Array) or num_null:  # an array: the sampler's view, which has a null space
        if noise_factor is None:
            energy = jnp.trace(null_scatter, axis1=-2, axis2=-1)
            null = _null_term_scalar(energy, noise_variance, num_null * D, chol.dtype, relative)
        else:
            null = _null_term_matrix(null_scatter, noise_factor, num_null, chol.dtype, relative)
        lp = lp + null
        if null_shift is not None:
            if noise_factor is None:
                lp = lp - 0.5 * jnp.sum(null_shift**2, axis=-1) / jnp.asarray(noise_variance, chol.dtype)
            else:
                z = whiten_rows(null_shift[..., None, :], noise_factor)[..., 0, :]
                lp = lp - 0.5 * jnp.sum(z**2, axis=-1)
    return lp


class KroneckerNormal(dist.Distribution):
    r"""Labels ``Y`` (``(P, D)``, one observation per row) of a deep linear network given ``Q``:
    :math:`\operatorname{vec} Y^\top \sim N(0, \lambda_* Q \otimes K + \sigma^2 I)`.

    ``K`` enters through ``data`` (a :class:`~deeplinear.data.RegressionData`, which holds
    its eigenbasis). ``log_prob`` costs :math:`O(P R D)` to rotate its value plus
    :math:`O(R D^3)`; with ``labels_are_data=True`` it uses the rotation of ``data.labels``
    precomputed by :class:`~deeplinear.data.RegressionData` and costs only :math:`O(R D^3)` --
    this is what the models do, with ``obs=data.labels``.

    Parameters
    ----------
    q : array ``(..., D, D)``
        Output covariance factor :math:`Q` (symmetric positive semi-definite; a singular ``Q``
        needs ``noise_variance > 0``).
    lambda_star : float or array ``(...)``
        Prior scale :math:`\lambda_*`.
    noise_variance : float or array ``(...)``, or None
        :math:`\sigma^2 \ge 0` (noise :math:`\sigma^2 I_D`); ``0`` is interpolation and needs
        ``rank K = P``. ``None`` when ``noise_covariance`` is given.
    data : RegressionData
        Kernel eigenbasis (and, optionally, the observed labels).
    root : array ``(..., D, D)``, optional
        A factor with :math:`Q = V V^\top` (the models pass :math:`\bar V`). When given, the
        blocks are factored in square-root form (:func:`deeplinear._linalg.block_cholesky_from_root`),
        which stays finite in float32 where :math:`Q` is very ill-conditioned (large ``a``, large ``D``).
    labels_are_data : bool, default False
        Declare that ``log_prob`` will be called on ``data.labels`` (``obs=data.labels``), so the
        precomputed rotation is used. A concrete value that differs from ``data.labels`` is then
        an error.
    noise_covariance : array ``(..., D, D)``, optional
        A general output-noise covariance :math:`\Sigma_\varepsilon` (symmetric positive definite;
        per-output variances are a diagonal one) in place of :math:`\sigma^2 I_D`:
        :math:`\operatorname{vec} Y^\top \sim N(0, \lambda_* Q\otimes K + \Sigma_\varepsilon \otimes I_P)`, blocks
        :math:`C_p = \lambda_*\kappa_p Q + \Sigma_\varepsilon`, at the same cost (theory.md §4).
    intercept : array ``(..., D)``, optional
        Per-output intercepts :math:`\mu`: the labels are :math:`1\mu^\top` plus the zero-mean
        Gaussian above. With ``labels_are_data`` this costs :math:`O(R D)` more per evaluation
        (:class:`~deeplinear.data.InterceptTerms`); otherwise the value is shifted and rotated.
    relative : bool, default False
        With ``labels_are_data``: ``log_prob`` leaves out a constant that depends only on the data,
        :math:`\tfrac n2(\log 2\pi\hat\sigma^2 + 1)` with ``n = (P - R) D`` and
        :math:`\hat\sigma^2` the null-space energy over ``n`` (see ``_rotated_log_prob``), so the
        value stays ``O(1)`` near the posterior however large ``P``. The models set it: NUTS needs
        energy differences of order one, which float32 cannot resolve against a log density of
        ``-10^7`` (at ``P = 10^7`` the chains stalled with step sizes ~1e-5 and R-hat 2.2).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from deeplinear import RegressionData, KroneckerNormal
    >>> data = RegressionData.linear(np.eye(5, 3), np.ones((5, 2)))
    >>> d = KroneckerNormal(jnp.eye(2), 1.0, 0.5, data)
    >>> d.event_shape
    (5, 2)
    >>> bool(jnp.isfinite(d.log_prob(data.labels)))
    True
    """

    arg_constraints = {
        # PSD up to rounding, checked in __init__: a deep prior's Q = Vbar Vbar^T can be singular in
        # float32 (its eigenvalues round to -1e-30), which NumPyro's exact PSD test would refuse
        "q": constraints.real_matrix,
        "lambda_star": constraints.positive,
        "noise_variance": constraints.nonnegative,
    }
    support = constraints.real_matrix
    pytree_data_fields = ("q", "lambda_star", "noise_variance", "noise_covariance", "noise_factor", "data", "root")
    pytree_aux_fields = ("labels_are_data", "relative")

    def __init__(
        self, q: ArrayLike, lambda_star: ArrayLike, noise_variance: ArrayLike | None, data: RegressionData, *,
        root: ArrayLike | None = None, labels_are_data: bool = False, relative: bool = False,
        noise_covariance: ArrayLike | None = None, intercept: ArrayLike | None = None,
        validate_args: bool | None = None,
    ) -> None:
        check_regression_data(data)
        check_positive_scalar("lambda_star", lambda_star)
        q = jnp.asarray(q)
        D = data.num_outputs
        if noise_covariance is None:
            check_noise_for_data(noise_variance, data)
            noise_factor = None
        else:
            if noise_variance is not None:
                raise ValueError("give noise_variance (noise sigma^2 I) or noise_covariance, not both")
            noise_covariance = jnp.asarray(check_noise_covariance(noise_covariance, data), q.dtype)
            noise_factor = jnp.linalg.cholesky(noise_covariance)
        if q.ndim < 2 or q.shape[-2:] != (D, D):
            raise ValueError(f"q must have shape (..., {D}, {D}) for D = {D} outputs, got {q.shape}")
        if intercept is not None:
            intercept = jnp.asarray(check_intercept(intercept, D), q.dtype)
            if labels_are_data and data.intercept_terms is None:
                raise ValueError("an intercept with labels_are_data needs data.intercept_terms (set up by this "
                                 "version of deeplinear)")
        if root is None and is_concrete(q):
            q64 = np.asarray(q, np.float64)
            eig = np.linalg.eigvalsh((q64 + np.swapaxes(q64, -1, -2)) / 2)
            if not np.all(np.isfinite(eig)) or np.any(eig.min(-1) < -1e-6 * np.maximum(eig.max(-1), 0)):
                raise ValueError("q must be finite, symmetric and positive semi-definite (Q = Vbar Vbar^T)")
        if root is not None:
            root = jnp.asarray(root, q.dtype)
            if root.shape[-2:] != (D, D):
                raise ValueError(f"root must have shape (..., {D}, {D}), got {root.shape}")
        self.q = q
        self.root = root
        self.lambda_star = jnp.asarray(lambda_star, q.dtype)
        self.noise_variance = None if noise_variance is None else jnp.asarray(noise_variance, q.dtype)
        self.noise_covariance = noise_covariance
        self.noise_factor = noise_factor
        self.intercept = intercept
        self.data = data
        self.labels_are_data = bool(labels_are_data)
        self.relative = bool(relative) and self.labels_are_data
        batch = q.shape[:-2] if noise_factor is None else jnp.broadcast_shapes(q.shape[:-2], noise_factor.shape[:-2])
        if intercept is not None:
            batch = jnp.broadcast_shapes(batch, intercept.shape[:-1])
        if noise_variance is None:  # noise_covariance instead: NumPyro's argument validation skips the absent one
            self.arg_constraints = {k: c for k, c in type(self).arg_constraints.items() if k != "noise_variance"}
        super().__init__(batch, (data.num_obs, D), validate_args=validate_args)

    @classmethod
    def for_draw(cls, q: ArrayLike, lambda_star: ArrayLike, noise: ArrayLike, data: RegressionData,
                 **kwargs: Any) -> KroneckerNormal:
        r"""The likelihood of one draw whose ``noise`` is a variance :math:`\sigma^2` (scalar) or a
        ``(D, D)`` noise covariance, as the per-draw loops hold it (``kwargs`` as in the constructor)."""
        if np.ndim(noise) == 2:
            return cls(q, lambda_star, None, data, noise_covariance=noise, **kwargs)
        return cls(q, lambda_star, noise, data, **kwargs)

    def block_cholesky(self) -> jax.Array:
        """Lower factors of the blocks :math:`C_p`, shape ``batch + (R, D, D)`` (square-root
        form when ``root`` was given)."""
        if self.root is not None:
            eigenvalues = self.data.basis.eigenvalues
            return block_cholesky_from_root(self.root, self.lambda_star, self.noise_variance, eigenvalues,
                                            self.noise_factor)
        c = block_covariances(self.q, self.lambda_star, self.noise_variance, self.data.basis.eigenvalues,
                              self.noise_factor)
        return jnp.linalg.cholesky(c)

    @full_precision
    def log_prob(self, value: ArrayLike) -> jax.Array:
        r""":math:`\log N(\operatorname{vec} Y^\top; 0, \lambda_* Q\otimes K + \sigma^2 I)` from the block factors."""
        if self.labels_are_data:
            labels = self.data.labels
            if labels is None:  # streamed set-up: only the rotated labels are kept
                return self.data_log_prob()
            if np.shape(value) != labels.shape:
                raise ValueError(
                    f"labels_are_data=True: the value must be data.labels {labels.shape}, got {np.shape(value)}"
                )
            if value is not labels and is_concrete(value) and is_concrete(labels):
                if not np.array_equal(np.asarray(value), np.asarray(labels)):
                    raise ValueError("labels_are_data=True but log_prob was called on labels other than data.labels")
            return self.data_log_prob()
        value = jnp.asarray(value, self.q.dtype)
        if self.intercept is not None:
            value = value - self.intercept[..., None, :]
        rotated, null = self.data.basis.rotate(value)
        chol = self.block_cholesky()
        # batch of chol (batch, R, D, D) broadcasts against the value's rotated labels (..., R, D)
        lp = _rotated_log_prob(chol, rotated, null, self.noise_variance, self.data.basis.num_null, self.relative,
                               self.noise_factor)
        return lp + self._learned_kernel_term(chol, rotated)

    def data_log_prob(self) -> jax.Array:
        r""":meth:`log_prob` of ``data``'s own labels, from their rotation and null-space scatter
        (:math:`O(R D^3)`; the only form for data set up by streaming, which keep no labels);
        less the data constant when ``relative``. With an intercept, from the data's
        :class:`~deeplinear.data.InterceptTerms` in :math:`O(R D)` more."""
        chol = self.block_cholesky()
        rotated, scatter, shift = self.data.rotated_labels, self.data.null_scatter, None
        if self.intercept is not None:
            terms = self.data.require_intercept_terms()
            rotated = rotated - terms.rotated_ones[:, None] * self.intercept[..., None, :]
            scatter = terms.centred_null_scatter
            shift = jnp.sqrt(terms.null_ones) * (self.intercept - terms.null_mean)
        lp = _rotated_log_prob(chol, rotated, scatter, self.noise_variance, self.data.basis.null_count, self.relative,
                               self.noise_factor, shift)
        return lp + self._learned_kernel_term(chol, rotated)

    def _learned_kernel_term(self, chol, rotated):
        r"""For data with a learned Gram matrix (:meth:`RegressionData.learned_gram`, whose ``eigh`` is
        not differentiated): a term that is zero in value and whose gradient with respect to ``K`` is
        the exact :math:`\partial\log p/\partial K` of :math:`N(\operatorname{vec} Y^\top; 1\mu^\top,
        \lambda_* Q\otimes K + \Sigma_\varepsilon\otimes I)`, namely

        .. math:: G = \tfrac12\left(A\,\lambda_* Q\, A^\top - \sum_p u_p u_p^\top
            \operatorname{tr}(C_p^{-1}\lambda_* Q)\right) = \frac{\lambda_*}{2}\,U\left(ZQZ^\top -
            \operatorname{diag}_p t_p\right)U^\top,

        from :math:`d\log N = \tfrac12\alpha^\top dC\,\alpha - \tfrac12\operatorname{tr}(C^{-1}dC)`
        with :math:`dC = \lambda_* Q\otimes dK`, :math:`\alpha = C^{-1}\operatorname{vec}(Y - 1\mu^\top)`
        reshaped to :math:`A = UZ` (``P x D``; :math:`z_p = C_p^{-1} r_p` for the rotated residuals
        :math:`r_p`) and :math:`C^{-1} = \sum_p u_pu_p^\top\otimes C_p^{-1}`,
        :math:`t_p = \operatorname{tr}(C_p^{-1}Q)`. No eigenvalue gap appears, so the gradient stays
        exact at repeated or clustered eigenvalues, where differentiating ``eigh`` divides by zero.
        Returns ``sum(stop_gradient(G) * (K - stop_gradient(K)))``: value 0, gradient ``G`` with
        respect to ``K``, none with respect to anything else (their gradients flow through the
        eigenbasis, held fixed)."""
        gram = self.data.traced_gram
        if gram is None:
            return 0.0
        sg = jax.lax.stop_gradient
        chol, rotated = sg(chol), sg(rotated)
        dtype = chol.dtype
        q = sg(self.q).astype(dtype)
        z = solve_triangular(chol, rotated[..., None], lower=True)
        z = solve_triangular(jnp.swapaxes(chol, -1, -2), z, lower=False)[..., 0]  # C_p^-1 r_p, (..., P, D)
        half = solve_triangular(chol, jnp.broadcast_to(q[..., None, :, :], chol.shape), lower=True)
        t = jnp.trace(solve_triangular(chol, jnp.swapaxes(half, -1, -2), lower=True), axis1=-2, axis2=-1)
        inner = jnp.einsum("...pd,...de,...re->...pr", z, q, z) - t[..., :, None] * jnp.eye(t.shape[-1], dtype=dtype)
        U = self.data.basis.eigenvectors.astype(dtype)
        lam = sg(self.lambda_star).astype(dtype)[..., None, None]
        grad = 0.5 * lam * (U @ inner @ U.T)
        gram = jnp.asarray(gram, dtype)
        return jnp.sum(sg(grad) * (gram - sg(gram)), axis=(-2, -1))

    @full_precision
    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        r""":math:`Y = \sqrt{\lambda_*}\, (U_R \sqrt{\kappa})\, G\, \mathrm{chol}(Q)^\top + \sigma E`,
        ``G`` ``(R, D)``."""
        self.data.require_rows("sampling labels")
        basis = self.data.basis
        dtype = self.q.dtype
        shape = tuple(sample_shape) + self.batch_shape
        D, R = self.data.num_outputs, basis.rank
        k1, k2 = jax.random.split(key)
        g = normal(k1, shape + (R, D), dtype)
        e = normal(k2, shape + self.event_shape, dtype)
        root = basis.require_rows("sampling labels").astype(dtype) * jnp.sqrt(basis.eigenvalues.astype(dtype))
        lchol = self.root if self.root is not None else jnp.linalg.cholesky(self.q)
        lam = jnp.sqrt(self.lambda_star)[..., None, None]
        signal = lam * (root @ (g @ jnp.swapaxes(lchol, -1, -2)))
        if self.noise_factor is not None:
            labels = signal + e @ jnp.swapaxes(self.noise_factor, -1, -2)
        else:
            assert self.noise_variance is not None  # set whenever there is no noise factor (constructor)
            labels = signal + jnp.sqrt(self.noise_variance)[..., None, None] * e
        return labels if self.intercept is None else labels + self.intercept[..., None, :]

    @property
    def mean(self) -> jax.Array:
        r""":math:`1\mu^\top` with an intercept, else zero (the prior over a deep linear network's
        outputs is centred)."""
        zero = jnp.zeros(self.batch_shape + self.event_shape, self.q.dtype)
        return zero if self.intercept is None else zero + self.intercept[..., None, :]


@full_precision
def loo_log_likelihood(q: ArrayLike, lambda_star: ArrayLike, noise_variance: ArrayLike | None, data: RegressionData, *,
                       noise_covariance: ArrayLike | None = None, intercept: ArrayLike | None = None) -> jax.Array:
    r"""Pointwise leave-one-input-out log densities :math:`\log p(y_i \mid Y_{-i}, Q)` (``y_i`` is row ``i``).

    For the Gaussian :math:`\operatorname{vec} Y \sim N(0, \Sigma)` with precision
    :math:`\Sigma^{-1}`, let :math:`B_i` be the ``D x D`` block of :math:`\Sigma^{-1}` at input
    ``i`` and :math:`g = \Sigma^{-1} \operatorname{vec} Y`. Then (Bürkner, Gabry & Vehtari 2021,
    non-factorized normal models)

    .. math::

        \log p(y_{\cdot i} \mid Y_{\cdot,-i}) = -\tfrac{D}{2}\log 2\pi + \tfrac12 \log\det B_i
          - \tfrac12 g_i^\top B_i^{-1} g_i,

    with, in the eigenbasis, :math:`B_i = \sum_p U_{ip}^2 C_p^{-1} + (1 - \sum_p U_{ip}^2) I/\sigma^2`
    and :math:`g_i = \sum_p U_{ip} C_p^{-1} \tilde y_p + (y_i - \sum_p U_{ip}\tilde y_p)/\sigma^2`.
    A general noise covariance (``noise_covariance``, ``(D, D)``; ``noise_variance=None``) is
    handled by whitening the labels (:math:`\Sigma_\varepsilon = LL^\top`, labels :math:`L^{-1}y_i`,
    :math:`\tilde Q = L^{-1}QL^{-\top}`, unit noise, and :math:`-\log\det L` per row); per-output
    intercepts :math:`\mu` (``intercept`` ``(D,)``) by shifting the labels to :math:`y_i - \mu`.
    Cost :math:`O(P R D^2)` per draw. One ``Q`` ``(D, D)`` and scalar hyperparameters in,
    ``(P,)`` out; for many draws use :func:`loo_log_likelihood_draws`.
    """
    check_regression_data(data)
    q = jnp.asarray(q, data.dtype)
    D = data.num_outputs
    if q.shape != (D, D):
        raise ValueError(
            f"q must have shape ({D}, {D}) (one draw; for many use loo_log_likelihood_draws), got {q.shape}"
        )
    check_positive_scalar("lambda_star", lambda_star)
    noise = check_one_draw_noise(noise_variance, noise_covariance, data)
    if intercept is not None:
        check_intercept(intercept, D)
        if np.ndim(intercept) != 1:
            raise ValueError(f"intercept must have shape ({D},) for one draw, got {np.shape(intercept)}")
    return _loo_from_terms(q, lambda_star, noise, data, _loo_data_terms(data, q.dtype), intercept)


def _loo_data_terms(data: RegressionData, dtype):
    r"""Draw-independent pieces of the LOO terms for every training row (:func:`loo_row_terms`)."""
    data.require_rows("the pointwise leave-one-input-out terms")
    return loo_row_terms(data, data.basis.eigenvectors, data.labels, dtype)


def loo_row_terms(data: RegressionData, U, Y, dtype):
    r"""Draw-independent pieces of the LOO terms of rows with eigenvector rows ``U`` ``(m, R)``
    (:math:`U_R` restricted to those rows) and labels ``Y`` ``(m, D)``: ``U``, ``U^2``, and for a
    nonempty null space the leftover weights :math:`1 - \sum_p U_{ip}^2`, residuals
    :math:`y_i - \sum_p U_{ip}\tilde y_p` and the constant input's residuals :math:`1 - \sum_p U_{ip}\tilde u_p`
    (for intercepts; ``None`` without :class:`~deeplinear.data.InterceptTerms`)."""
    U = jnp.asarray(U, dtype)
    if not data.basis.num_null:
        return U, U**2, None, None, None
    resid = jnp.asarray(Y, dtype) - U @ data.rotated_labels.astype(dtype)  # (m, D)
    ones = None if data.intercept_terms is None else 1 - U @ data.intercept_terms.rotated_ones.astype(dtype)
    return U, U**2, 1 - jnp.sum(U**2, axis=1), resid, ones


def _loo_precision(q, lambda_star, noise_variance, data, terms, intercept=None):
    r"""One draw's per-row LOO pieces: the Cholesky factors of :math:`B_i` ``(m, D, D)``,
    :math:`g_i` ``(m, D)`` (:func:`loo_log_likelihood`), the noise factor :math:`L` (``None`` for
    scalar noise) and :math:`\log\det L`.

    ``noise_variance`` is a scalar :math:`\sigma^2` or a ``(D, D)`` noise covariance, handled by
    whitening: with :math:`\Sigma_\varepsilon = LL^\top` the labels :math:`L^{-1} y_i` have noise
    :math:`I` and :math:`\tilde Q = L^{-1} Q L^{-\top}`. An ``intercept`` :math:`\mu` ``(D,)``
    shifts the labels to :math:`y_i - \mu`: the rotated labels by :math:`-\tilde u\mu^\top`, the
    residuals by :math:`-(1 - U_i\tilde u)\mu^\top`."""
    U, U2, leftover, resid, ones = terms
    dtype = q.dtype
    D = q.shape[-1]
    rotated = data.rotated_labels.astype(dtype)
    if intercept is not None:
        intercept = jnp.asarray(intercept, dtype)
        rotated = rotated - data.intercept_terms.rotated_ones.astype(dtype)[:, None] * intercept
        resid = None if resid is None else resid - ones[:, None] * intercept
    factor, log_jacobian = None, 0.0
    if jnp.ndim(noise_variance) == 2:
        factor = jnp.linalg.cholesky(jnp.asarray(noise_variance, dtype))
        q, rotated = whiten_q(q, factor), whiten_rows(rotated, factor)
        resid = None if resid is None else whiten_rows(resid, factor)
        noise_variance = jnp.ones((), dtype)
        log_jacobian = jnp.sum(jnp.log(jnp.diagonal(factor)))
    chol = block_cholesky_from_root(psd_root(q), lambda_star, noise_variance, data.basis.eigenvalues)
    eye = jnp.eye(D, dtype=dtype)
    cinv = jax.vmap(lambda c: cho_solve((c, True), eye))(chol)  # (R, D, D)
    cinv_y = jnp.einsum("pde,pe->pd", cinv, rotated)  # (R, D)
    B = jnp.einsum("ip,pde->ide", U2, cinv)
    g = U @ cinv_y  # (P, D)
    if leftover is not None:
        noise = jnp.asarray(noise_variance, dtype)
        B = B + leftover[:, None, None] * eye / noise
        g = g + resid / noise
    return jnp.linalg.cholesky(B), g, factor, log_jacobian


def _loo_from_terms(q, lambda_star, noise_variance, data, terms, intercept=None):
    r"""One draw's LOO log densities (:func:`loo_log_likelihood`): in whitened coordinates
    :math:`-\tfrac D2\log 2\pi + \tfrac12\log\det B_i - \tfrac12 g_i^\top B_i^{-1} g_i`, less
    :math:`\log\det L` (:func:`_loo_precision`)."""
    cb, g, _, log_jacobian = _loo_precision(q, lambda_star, noise_variance, data, terms, intercept)
    return _loo_log_density(cb, g, log_jacobian)[0]


def _loo_log_density(cb, g, log_jacobian):
    r"""The LOO log densities from :func:`_loo_precision`'s pieces, and :math:`w_i = C_i^{-1} g_i`
    (:math:`C_i` the Cholesky factor of :math:`B_i`), so that :math:`g_i^\top B_i^{-1} g_i = |w_i|^2`."""
    D = cb.shape[-1]
    w = solve_triangular(cb, g[..., None], lower=True)[..., 0]
    logdet_b = 2 * jnp.sum(jnp.log(jnp.diagonal(cb, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * D * LOG_2PI + 0.5 * logdet_b - 0.5 * jnp.sum(w**2, axis=-1) - log_jacobian, w


def _loo_terms_and_draw(key, q, lambda_star, noise_variance, data, terms, intercept=None):
    r"""One draw's LOO log densities ``(P,)`` (:func:`_loo_from_terms`) and one label row drawn from
    each row's leave-one-input-out predictive ``(P, D)`` (:func:`_loo_conditional_from_terms`), from one
    factorization: with :math:`B_i = C_iC_i^\top`, :math:`w_i = C_i^{-1}g_i` and
    :math:`z_i \sim N(0, I_D)`,

    .. math::

        y_i^{\text{rep}} = y_i + L\,C_i^{-\top}(z_i - w_i) \sim N(y_i - L B_i^{-1} g_i,\; L B_i^{-1} L^\top),

    since :math:`C_i^{-\top} w_i = B_i^{-1} g_i` and :math:`\operatorname{cov}(C_i^{-\top} z_i) = B_i^{-1}`."""
    cb, g, factor, log_jacobian = _loo_precision(q, lambda_star, noise_variance, data, terms, intercept)
    log_density, w = _loo_log_density(cb, g, log_jacobian)
    z = normal(key, g.shape, q.dtype)
    step = solve_triangular(cb, (z - w)[..., None], lower=True, trans=1)[..., 0]
    if factor is not None:
        step = step @ factor.T
    return log_density, data.labels.astype(q.dtype) + step


def _loo_conditional_from_terms(q, lambda_star, noise_variance, data, terms, labels, intercept=None):
    r"""One draw's leave-one-input-out predictive of each row's labels, :math:`y_i \mid Y_{-i}, \theta
    \sim N(m_i, V_i)`: with :math:`B_i`, :math:`g_i` in whitened coordinates (:func:`_loo_precision`),
    :math:`m_i = y_i - L B_i^{-1} g_i` and :math:`V_i = L B_i^{-1} L^\top` (:math:`L = I` for scalar
    noise), since :math:`E[y_i \mid y_{-i}] = y_i - (\Sigma^{-1})_{ii}^{-1}(\Sigma^{-1} y)_i` for
    :math:`y \sim N(\text{mean}, \Sigma)`. ``labels`` ``(m, D)`` are the rows' labels. Returns
    ``(m, D)`` means and ``(m, D, D)`` covariances."""
    D = q.shape[-1]
    cb, g, factor, _ = _loo_precision(q, lambda_star, noise_variance, data, terms, intercept)
    eye = jnp.broadcast_to(jnp.eye(D, dtype=q.dtype), cb.shape)
    b_inv = jax.vmap(lambda c, e: cho_solve((c, True), e))(cb, eye)  # (m, D, D)
    step = jnp.einsum("ide,ie->id", b_inv, g)
    if factor is not None:
        step = step @ factor.T
        b_inv = factor @ b_inv @ factor.T
    return jnp.asarray(labels, q.dtype) - step, b_inv


@reuse_traces(static_argnames=("batch_size",))
def _loo_draws(q, lambda_star, noise_variance, data, batch_size, terms=None, intercept=None):
    """``(S, m)`` LOO terms of the rows of ``terms`` (:func:`loo_row_terms`; default every training row);
    ``intercept`` ``(S, D)`` or None."""
    terms = _loo_data_terms(data, q.dtype) if terms is None else terms
    return batched_map(
        lambda a: _loo_from_terms(*a[:3], data, terms, a[3]), (q, lambda_star, noise_variance, intercept), batch_size
    )


@full_precision
def loo_log_likelihood_draws(q: ArrayLike, lambda_star: ArrayLike, noise_variance: ArrayLike | None,
                             data: RegressionData, batch_size: int = 64, *, noise_covariance: ArrayLike | None = None,
                             intercept: ArrayLike | None = None) -> jax.Array:
    """:func:`loo_log_likelihood` for ``S`` draws: ``q`` ``(S, D, D)``, hyperparameters ``(S,)`` or
    scalars (or ``noise_covariance`` ``(S, D, D)`` or ``(D, D)``; ``intercept`` ``(S, D)`` or ``(D,)``);
    returns ``(S, P)``. The
    draw-independent terms are computed once, outside the loop over draws (jitted; module-level so
    repeated calls with the same shapes reuse the compiled code)."""
    check_regression_data(data)
    q = jnp.asarray(q, data.dtype)
    D = data.num_outputs
    if q.ndim != 3 or q.shape[1:] != (D, D):
        raise ValueError(f"q must have shape (S, {D}, {D}), got {q.shape}")
    lam, noise = check_draw_hyperparameters(lambda_star, noise_variance, q.shape[0], data, noise_covariance)
    batch_size = check_positive_int("batch_size", batch_size)
    if intercept is not None:
        check_intercept(intercept, D, num_draws=q.shape[0])
        intercept = jnp.broadcast_to(jnp.asarray(intercept, data.dtype), (q.shape[0], D))
    return _loo_draws(q, lam, noise, data, batch_size, intercept=intercept)
