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

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.linalg import cho_solve, solve_triangular
from numpyro.distributions import constraints

from deeplinear._linalg import LOG_2PI, block_cholesky_from_root, block_covariances, gaussian_logpdf, psd_root
from deeplinear._validation import (
    check_draw_hyperparameters,
    check_noise_for_data,
    check_positive_int,
    check_positive_scalar,
    is_concrete,
)
from deeplinear.data import RegressionData, check_regression_data

__all__ = ["KroneckerNormal", "loo_log_likelihood", "loo_log_likelihood_draws"]


def _rotated_log_prob(chol, rotated, null_energy, noise_variance, num_null, relative=False):
    r"""Log density from factors ``(..., R, D, D)`` of the blocks and rotated labels ``(..., R, D)``.

    With ``relative`` the null-space term :math:`-\tfrac n2 \log(2\pi\sigma^2) - E/(2\sigma^2)`
    (``n = (P - R) D``, ``E`` the null-space energy) is replaced by
    :math:`-\tfrac n2 [\log x + 1/x - 1]`, :math:`x = 1 + d`, :math:`d = (\sigma^2 - \hat\sigma^2)/\hat\sigma^2`
    (as :math:`\log(1 + d) - d/(1 + d)` for :math:`|d| < 1/2`, free of cancellation),
    :math:`\hat\sigma^2 = E/n`: the same function of :math:`\sigma^2` less the data constant
    :math:`\tfrac n2 (\log 2\pi\hat\sigma^2 + 1)`. At ``P = 10^7`` that constant is ~10^7, whose
    float32 rounding (~1) would swamp the energy differences NUTS needs; the relative form is
    ``O(1)`` near the posterior."""
    D = chol.shape[-1]
    lp = jnp.sum(gaussian_logpdf(rotated, chol), axis=-1)
    if num_null:
        noise = jnp.asarray(noise_variance, chol.dtype)
        n = num_null * D
        absolute = -0.5 * null_energy / noise - 0.5 * n * (LOG_2PI + jnp.log(noise))
        if relative:
            has_energy = null_energy > 0
            scale = jnp.where(has_energy, null_energy / n, 1.0)  # sigma-hat^2 (a safe 1 when E = 0)
            ratio = jnp.maximum(noise / scale, jnp.finfo(chol.dtype).tiny)  # x = sigma^2 / sigma-hat^2
            d = (noise - scale) / scale
            near = jnp.abs(d) < 0.5
            d_near = jnp.where(near, d, 0.0)  # safe arguments in both branches (no NaN gradients)
            ratio_far = jnp.where(near, 2.0, ratio)
            f = jnp.where(near, jnp.log1p(d_near) - d_near / (1 + d_near),  # log x + 1/x - 1, no cancellation
                          jnp.log(ratio_far) + 1 / ratio_far - 1)
            centred = -0.5 * n * f
            absolute = jnp.where(has_energy, centred, absolute)
        lp = lp + absolute
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
    noise_variance : float or array ``(...)``
        :math:`\sigma^2 \ge 0`; ``0`` is interpolation and needs ``rank K = P``.
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
    pytree_data_fields = ("q", "lambda_star", "noise_variance", "data", "root")
    pytree_aux_fields = ("labels_are_data", "relative")

    def __init__(
        self, q, lambda_star, noise_variance, data: RegressionData, *, root=None, labels_are_data: bool = False,
        relative: bool = False, validate_args=None,
    ):
        check_regression_data(data)
        check_positive_scalar("lambda_star", lambda_star)
        check_noise_for_data(noise_variance, data)
        q = jnp.asarray(q)
        D = data.num_outputs
        if q.ndim < 2 or q.shape[-2:] != (D, D):
            raise ValueError(f"q must have shape (..., {D}, {D}) for D = {D} outputs, got {q.shape}")
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
        self.noise_variance = jnp.asarray(noise_variance, q.dtype)
        self.data = data
        self.labels_are_data = bool(labels_are_data)
        self.relative = bool(relative) and self.labels_are_data
        super().__init__(q.shape[:-2], (data.num_obs, D), validate_args=validate_args)

    def block_cholesky(self):
        """Lower factors of the blocks :math:`C_p`, shape ``batch + (R, D, D)`` (square-root
        form when ``root`` was given)."""
        if self.root is not None:
            eigenvalues = self.data.basis.eigenvalues
            return block_cholesky_from_root(self.root, self.lambda_star, self.noise_variance, eigenvalues)
        c = block_covariances(self.q, self.lambda_star, self.noise_variance, self.data.basis.eigenvalues)
        return jnp.linalg.cholesky(c)

    def log_prob(self, value):
        r""":math:`\log N(\operatorname{vec} Y^\top; 0, \lambda_* Q\otimes K + \sigma^2 I)` from the block factors."""
        if self.labels_are_data and self.data.labels is None:  # streamed set-up: only the rotated labels are kept
            return self.data_log_prob()
        if self.labels_are_data:
            if jnp.shape(value) != self.data.labels.shape:
                raise ValueError(
                    f"labels_are_data=True: the value must be data.labels {self.data.labels.shape}, "
                    f"got {jnp.shape(value)}"
                )
            if value is not self.data.labels and is_concrete(value) and is_concrete(self.data.labels):
                if not np.array_equal(np.asarray(value), np.asarray(self.data.labels)):
                    raise ValueError("labels_are_data=True but log_prob was called on labels other than data.labels")
            rotated, null = self.data.rotated_labels, self.data.null_energy
        else:
            rotated, null = self.data.basis.rotate(jnp.asarray(value, self.q.dtype))
        chol = self.block_cholesky()
        # batch of chol (batch, R, D, D) broadcasts against the value's rotated labels (..., R, D)
        return _rotated_log_prob(chol, rotated, null, self.noise_variance, self.data.basis.num_null, self.relative)

    def data_log_prob(self):
        r""":meth:`log_prob` of ``data``'s own labels, from their rotation and null-space energy
        (:math:`O(R D^3)`; the only form for data set up by streaming, which keep no labels);
        less the data constant when ``relative``."""
        chol = self.block_cholesky()
        return _rotated_log_prob(chol, self.data.rotated_labels, self.data.null_energy, self.noise_variance,
                                 self.data.basis.num_null, self.relative)

    def sample(self, key, sample_shape=()):
        r""":math:`Y = \sqrt{\lambda_*}\, (U_R \sqrt{\kappa})\, G\, \mathrm{chol}(Q)^\top + \sigma E`,
        ``G`` ``(R, D)``."""
        self.data.require_rows("sampling labels")
        basis = self.data.basis
        dtype = self.q.dtype
        shape = tuple(sample_shape) + self.batch_shape
        D, R = self.data.num_outputs, basis.rank
        k1, k2 = jax.random.split(key)
        g = jax.random.normal(k1, shape + (R, D), dtype)
        e = jax.random.normal(k2, shape + self.event_shape, dtype)
        root = basis.eigenvectors.astype(dtype) * jnp.sqrt(basis.eigenvalues.astype(dtype))
        lchol = self.root if self.root is not None else jnp.linalg.cholesky(self.q)
        lam = jnp.sqrt(self.lambda_star)[..., None, None]
        sd = jnp.sqrt(self.noise_variance)[..., None, None]
        return lam * (root @ (g @ jnp.swapaxes(lchol, -1, -2))) + sd * e

    @property
    def mean(self):
        """Zero: the prior over a deep linear network's outputs is centred."""
        return jnp.zeros(self.batch_shape + self.event_shape, self.q.dtype)


