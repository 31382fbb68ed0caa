r"""The Gaussian likelihood of a deep linear network given ``Q`` (theory.md §4).

.. math::

    \operatorname{vec} Y \mid Q \sim N\!\left(0,\ \lambda_* Q \otimes K + \sigma^2 I_{DP}\right),

evaluated in the eigenbasis of ``K`` (see :mod:`deeplinear.data`): with
:math:`C_p = \lambda_* \kappa_p Q + \sigma^2 I_D`,

.. math::

    \log p(Y \mid Q) = \sum_{p=1}^{R} \log N(\tilde y_p; 0, C_p)
      - \frac{(P-R) D}{2} \log(2\pi\sigma^2) - \frac{\|Y_\perp\|_F^2}{2\sigma^2},

``R`` Cholesky factorizations of ``D x D`` matrices per evaluation.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.linalg import cho_solve, solve_triangular
from numpyro.distributions import constraints

from deeplinear._checks import check_positive_scalar, is_concrete
from deeplinear.data import RegressionData

__all__ = [
    "KroneckerNormal",
    "PrecisionWarning",
    "warn_if_unresolvable_in_float32",
    "block_covariances",
    "block_cholesky_from_root",
    "psd_root",
    "loo_log_likelihood",
    "loo_log_likelihood_draws",
    "check_noise_for_data",
]

_LOG_2PI = math.log(2 * math.pi)


def block_covariances(q, lambda_star, noise_variance, eigenvalues):
    r""":math:`C_p = \lambda_* \kappa_p Q + \sigma^2 I_D` for ``p = 1..R``, shape ``(..., R, D, D)``."""
    q = jnp.asarray(q)
    lam = jnp.asarray(lambda_star, q.dtype)[..., None, None, None]
    noise = jnp.asarray(noise_variance, q.dtype)[..., None, None, None]
    eye = jnp.eye(q.shape[-1], dtype=q.dtype)
    return lam * eigenvalues.astype(q.dtype)[:, None, None] * q[..., None, :, :] + noise * eye


def psd_root(q):
    r"""A square root :math:`W \operatorname{diag}(\sqrt{\max(w, 0)})` of symmetric ``q``
    ``(..., D, D)`` with eigendecomposition :math:`W \operatorname{diag}(w) W^\top` (rounding
    that makes tiny eigenvalues negative is clipped). For evaluation, not for gradients
    (``eigh``'s derivative is singular at repeated eigenvalues)."""
    w, v = jnp.linalg.eigh((q + jnp.swapaxes(q, -1, -2)) / 2)
    return v * jnp.sqrt(jnp.clip(w, 0))[..., None, :]


def block_cholesky_from_root(root, lambda_star, noise_variance, eigenvalues):
    r"""Lower factors :math:`L_p L_p^\top = C_p = \lambda_*\kappa_p\, V V^\top + \sigma^2 I_D` without
    forming :math:`C_p`: :math:`L_p^\top` is the triangular factor of the QR decomposition of the
    ``2D x D`` matrix :math:`[\sqrt{\lambda_*\kappa_p}\, V^\top;\ \sigma I_D]`.

    Square-root form: it never squares the condition number of ``V`` (``root``, any factor
    with :math:`Q = VV^\top`, e.g. :math:`\bar V`), so it stays finite where the Cholesky
    factorization of the formed :math:`C_p` fails -- e.g. float32 at large ``a``, where the
    eigenvalues of ``Q`` span tens of orders of magnitude and :math:`\sigma^2` is small.
    Diagonal entries may be negative; use :math:`\log|L_{ii}|`. Shape ``(..., R, D, D)``.
    """
    root = jnp.asarray(root)
    dtype = root.dtype
    D = root.shape[-1]
    lam = jnp.asarray(lambda_star, dtype)[..., None, None, None]
    sd = jnp.sqrt(jnp.asarray(noise_variance, dtype))[..., None, None, None]
    top = jnp.sqrt(lam * eigenvalues.astype(dtype)[:, None, None]) * jnp.swapaxes(root, -1, -2)[..., None, :, :]
    bottom = sd * jnp.eye(D, dtype=dtype)
    stacked = jnp.concatenate([top, jnp.broadcast_to(bottom, top.shape)], axis=-2)  # (..., R, 2D, D)
    return jnp.swapaxes(jnp.linalg.qr(stacked, mode="r"), -1, -2)


def check_noise_for_data(noise_variance, data: RegressionData):
    """``sigma^2 >= 0``; ``sigma^2 = 0`` (interpolation) needs a full-rank kernel."""
    check_positive_scalar("noise_variance", noise_variance, allow_zero=True)
    if is_concrete(noise_variance) and float(noise_variance) == 0 and data.basis.num_null > 0:
        raise ValueError(
            f"noise_variance = 0 (interpolation) needs an invertible kernel K, but K has rank "
            f"{data.basis.rank} < P = {data.num_obs}; use noise_variance > 0 or fewer inputs"
        )
    return noise_variance


class PrecisionWarning(UserWarning):
    """The configuration is beyond what float32 can resolve; use float64 or rescale the labels."""


FLOAT32_SIGNAL_TO_NOISE_LIMIT = 1e6
FLOAT32_SIGNAL_TO_NOISE_LIMIT_FIXED_Q = 1e10  # D = 1 or Q = I: only the mean's rounding limits


def warn_if_unresolvable_in_float32(
    data: RegressionData, noise_variance, lambda_star=None, stacklevel: int = 3, q_varies: bool = True
) -> float:
    r"""Warn when float32 cannot resolve ``noise_variance`` against the labels and ``Q``'s spread.

    The block covariances :math:`C_p = \lambda_*\kappa_p Q + \sigma^2 I` must fit the labels,
    so in the posterior their largest eigenvalue is about the largest per-output label
    energy along one kernel eigendirection, :math:`s = \max_p \|\tilde y_p\|^2 / D`, and the
    smallest is at least :math:`\sigma^2`; a fixed prior scale adds
    :math:`\lambda_* \max_p \kappa_p` as a second estimate of the largest. When the larger of
    the two over :math:`\sigma^2` exceeds
    ``FLOAT32_SIGNAL_TO_NOISE_LIMIT`` (``1e6``; float32 keeps about 7 significant digits),
    float32 cannot represent the posterior's spread of scales: the model's log density and
    its gradient stay accurate (square-root form, :func:`block_cholesky_from_root`), but
    predictive means and covariances and the LOO terms, computed from the stored ``Q``
    draws, lose digits wherever an eigenvalue of ``Q`` is below float32's resolution of its
    largest (:math:`\lambda_*\kappa w \lesssim \sigma^2`). With ``D = 1`` or a fixed
    ``Q = I`` (the NNGP, ``q_varies=False``) ``Q`` has no such spread and the predictions are
    computed without cancellation (:mod:`deeplinear.predictive`); what remains is that the
    predictive standard deviation, about :math:`\sigma/\sqrt{\kappa}`, falls below float32's
    resolution of the predictive mean (about ``1e-7`` of the labels) -- the mixture covariance
    then picks up the mean's rounding -- so the limit there is
    ``FLOAT32_SIGNAL_TO_NOISE_LIMIT_FIXED_Q`` (``1e10``).
    Emits a :class:`PrecisionWarning` (float32 data and a fixed ``noise_variance`` only) and
    returns the ratio (``nan`` when not applicable).
    """
    if data.dtype != jnp.float32 or not isinstance(noise_variance, (int, float, np.floating, np.integer)):
        return math.nan
    if float(noise_variance) <= 0:
        return math.nan
    energy = np.asarray(data.rotated_labels, np.float64) ** 2  # (D, R)
    ratio = float(energy.sum(axis=0).max() / data.num_outputs / float(noise_variance))
    source = "the labels' largest variance component"
    if isinstance(lambda_star, (int, float, np.floating, np.integer)):
        prior_ratio = float(lambda_star) * float(np.max(np.asarray(data.basis.eigenvalues, np.float64))) / float(noise_variance)
        if prior_ratio > ratio:
            ratio, source = prior_ratio, "the prior scale lambda_star * max(kappa)"
    spread = data.num_outputs > 1 and q_varies
    limit = FLOAT32_SIGNAL_TO_NOISE_LIMIT if spread else FLOAT32_SIGNAL_TO_NOISE_LIMIT_FIXED_Q
    if ratio > limit:
        consequence = (
            "so predictive means, covariances and LOO terms computed from Q's small eigenvalues lose digits"
            if spread
            else "so the predictive standard deviation is below float32's resolution of the predictive mean "
            "and predictive covariances lose digits"
        )
        warnings.warn(
            f"float32 cannot resolve this configuration: {source} is "
            f"{ratio:.1e} x noise_variance (float32 keeps ~7 digits; limit {limit:.0e}), "
            f"{consequence} (the log density stays accurate). Use float64 (jax.config.update('jax_enable_x64', True) and dtype='float64') "
            "or a larger noise_variance.",
            PrecisionWarning,
            stacklevel=stacklevel,
        )
    return ratio


def _rotated_log_prob(chol, rotated, null_energy, noise_variance, num_null):
    """Log density from Cholesky factors ``(..., R, D, D)`` of the blocks and rotated labels."""
    R, D = chol.shape[-3], chol.shape[-1]
    z = solve_triangular(chol, jnp.swapaxes(rotated, -1, -2)[..., None], lower=True)[..., 0]
    logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol, axis1=-2, axis2=-1))), axis=(-2, -1))
    lp = -0.5 * jnp.sum(z**2, axis=(-2, -1)) - logdet - 0.5 * R * D * _LOG_2PI
    if num_null:
        noise = jnp.asarray(noise_variance, chol.dtype)
        lp = lp - 0.5 * null_energy / noise - 0.5 * num_null * D * (_LOG_2PI + jnp.log(noise))
    return lp


