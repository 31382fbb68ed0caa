r"""When float32 cannot resolve a configuration: :class:`PrecisionWarning` and its heuristic.

float32 keeps about 7 significant digits. The model's log density is computed in square-root
form and stays accurate; what loses digits first are predictions and LOO terms computed from
stored ``Q`` draws whose small eigenvalues fall below float32's resolution of the largest
(see ``docs/numerical_range.md`` for the measured range).
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np

__all__ = ["PrecisionWarning", "warn_if_spec_imprecise", "warn_if_unresolvable_in_float32",
           "warn_if_interpolation_ill_conditioned", "warn_if_correlation_ill_conditioned"]


class PrecisionWarning(UserWarning):
    """The configuration is beyond what float32 can resolve; use float64 or rescale the labels."""


FLOAT32_SIGNAL_TO_NOISE_LIMIT = 1e6
FLOAT32_SIGNAL_TO_NOISE_LIMIT_FIXED_Q = 1e10  # D = 1 or Q = I: only the mean's rounding limits


def warn_if_unresolvable_in_float32(
    data, noise_variance, lambda_star=None, stacklevel: int = 3, q_varies: bool = True
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
    its gradient stay accurate (square-root form, :func:`deeplinear._linalg.block_cholesky_from_root`), but
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
    if data.dtype != jnp.float32 or isinstance(noise_variance, bool) or not isinstance(
        noise_variance, (int, float, np.floating, np.integer)
    ):
        return math.nan
    if float(noise_variance) <= 0:
        return math.nan
    energy = np.asarray(data.rotated_labels, np.float64) ** 2  # (R, D)
    ratio = float(energy.sum(axis=1).max() / data.num_outputs / float(noise_variance))
    source = "the labels' largest variance component"
    if isinstance(lambda_star, (int, float, np.floating, np.integer)):
        top_kappa = float(np.max(np.asarray(data.basis.eigenvalues, np.float64)))
        prior_ratio = float(lambda_star) * top_kappa / float(noise_variance)
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
            f"{consequence} (the log density stays accurate). Use float64 "
            "(jax.config.update('jax_enable_x64', True) and dtype='float64') "
            "or a larger noise_variance.",
            PrecisionWarning,
            stacklevel=stacklevel,
        )
    return ratio


INTERPOLATION_DIGITS_LEFT = 1e-2  # warn when cond(K) * eps leaves fewer than two significant digits


def warn_if_interpolation_ill_conditioned(data, noise_variance, stacklevel: int = 3) -> float:
    r"""Warn when ``noise_variance = 0`` (interpolation) meets a nearly singular kernel.

    With :math:`\sigma^2 = 0` the likelihood, the predictions and above all the leave-one-out
    terms divide by the kernel's eigenvalues, so their relative error is about
    :math:`\operatorname{cond}(K)\,\varepsilon` with :math:`\operatorname{cond}(K) =
    \kappa_{\max}/\kappa_{\min}` and :math:`\varepsilon` the working precision's machine epsilon.
    When that exceeds ``INTERPOLATION_DIGITS_LEFT`` (fewer than two digits left: nearly collinear
    inputs), emits a :class:`PrecisionWarning`. Returns ``cond(K)`` (``nan`` when not applicable).
    """
    if isinstance(noise_variance, bool) or not isinstance(noise_variance, (int, float, np.floating, np.integer)):
        return math.nan
    if float(noise_variance) != 0:
        return math.nan
    kappa = np.asarray(data.basis.eigenvalues, np.float64)
    cond = float(kappa.max() / kappa.min())
    eps = float(np.finfo(data.dtype).eps)
    if cond * eps > INTERPOLATION_DIGITS_LEFT:
        warnings.warn(
            f"noise_variance = 0 (interpolation) with a nearly singular kernel: cond(K) = {cond:.1e}, so in "
            f"{np.dtype(data.dtype).name} (eps {eps:.1e}) the likelihood, predictions and LOO terms keep fewer than "
            "two correct digits. Use noise_variance > 0, drop nearly collinear inputs (or a larger rtol in "
            "RegressionData), or float64.",
            PrecisionWarning,
            stacklevel=stacklevel,
        )
    return cond


CORRELATION_DIGITS_LEFT = 1e-2  # warn when cond(Omega) * eps leaves fewer than two significant digits


def warn_if_correlation_ill_conditioned(correlation, dtype, stacklevel: int = 3) -> float:
    r"""Warn when a fixed noise correlation :math:`\Omega` is too close to singular for ``dtype``.

    Stored in ``dtype``, each entry of :math:`\Omega` moves by up to :math:`\varepsilon/2` (its
    largest entries are about 1), so its smallest eigenvalue
    :math:`\omega_{\min}` moves by about :math:`\varepsilon`: a relative error of
    :math:`\operatorname{cond}(\Omega)\,\varepsilon` with
    :math:`\operatorname{cond}(\Omega) = \omega_{\max}/\omega_{\min}`. The noise covariance's
    smallest eigenvalue, and with it the likelihood, the predictions and the LOO terms along that
    direction of the outputs, inherit it (correlation :math:`1 - 10^{-7}` in float32: the
    eigenvalue :math:`10^{-7}` is stored as :math:`1.2\cdot10^{-7}`). When that error exceeds
    ``CORRELATION_DIGITS_LEFT`` (fewer than two correct digits), emits a :class:`PrecisionWarning`.
    The scale of the variances does not enter: :math:`\operatorname{diag}(\sigma)` is applied
    without cancellation. Returns :math:`\operatorname{cond}(\Omega)`.
    """
    omega = np.linalg.eigvalsh(np.asarray(correlation, np.float64))
    cond = float(omega.max() / omega.min())
    eps = float(np.finfo(dtype).eps)
    if cond * eps > CORRELATION_DIGITS_LEFT:
        warnings.warn(
            f"noise_correlation is nearly singular: cond = {cond:.1e} (smallest eigenvalue {omega.min():.1e}), so "
            f"in {np.dtype(dtype).name} (eps {eps:.1e}) its rounding can move that eigenvalue by up to cond x eps = "
            f"{cond * eps:.1e} of itself: the likelihood, predictions and LOO terms along its direction of the "
            "outputs keep fewer than two correct digits. Use float64 (jax.config.update('jax_enable_x64', True) "
            "and dtype='float64') or a correlation further from +-1.",
            PrecisionWarning,
            stacklevel=stacklevel,
        )
    return cond


def warn_if_spec_imprecise(spec, data, q_varies: bool, stacklevel: int = 4) -> None:
    """The precision checks of a model specification on ``data``, before sampling: the prior's
    underflow, :func:`warn_if_unresolvable_in_float32` and
    :func:`warn_if_interpolation_ill_conditioned` at the smallest noise variance the
    specification fixes (the smallest eigenvalue of a fixed noise covariance), and
    :func:`warn_if_correlation_ill_conditioned` for a fixed noise correlation. The one place that
    :func:`deeplinear.fit` and :func:`deeplinear.evidence.log_evidence` share (``q_varies``: the
    prior's ``Q`` is random, i.e. not the NNGP's)."""
    from numpyro import distributions as dist

    spec.prior.warn_if_underflows(data.dtype, stacklevel=stacklevel)
    smallest_noise = spec.noise_variance
    if spec.noise_model != "scalar" and spec.fixed_noise_covariance is not None:
        smallest_noise = float(np.linalg.eigvalsh(spec.fixed_noise_covariance).min())
    elif spec.noise_model != "scalar":
        smallest_noise = spec.noise_variance if isinstance(spec.noise_variance, dist.Distribution) else None
    if smallest_noise is not None:
        warn_if_unresolvable_in_float32(data, smallest_noise, spec.lambda_star, stacklevel=stacklevel,
                                        q_varies=q_varies)
        warn_if_interpolation_ill_conditioned(data, smallest_noise, stacklevel=stacklevel)
    if spec.noise_model == "full" and isinstance(spec.noise_correlation, tuple):
        warn_if_correlation_ill_conditioned(spec.noise_correlation, data.dtype, stacklevel=stacklevel)