def loo_log_likelihood(q, lambda_star, noise_variance, data: RegressionData):
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
    check_noise_for_data(noise_variance, data)
    return _loo_from_terms(q, lambda_star, noise_variance, data, _loo_data_terms(data, q.dtype))


def _loo_data_terms(data: RegressionData, dtype):
    r"""Draw-independent pieces of the LOO terms for every training row (:func:`loo_row_terms`)."""
    data.require_rows("the pointwise leave-one-input-out terms")
    return loo_row_terms(data, data.basis.eigenvectors, data.labels, dtype)


def loo_row_terms(data: RegressionData, U, Y, dtype):
    r"""Draw-independent pieces of the LOO terms of rows with eigenvector rows ``U`` ``(m, R)``
    (:math:`U_R` restricted to those rows) and labels ``Y`` ``(m, D)``: ``U``, ``U^2``, and for a
    nonempty null space the leftover weights :math:`1 - \sum_p U_{ip}^2` and residuals
    :math:`y_i - \sum_p U_{ip}\tilde y_p`."""
    U = jnp.asarray(U, dtype)
    if not data.basis.num_null:
        return U, U**2, None, None
    resid = jnp.asarray(Y, dtype) - U @ data.rotated_labels.astype(dtype)  # (m, D)
    return U, U**2, 1 - jnp.sum(U**2, axis=1), resid


def _loo_from_terms(q, lambda_star, noise_variance, data, terms):
    U, U2, leftover, resid = terms
    dtype = q.dtype
    D = q.shape[-1]
    chol = block_cholesky_from_root(psd_root(q), lambda_star, noise_variance, data.basis.eigenvalues)
    eye = jnp.eye(D, dtype=dtype)
    cinv = jax.vmap(lambda c: cho_solve((c, True), eye))(chol)  # (R, D, D)
    cinv_y = jnp.einsum("pde,pe->pd", cinv, data.rotated_labels.astype(dtype))  # (R, D)
    B = jnp.einsum("ip,pde->ide", U2, cinv)
    g = U @ cinv_y  # (P, D)
    if leftover is not None:
        noise = jnp.asarray(noise_variance, dtype)
        B = B + leftover[:, None, None] * eye / noise
        g = g + resid / noise
    cb = jnp.linalg.cholesky(B)
    w = solve_triangular(cb, g[..., None], lower=True)[..., 0]
    logdet_b = 2 * jnp.sum(jnp.log(jnp.diagonal(cb, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * D * LOG_2PI + 0.5 * logdet_b - 0.5 * jnp.sum(w**2, axis=-1)


@partial(jax.jit, static_argnames="batch_size")
def _loo_draws(q, lambda_star, noise_variance, data, batch_size, terms=None):
    """``(S, m)`` LOO terms of the rows of ``terms`` (:func:`loo_row_terms`; default every training row)."""
    terms = _loo_data_terms(data, q.dtype) if terms is None else terms
    return jax.lax.map(
        lambda a: _loo_from_terms(*a, data, terms), (q, lambda_star, noise_variance), batch_size=batch_size
    )


def loo_log_likelihood_draws(q, lambda_star, noise_variance, data: RegressionData, batch_size: int = 64):
    """:func:`loo_log_likelihood` for ``S`` draws: ``q`` ``(S, D, D)``, hyperparameters ``(S,)`` or
    scalars; returns ``(S, P)``. The draw-independent terms are computed once, outside the loop
    over draws (jitted; module-level so repeated calls with the same shapes reuse the compiled code)."""
    check_regression_data(data)
    q = jnp.asarray(q, data.dtype)
    D = data.num_outputs
    if q.ndim != 3 or q.shape[1:] != (D, D):
        raise ValueError(f"q must have shape (S, {D}, {D}), got {q.shape}")
    lam, noise = check_draw_hyperparameters(lambda_star, noise_variance, q.shape[0], data)
    batch_size = check_positive_int("batch_size", batch_size)
    return _loo_draws(q, lam, noise, data, batch_size)