class KroneckerNormal(dist.Distribution):
    r"""Labels ``Y`` (``D x P``) of a deep linear network given ``Q``:
    :math:`\operatorname{vec} Y \sim N(0, \lambda_* Q \otimes K + \sigma^2 I)`.

    ``K`` enters through ``data`` (a :class:`~deeplinear.data.RegressionData`, which holds
    its eigenbasis). ``log_prob`` costs :math:`O(R D^3)` when called on ``data.labels``
    itself (the rotation is precomputed -- this is what the models do, with
    ``obs=data.labels``), and :math:`O(P R D)` more on any other value.

    Parameters
    ----------
    q : array ``(..., D, D)``
        Output covariance factor :math:`Q` (symmetric positive definite).
    lambda_star : float or array ``(...)``
        Prior scale :math:`\lambda_*`.
    noise_variance : float or array ``(...)``
        :math:`\sigma^2 \ge 0`; ``0`` is interpolation and needs ``rank K = P``.
    data : RegressionData
        Kernel eigenbasis (and, optionally, the observed labels).
    root : array ``(..., D, D)``, optional
        A factor with :math:`Q = V V^\top` (the models pass :math:`\bar V`). When given, the
        blocks are factored in square-root form (:func:`block_cholesky_from_root`), which stays
        finite in float32 where :math:`Q` is very ill-conditioned (large ``a``, large ``D``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from deeplinear import RegressionData, KroneckerNormal
    >>> data = RegressionData.linear(np.eye(3, 5), np.ones((2, 5)))
    >>> d = KroneckerNormal(jnp.eye(2), 1.0, 0.5, data)
    >>> d.event_shape
    (2, 5)
    >>> bool(jnp.isfinite(d.log_prob(data.labels)))
    True
    """

    arg_constraints = {
        "q": constraints.positive_definite,
        "lambda_star": constraints.positive,
        "noise_variance": constraints.nonnegative,
    }
    support = constraints.real_matrix
    pytree_data_fields = ("q", "lambda_star", "noise_variance", "data", "root")

    def __init__(self, q, lambda_star, noise_variance, data: RegressionData, *, root=None, validate_args=None):
        if not isinstance(data, RegressionData):
            raise TypeError(f"data must be a deeplinear.RegressionData, got {type(data).__name__}")
        if jnp.ndim(lambda_star) == 0:
            check_positive_scalar("lambda_star", lambda_star)
        if jnp.ndim(noise_variance) == 0:
            check_noise_for_data(noise_variance, data)
        q = jnp.asarray(q)
        D = data.num_outputs
        if q.ndim < 2 or q.shape[-2:] != (D, D):
            raise ValueError(f"q must have shape (..., {D}, {D}) for D = {D} outputs, got {q.shape}")
        if root is not None:
            root = jnp.asarray(root, q.dtype)
            if root.shape[-2:] != (D, D):
                raise ValueError(f"root must have shape (..., {D}, {D}), got {root.shape}")
        self.q = q
        self.root = root
        self.lambda_star = jnp.asarray(lambda_star, q.dtype)
        self.noise_variance = jnp.asarray(noise_variance, q.dtype)
        self.data = data
        batch_shape = jnp.broadcast_shapes(q.shape[:-2], jnp.shape(lambda_star), jnp.shape(noise_variance))
        super().__init__(batch_shape, (D, data.num_obs), validate_args=validate_args)

    def block_cholesky(self):
        """Lower factors of the blocks :math:`C_p`, shape ``batch + (R, D, D)`` (square-root
        form when ``root`` was given)."""
        if self.root is not None:
            return block_cholesky_from_root(self.root, self.lambda_star, self.noise_variance, self.data.basis.eigenvalues)
        c = block_covariances(self.q, self.lambda_star, self.noise_variance, self.data.basis.eigenvalues)
        return jnp.linalg.cholesky(c)

    def log_prob(self, value):
        r""":math:`\log N(\operatorname{vec} Y; 0, \lambda_* Q\otimes K + \sigma^2 I)` from the block factors."""
        if value is self.data.labels:
            rotated, null = self.data.rotated_labels, self.data.null_energy
        else:
            rotated, null = self.data.basis.rotate(jnp.asarray(value, self.q.dtype))
        chol = self.block_cholesky()
        # broadcast batch of chol (batch, R, D, D) against value batch of rotated (..., D, R)
        return _rotated_log_prob(chol, rotated, null, self.noise_variance, self.data.basis.num_null)

    def sample(self, key, sample_shape=()):
        r""":math:`Y = \sqrt{\lambda_*}\, \mathrm{chol}(Q)\, G\, (U_R \sqrt{\kappa})^\top + \sigma E`."""
        basis = self.data.basis
        dtype = self.q.dtype
        shape = tuple(sample_shape) + self.batch_shape
        D, R = self.data.num_outputs, basis.rank
        k1, k2 = jax.random.split(key)
        g = jax.random.normal(k1, shape + (D, R), dtype)
        e = jax.random.normal(k2, shape + self.event_shape, dtype)
        root = basis.eigenvectors.astype(dtype) * jnp.sqrt(basis.eigenvalues.astype(dtype))
        lchol = self.root if self.root is not None else jnp.linalg.cholesky(self.q)
        lam = jnp.sqrt(self.lambda_star)[..., None, None]
        sd = jnp.sqrt(self.noise_variance)[..., None, None]
        return lam * (lchol @ g) @ root.T + sd * e

    @property
    def mean(self):
        """Zero: the prior over a deep linear network's outputs is centred."""
        return jnp.zeros(self.batch_shape + self.event_shape, self.q.dtype)


