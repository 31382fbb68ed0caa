"""Extreme corners of the numerical range (docs/numerical_range.md), in both precisions.

At a = 8 and D = 8 the diagonal of Vbar spans exp(-a r/2) ~ 1e-14 for r = 8; sigma^2 and the
label scale go to 1e-6 / 1e3 and 1e-3 / 1e3. The model's log density, its gradient, the
predictive mixture and the LOO terms must be finite in float32 and float64, and float32 must
agree with float64 to the accuracy measured by benchmarks/numerical_range.py (worst case there
1.3e-3 relative for the log density; the bounds below leave a margin of ~8x).
"""

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density

import deeplinear as dl
from deeplinear import PrecisionWarning
from deeplinear._precision import warn_if_unresolvable_in_float32
from deeplinear.evidence import log_evidence
from deeplinear.likelihood import loo_log_likelihood_draws

NUM_DRAWS = 10
N0, P = 4, 20
LOGP_RTOL32 = 1e-2  # measured worst 1.3e-3 (a=8, D=8, sigma^2=1e-6)
GRAD_RTOL32 = 0.3  # measured worst 0.25 (a=2, D=8, sigma^2=1e-6): gradients of a near-singular fit


def _latents(prior):
    """The same prior draws for both precisions: made in float64, cast down for float32."""
    with jax.enable_x64(True):
        return {k: np.asarray(v) for k, v in prior.sample_latents(jax.random.key(1), (NUM_DRAWS,), jnp.float64).items()}


@partial(jax.jit, static_argnums=(0, 1))
def _logp_and_grad(prior, noise, data, latents):
    """The model's log density and its gradient per draw (compiled once per precision and noise;
    the data are an argument, so the label scales share the compilation)."""

    def logp(latent):
        return log_density(dl.deep_linear_model, (data, prior), {"noise_variance": noise}, latent)[0]

    return jax.vmap(logp)(latents), jax.vmap(jax.grad(logp))(latents)


def _evaluate(prior, latents, scale, noise, dtype):
    rng = np.random.default_rng(0)
    D = prior.num_outputs
    X, Xt = rng.normal(size=(N0, P)).T, rng.normal(size=(N0, 2)).T
    data = dl.RegressionData.linear(X, scale * rng.normal(size=(D, P)).T, dtype=dtype)
    lat = {k: jnp.asarray(v, dtype) for k, v in latents.items()}
    logp, grad = _logp_and_grad(prior, noise, data, lat)
    vbar = jax.vmap(prior.vbar_from_latents)(lat)
    q = vbar @ jnp.swapaxes(vbar, -1, -2)
    ones, noises = jnp.ones(NUM_DRAWS, dtype), jnp.full(NUM_DRAWS, noise, dtype)
    pm = dl.PredictiveMixture(q, ones, noises, data, data.prediction_kernel(Xt))
    return {
        "logp": np.asarray(logp, float),
        "grad": np.concatenate([np.asarray(g, float).reshape(NUM_DRAWS, -1) for g in grad.values()], 1),
        "mean": np.asarray(pm.mean, float),
        "cov": np.asarray(pm.covariance(), float),
        "loo": np.asarray(loo_log_likelihood_draws(q, ones, noises, data), float),
    }


@pytest.mark.parametrize("noise", [1e-6, 1e3])
@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_extreme_corners_finite_and_float32_close(noise, scale):
    prior = dl.ProportionalLimitPrior(8.0, 8, num_steps=64)
    latents = _latents(prior)
    with jax.enable_x64(True):
        ref = _evaluate(prior, latents, scale, noise, jnp.float64)
    low = _evaluate(prior, latents, scale, noise, jnp.float32)
    for name in ref:
        assert np.all(np.isfinite(ref[name])), f"float64 {name} not finite"
        assert np.all(np.isfinite(low[name])), f"float32 {name} not finite"
    rel = lambda k: np.max(np.abs(low[k] - ref[k])) / np.max(np.abs(ref[k]))  # noqa: E731
    assert rel("logp") < LOGP_RTOL32
    assert rel("grad") < GRAD_RTOL32


