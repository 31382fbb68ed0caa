r"""NumPyro models of a deep linear network under a Gaussian likelihood (theory.md §4).

.. math::

    \bar V \sim \text{prior}, \quad Q = \bar V \bar V^\top, \quad
    \operatorname{vec} Y \mid Q, \lambda_*, \sigma^2 \sim N(0, \lambda_* Q \otimes K + \sigma^2 I),

with the network's outputs ``f`` integrated out analytically. The same function serves
the three priors (finite width, proportional limit, NNGP); ``lambda_star``,
``noise_variance`` and, for the proportional limit, ``ratio`` are fixed numbers or
NumPyro distributions (then they are inferred).

Sites: the prior's latents (``bartlett_*`` or ``brownian_*``), ``"ratio"``,
``"lambda_star"``, ``"noise_variance"`` when given priors, the deterministic ``"Q"``,
and the observed ``"Y"`` (``D x P``).

Building blocks for your own models: :func:`sample_q` (prior sites that return
``Q``) and :class:`~deeplinear.likelihood.KroneckerNormal` (the likelihood).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from deeplinear._checks import check_positive_scalar
from deeplinear.data import RegressionData
from deeplinear.likelihood import KroneckerNormal, check_noise_for_data
from deeplinear.priors import NNGPPrior, ProportionalLimitPrior, VbarPrior

__all__ = ["deep_linear_model", "sample_q", "check_model_args", "has_latent_sites"]


def sample_q(prior: VbarPrior, *, prefix: str = "", name: str | None = "Q", dtype=None):
    r"""Sample the prior's latent sites and return :math:`Q = \bar V \bar V^\top` ``(D, D)``.

    Records ``Q`` as a deterministic site called ``prefix + name`` (skip with
    ``name=None``). Use inside any NumPyro model.
    """
    vbar = prior.numpyro_vbar(prefix)
    if dtype is not None:
        vbar = vbar.astype(dtype)
    q = vbar @ jnp.swapaxes(vbar, -1, -2)
    if name is not None:
        q = numpyro.deterministic(prefix + name, q)
    return q


def _hyper(name, value, dtype):
    if isinstance(value, dist.Distribution):
        return numpyro.sample(name, value)
    return jnp.asarray(value, dtype)


def check_model_args(data, prior, lambda_star, noise_variance, ratio):
    """Validate the model's arguments (runs before any compilation)."""
    if not isinstance(data, RegressionData):
        raise TypeError(
            "data must be a deeplinear.RegressionData (RegressionData.linear(X, Y) or "
            f"RegressionData.from_gram(K, Y)), got {type(data).__name__}"
        )
    if not isinstance(prior, VbarPrior):
        raise TypeError(
            "prior must be a FiniteWidthPrior, ProportionalLimitPrior or NNGPPrior, "
            f"got {type(prior).__name__}"
        )
    if prior.num_outputs != data.num_outputs:
        raise ValueError(
            f"the prior has num_outputs = {prior.num_outputs} but Y has D = {data.num_outputs} "
            "rows (outputs); they must agree"
        )
    if not isinstance(lambda_star, dist.Distribution):
        check_positive_scalar("lambda_star", lambda_star)
    if not isinstance(noise_variance, dist.Distribution):
        check_noise_for_data(noise_variance, data)
    if ratio is not None:
        if not isinstance(prior, ProportionalLimitPrior):
            raise ValueError(
                f"ratio can only be given a prior for a ProportionalLimitPrior, not {type(prior).__name__}"
            )
        if not isinstance(ratio, dist.Distribution):
            raise TypeError(
                "ratio must be a NumPyro distribution over a > 0 (or None to keep prior.ratio), "
                f"got {ratio!r}"
            )


def has_latent_sites(prior, lambda_star, noise_variance, ratio) -> bool:
    """False when everything is fixed and the prior is the NNGP (nothing to sample)."""
    hypers = (lambda_star, noise_variance, ratio)
    return not isinstance(prior, NNGPPrior) or any(isinstance(h, dist.Distribution) for h in hypers)


def deep_linear_model(
    data: RegressionData,
    prior: VbarPrior,
    *,
    lambda_star=1.0,
    noise_variance=1.0,
    ratio: dist.Distribution | None = None,
    observed: bool = True,
    labels=None,
):
    r"""NumPyro model: Bayesian deep linear network regression with ``f`` marginalized.

    Parameters
    ----------
    data : RegressionData
        Kernel eigenbasis and labels ``Y`` (``D x P``).
    prior : FiniteWidthPrior | ProportionalLimitPrior | NNGPPrior
        Law of :math:`\bar V`.
    lambda_star : float or numpyro Distribution, default 1.0
        Prior scale :math:`\lambda_*` (fixed, or a prior over it).
    noise_variance : float or numpyro Distribution, default 1.0
        :math:`\sigma^2` (``0`` = interpolation, needs an invertible ``K``).
    ratio : numpyro Distribution, optional
        Prior over the depth-to-width ratio ``a`` (proportional limit only); ``None``
        keeps ``prior.ratio`` fixed.
    observed : bool, default True
        Condition on ``data.labels``; ``False`` samples ``Y`` (prior/posterior predictive).
    labels : array ``(D, P)``, optional
        Condition on these labels instead of ``data.labels`` (same inputs). May be traced,
        e.g. under ``jax.vmap`` over simulated data sets (as
        :func:`~deeplinear.sbc.simulation_based_calibration` does); costs :math:`O(PRD)`
        more per evaluation than ``data.labels``, whose rotation is precomputed.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from numpyro.infer import Predictive
    >>> from deeplinear import RegressionData, ProportionalLimitPrior, deep_linear_model
    >>> data = RegressionData.linear(np.eye(3, 6), np.zeros((2, 6)))
    >>> prior = ProportionalLimitPrior(0.5, num_outputs=2, num_steps=8)
    >>> draws = Predictive(deep_linear_model, num_samples=4)(
    ...     jax.random.key(0), data, prior, observed=False)
    >>> draws["Q"].shape, draws["Y"].shape
    ((4, 2, 2), (4, 2, 6))
    """
    check_model_args(data, prior, lambda_star, noise_variance, ratio)
    dtype = data.dtype
    if labels is None:
        labels = data.labels
    elif jnp.shape(labels) != data.labels.shape:
        raise ValueError(f"labels must have the shape of data.labels {data.labels.shape}, got {jnp.shape(labels)}")
    if ratio is not None:
        prior = prior.replace(ratio=numpyro.sample("ratio", ratio))
    lam = _hyper("lambda_star", lambda_star, dtype)
    noise = _hyper("noise_variance", noise_variance, dtype)
    vbar = prior.numpyro_vbar().astype(dtype)
    q = numpyro.deterministic("Q", vbar @ vbar.T)
    likelihood = KroneckerNormal(q, lam, noise, data, root=vbar)  # square-root form: robust in float32
    numpyro.sample("Y", likelihood, obs=labels if observed else None)