def loo_log_likelihood(q, lambda_star, noise_variance, data: RegressionData):
    r"""Pointwise leave-one-input-out log densities :math:`\log p(y_{\cdot i} \mid Y_{\cdot,-i}, Q)`.

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
    if not isinstance(data, RegressionData):
        raise TypeError(f"data must be a RegressionData, got {type(data).__name__}")
    q = jnp.asarray(q, data.dtype)
    D = data.num_outputs
    if q.shape != (D, D):
        raise ValueError(f"q must have shape ({D}, {D}) (one draw; for many use loo_log_likelihood_draws), got {q.shape}")
    check_positive_scalar("lambda_star", lambda_star)
    check_noise_for_data(noise_variance, data)
    return _loo_from_terms(q, lambda_star, noise_variance, data, _loo_data_terms(data, q.dtype))


def _loo_data_terms(data: RegressionData, dtype):
    r"""Draw-independent pieces of the LOO terms: ``U_R``, ``U_R^2``, and for a nonempty null
    space the leftover weights :math:`1 - \sum_p U_{ip}^2` and residuals :math:`y_i - \sum_p U_{ip}\tilde y_p`."""
    U = data.basis.eigenvectors.astype(dtype)
    if not data.basis.num_null:
        return U, U**2, None, None
    resid = data.labels.T.astype(dtype) - U @ data.rotated_labels.T.astype(dtype)  # (P, D)
    return U, U**2, 1 - jnp.sum(U**2, axis=1), resid


def _loo_from_terms(q, lambda_star, noise_variance, data, terms):
    U, U2, leftover, resid = terms
    dtype = q.dtype
    D = q.shape[-1]
    chol = block_cholesky_from_root(psd_root(q), lambda_star, noise_variance, data.basis.eigenvalues)
    eye = jnp.eye(D, dtype=dtype)
    cinv = jax.vmap(lambda c: cho_solve((c, True), eye))(chol)  # (R, D, D)
    cinv_y = jnp.einsum("pde,ep->pd", cinv, data.rotated_labels.astype(dtype))  # (R, D)
    B = jnp.einsum("ip,pde->ide", U2, cinv)
    g = U @ cinv_y  # (P, D)
    if leftover is not None:
        noise = jnp.asarray(noise_variance, dtype)
        B = B + leftover[:, None, None] * eye / noise
        g = g + resid / noise
    cb = jnp.linalg.cholesky(B)
    w = solve_triangular(cb, g[..., None], lower=True)[..., 0]
    logdet_b = 2 * jnp.sum(jnp.log(jnp.diagonal(cb, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * D * _LOG_2PI + 0.5 * logdet_b - 0.5 * jnp.sum(w**2, axis=-1)


@partial(jax.jit, static_argnames="batch_size")
def loo_log_likelihood_draws(q, lambda_star, noise_variance, data: RegressionData, batch_size: int = 64):
    """:func:`loo_log_likelihood` for ``S`` draws (``q`` ``(S, D, D)``, hyperparameters ``(S,)``),
    ``(S, P)``; the draw-independent terms are computed once, outside the loop over draws."""
    terms = _loo_data_terms(data, q.dtype)
    return jax.lax.map(
        lambda a: _loo_from_terms(*a, data, terms), (q, lambda_star, noise_variance), batch_size=batch_size
    )