def test_float32_beyond_resolution_warns_before_fitting():
    """Labels of scale 1e3 with sigma^2 = 1e-6: float32 cannot resolve the noise against the
    spread of Q's eigenvalues; fit says so (not for D = 1 or the NNGP, where Q has no spread)."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(N0, P)).T, 1e3 * rng.normal(size=(2, P)).T
    data32 = dl.RegressionData.linear(X, Y, dtype="float32")
    with pytest.warns(PrecisionWarning, match="float64"), warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.ConvergenceWarning)  # five steps: not the point
        dl.fit(data32, dl.ProportionalLimitPrior(1.0, 2, num_steps=4), noise_variance=1e-6, num_samples=5,
               num_warmup=5, num_chains=1, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        warnings.simplefilter("ignore", dl.ConvergenceWarning)
        unit = dl.RegressionData.linear(X, Y / 1e3, dtype="float32")  # ratio 3.3e6
        dl.fit(unit, dl.NNGPPrior(2), noise_variance=1e-6, num_samples=5, num_warmup=5, num_chains=1,
               progress_bar=False)  # Q = I: predictions stay accurate
        warn_if_unresolvable_in_float32(dl.RegressionData.linear(X, Y[:, :1] / 1e3, dtype="float32"), 1e-6)  # D = 1
        warn_if_unresolvable_in_float32(data32, 10.0)  # ratio 3.3e5: below the limit
        warn_if_unresolvable_in_float32(data32, dist.HalfNormal(1.0))  # a prior: not checkable
        with jax.enable_x64(True):
            warn_if_unresolvable_in_float32(dl.RegressionData.linear(X, Y, dtype="float64"), 1e-6)  # float64
    with pytest.warns(PrecisionWarning):  # the same labels, Q random with D = 2: Q's spread matters
        warn_if_unresolvable_in_float32(unit, 1e-6)
    with pytest.warns(PrecisionWarning, match="resolution of the predictive mean"):  # D = 1, ratio ~1e13
        warn_if_unresolvable_in_float32(dl.RegressionData.linear(X, Y[:, :1], dtype="float32"), 1e-6)


def test_fit_at_large_ratio_and_label_scale_is_finite(dtype):
    """NUTS at a = 8 on labels of scale 1e3 (lambda* matched to them): finite posterior and predictions."""
    rng = np.random.default_rng(0)
    X, Xt = rng.normal(size=(3, 8)).T, rng.normal(size=(3, 2)).T
    Y = 1e3 * rng.normal(size=(2, 8)).T
    data = dl.RegressionData.linear(X, Y, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.ConvergenceWarning)  # one short chain: R-hat is not the point
        res = dl.fit(
            data, dl.ProportionalLimitPrior(8.0, 2, num_steps=16), lambda_star=1e6, noise_variance=1e4,
            num_warmup=150, num_samples=100, num_chains=1, progress_bar=False,
        )
    q = res.draws("Q")
    assert np.all(np.isfinite(q)) and np.all(np.linalg.eigvalsh(q.astype(np.float64)) > 0)
    pm = res.predict(Xt)
    assert np.all(np.isfinite(np.asarray(pm.mean))) and np.all(np.isfinite(np.asarray(pm.covariance())))
    assert np.all(np.isfinite(res.datatree["log_likelihood"]["Y"].values))


PRED_RTOL32 = 1e-4  # float32 predictions where Q has no spread; benchmark's D = 1 rows <= 6e-6 (direct form: 0.34)


@pytest.mark.parametrize(
    "prior",
    [dl.ProportionalLimitPrior(0.5, 1), dl.FiniteWidthPrior.from_depth_width(16, 8, 1), dl.NNGPPrior(2)],
    ids=["limit D=1", "finite D=1", "NNGP D=2"],
)
def test_float32_predictions_without_cancellation(prior):
    """sigma^2 = 1e-6 with test inputs inside the training span (N0 < P): the predictive
    covariance is of size sigma^2/kappa, 1e-6 of the prior's. Computed as a difference of
    two O(1) terms it was off by 34% in float32; the cancellation-free form agrees with
    float64 to float32 rounding."""
    rng = np.random.default_rng(0)
    D = prior.num_outputs
    X, Xt, Y = rng.normal(size=(N0, P)).T, rng.normal(size=(N0, 2)).T, rng.normal(size=(D, P)).T
    if isinstance(prior, dl.NNGPPrior):
        q64 = np.broadcast_to(np.eye(D), (NUM_DRAWS, D, D))
    else:
        with jax.enable_x64(True):
            q64 = np.asarray(prior.sample_q(jax.random.key(1), NUM_DRAWS, dtype=jnp.float64))
    out = {}
    for dtype in (jnp.float64, jnp.float32):
        with jax.enable_x64(dtype == jnp.float64):
            data = dl.RegressionData.linear(X, Y, dtype=dtype)
            ones, noise = jnp.ones(NUM_DRAWS, dtype), jnp.full(NUM_DRAWS, 1e-6, dtype)
            pm = dl.PredictiveMixture(jnp.asarray(q64, dtype), ones, noise, data, data.prediction_kernel(Xt))
            out[dtype] = [np.asarray(pm.mean, float), np.asarray(pm.covariance(), float),
                          np.asarray(loo_log_likelihood_draws(jnp.asarray(q64, dtype), ones, noise, data), float)]
    for name, ref, low in zip(("mean", "cov", "loo"), out[jnp.float64], out[jnp.float32]):
        assert np.max(np.abs(low - ref)) / np.max(np.abs(ref)) < PRED_RTOL32, name


def test_a_nearly_singular_noise_correlation_warns_in_float32():
    """Correlation 1 - 1e-7 in float32 is stored as 1 - 1.2e-7, so the noise covariance's smallest
    eigenvalue is 19% off and the held-out log density with it (issue 28): fit and log_evidence
    say so before sampling; a correlation of 0.99, or float64, does not warn."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(P, N0))
    Y = X @ rng.normal(size=(N0, 1)) + 1e-4 * rng.normal(size=(P, 2))
    near = 1 - 1e-7
    full = dict(noise_model="full", noise_variance=(1.0, 1.0), noise_correlation=((1.0, near), (near, 1.0)))
    data32 = dl.RegressionData.linear(X, Y, dtype="float32")
    with pytest.warns(PrecisionWarning, match="noise_correlation is nearly singular"):
        dl.fit(data32, dl.NNGPPrior(2), **full)
    with pytest.warns(PrecisionWarning, match="noise_correlation is nearly singular"):
        log_evidence(data32, dl.NNGPPrior(2), method="prior", num_particles=4, **full)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        dl.fit(data32, dl.NNGPPrior(2), **{**full, "noise_correlation": ((1.0, 0.99), (0.99, 1.0))})
        with jax.enable_x64(True):
            dl.fit(dl.RegressionData.linear(X, Y, dtype="float64"), dl.NNGPPrior(2), **full)
