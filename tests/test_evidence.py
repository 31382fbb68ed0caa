"""log_evidence (issue 16, item 1) against independent references: the exact D = 1 evidence
(quadrature / FFT convolution in deeplinear.exact, which share no code with the samplers), the
NNGP closed form, and for D = 2 plain importance sampling with 10^6 prior draws written here in
NumPy; and the honesty of its standard error across seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from deeplinear import (
    ConvergenceWarning,
    FiniteWidthPrior,
    KroneckerNormal,
    ModelSpec,
    NNGPPrior,
    PrecisionWarning,
    ProportionalLimitPrior,
    RegressionData,
    exact_posterior_d1,
)
from deeplinear.evidence import evidence_curve, log_evidence
from deeplinear.likelihood import relative_constant

TOLERANCE_SE = 4.0  # agreement within this many (combined) standard errors
PARTICLES = 512
REFERENCE_DRAWS = 10**6  # plain importance sampling for D = 2
SEEDS = 20  # runs whose spread is set against the stated standard error
HONESTY_PARTICLES = 128
NOISE = 0.3


def _arrays(P, D, N0, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P, N0))
    return X, X @ rng.normal(size=(N0, D)) / np.sqrt(N0) + np.sqrt(NOISE) * rng.normal(size=(P, D)) + shift


def _data(P, D, N0, seed=0, shift=0.0):
    return RegressionData.linear(*_arrays(P, D, N0, seed, shift))


@pytest.mark.parametrize("prior", [ProportionalLimitPrior(1.5, 1), FiniteWidthPrior((3, 4, 3), 1)],
                         ids=["limit", "finite"])
@pytest.mark.device
def test_d1_log_evidence_agrees_with_the_exact_reference(prior):
    with jax.enable_x64(True):
        data = _data(14, 1, 3)
        exact = exact_posterior_d1(data, prior, lambda_star=1.3, noise_variance=NOISE).log_evidence
        est = log_evidence(data, prior, lambda_star=1.3, noise_variance=NOISE, method="ais", num_particles=PARTICLES,
                           key=3)
        plain = log_evidence(data, prior, lambda_star=1.3, noise_variance=NOISE, method="prior", num_particles=2**14,
                             key=3)
    assert est.method == "ais" and est.num_temperatures >= 16
    assert 0 < est.standard_error < 0.05
    assert abs(est.log_evidence - exact) < TOLERANCE_SE * est.standard_error, (est, exact)
    # few latent dimensions: the prior is close enough to the posterior for prior importance sampling
    assert plain.method == "prior" and plain.num_temperatures == 1
    assert abs(plain.log_evidence - exact) < TOLERANCE_SE * plain.standard_error, (plain, exact)


def test_nngp_log_evidence_is_the_closed_form():
    with jax.enable_x64(True):
        data = _data(9, 1, 4)
        exact = exact_posterior_d1(data, NNGPPrior(1), lambda_star=0.7, noise_variance=NOISE).log_evidence
        est = log_evidence(data, NNGPPrior(1), lambda_star=0.7, noise_variance=NOISE)
        # D = 2 with independent outputs: the sum of the two one-output evidences
        X2, Y2 = _arrays(9, 2, 4, seed=1)
        est2 = log_evidence(RegressionData.linear(X2, Y2), NNGPPrior(2), lambda_star=0.7, noise_variance=NOISE)
        parts = [exact_posterior_d1(RegressionData.linear(X2, Y2[:, [d]]), NNGPPrior(1), lambda_star=0.7,
                                    noise_variance=NOISE).log_evidence for d in range(2)]
    assert est.method == "exact" and est.standard_error == 0.0
    assert abs(est.log_evidence - exact) < 1e-6
    assert abs(est2.log_evidence - sum(parts)) < 1e-6


def _bartlett_q(rng, widths, n):
    """Q = Vbar Vbar^T for D = 2 from the Bartlett factors, written out: (n, 2, 2)."""
    vbar = np.broadcast_to(np.eye(2), (n, 2, 2))
    for N in widths:
        v = np.zeros((n, 2, 2))
        v[:, 0, 0] = np.sqrt(rng.chisquare(N, n))
        v[:, 1, 1] = np.sqrt(rng.chisquare(N - 1, n))
        v[:, 1, 0] = rng.normal(size=n)
        vbar = (v / np.sqrt(N)) @ vbar
    return vbar @ np.swapaxes(vbar, 1, 2)


def _plain_importance_sampling(X, Y, widths, lam, noise, seed):
    """log p(Y) = log E_Q[N(vec Y; 0, lam Q (x) K + noise I)] by the mean over REFERENCE_DRAWS draws of Q,
    with K = X X^T / N0 diagonalized here; returns (estimate, standard error)."""
    rng = np.random.default_rng(seed)
    P, D = Y.shape
    kappa, U = np.linalg.eigh(X @ X.T / X.shape[1])
    ytil = U.T @ Y  # (P, D), every eigen-direction (zero eigenvalues give the noise-only blocks)
    q = _bartlett_q(rng, widths, REFERENCE_DRAWS)
    loglik = np.zeros(REFERENCE_DRAWS)
    for p in range(P):
        c = lam * max(kappa[p], 0.0) * q + noise * np.eye(D)
        det = c[:, 0, 0] * c[:, 1, 1] - c[:, 0, 1] ** 2
        y0, y1 = ytil[p]
        quad = (c[:, 1, 1] * y0**2 - 2 * c[:, 0, 1] * y0 * y1 + c[:, 0, 0] * y1**2) / det
        loglik += -np.log(2 * np.pi) - 0.5 * np.log(det) - 0.5 * quad
    top = loglik.max()
    w = np.exp(loglik - top)
    return top + np.log(w.mean()), w.std(ddof=1) / w.mean() / np.sqrt(REFERENCE_DRAWS)


def test_d2_log_evidence_agrees_with_plain_importance_sampling():
    widths, lam = (4, 3), 1.2
    with jax.enable_x64(True):
        X, Y = _arrays(6, 2, 3, seed=2)
        est = log_evidence(RegressionData.linear(X, Y), FiniteWidthPrior(widths, 2), lambda_star=lam,
                           noise_variance=NOISE, method="ais", num_particles=PARTICLES, key=5)
    ref, ref_se = _plain_importance_sampling(X, Y, widths, lam, NOISE, seed=7)
    assert ref_se < 0.01
    combined = np.hypot(est.standard_error, ref_se)
    assert abs(est.log_evidence - ref) < TOLERANCE_SE * combined, (est, ref, ref_se)


def test_standard_error_is_honest_across_seeds():
    """The spread of SEEDS independent estimates against their stated standard error, at a
    deliberately coarse setting (128 particles, 16 temperatures) so that the error is visible."""
    data = _data(10, 2, 3, seed=4)
    spec = ModelSpec(ProportionalLimitPrior(1.0, 2, num_steps=4), noise_variance=dist.HalfNormal(1.0))
    runs = [log_evidence(data, spec, method="ais", num_particles=HONESTY_PARTICLES, num_temperatures=16, key=s)
            for s in range(SEEDS)]
    values = np.array([r.log_evidence for r in runs])
    stated = np.sqrt(np.mean([r.standard_error**2 for r in runs]))
    ratio = values.std(ddof=1) / stated
    assert 0.5 <= ratio <= 2.0, (ratio, values, stated)
    assert stated > 0.01  # a coarse setting: the error is there to be measured


@pytest.mark.device
def test_prior_importance_sampling_and_float32_agree_with_ais():
    data = _data(8, 2, 3, seed=6)
    prior = ProportionalLimitPrior(0.8, 2, num_steps=4)
    ais = log_evidence(data, prior, noise_variance=NOISE, method="ais", num_particles=PARTICLES, key=1)  # float32
    with jax.enable_x64(True):
        data64 = _data(8, 2, 3, seed=6)
        plain = log_evidence(data64, prior, noise_variance=NOISE, method="prior", num_particles=20_000, key=2)
    assert plain.num_temperatures == 1 and np.isnan(plain.acceptance_rate)
    assert 0.3 < ais.acceptance_rate < 0.95
    assert abs(ais.log_evidence - plain.log_evidence) < TOLERANCE_SE * np.hypot(ais.standard_error,
                                                                                 plain.standard_error)


def test_same_key_same_estimate_and_curve_keys():
    data = _data(8, 1, 3, seed=8)
    specs = {a: ProportionalLimitPrior(a, 1) for a in (0.5, 2.0)}
    first = evidence_curve(data, specs, key=4, num_particles=64)
    again = log_evidence(data, specs[2.0], num_particles=64, key=jax.random.fold_in(jax.random.key(4), 1))
    assert list(first.index) == [0.5, 2.0]
    assert first.loc[2.0, "log_evidence"] == again.log_evidence


@pytest.mark.parametrize("noise_model,intercept", [("scalar", False), ("scalar", True), ("full", False),
                                                   ("diagonal", True)])
def test_relative_constant_is_what_the_relative_likelihood_leaves_out(noise_model, intercept):
    with jax.enable_x64(True):
        data = _data(12, 2, 3, seed=9, shift=1.5 if intercept else 0.0)
        q = jnp.array([[1.0, 0.3], [0.3, 0.5]])
        mu = jnp.array([0.2, -0.1]) if intercept else None
        kwargs = {"noise_covariance": jnp.array([[0.4, 0.1], [0.1, 0.3]])} if noise_model != "scalar" else {}
        noise = None if kwargs else 0.4
        values = [KroneckerNormal(q, 1.1, noise, data, labels_are_data=True, relative=rel, intercept=mu,
                                  **kwargs).data_log_prob() for rel in (False, True)]
    constant = relative_constant(data, matrix_noise=noise_model != "scalar", intercept=intercept)
    assert constant != 0.0
    np.testing.assert_allclose(float(values[0] - values[1]), constant, rtol=1e-12)


@pytest.mark.parametrize("kwargs,exc,fragment", [
    ({"method": "smc"}, ValueError, "method"),
    ({"num_particles": 1}, ValueError, "num_particles"),
    ({"num_particles": 2.5}, TypeError, "num_particles"),
    ({"num_temperatures": 0}, ValueError, "num_temperatures"),
    ({"num_leapfrog": 10**6}, ValueError, "num_leapfrog"),
    ({"key": -1}, ValueError, "key"),
    ({"progress_bar": "yes"}, TypeError, "progress_bar"),
    ({"noise_variance": -1.0}, ValueError, "noise_variance"),
])
def test_bad_input_is_refused_before_compilation(kwargs, exc, fragment, monkeypatch):
    import deeplinear.evidence as ev

    calls = []
    monkeypatch.setattr(ev, "_start", lambda *a, **k: calls.append(1))
    with pytest.raises(exc) as info:
        log_evidence(_data(6, 2, 3), ProportionalLimitPrior(1.0, 2), **kwargs)
    assert fragment in str(info.value)
    assert not calls


def test_evidence_curve_refuses_bad_specs():
    with pytest.raises(TypeError, match="specs"):
        evidence_curve(_data(6, 2, 3), [ProportionalLimitPrior(1.0, 2)])
    with pytest.raises(ValueError, match="num_outputs"):
        evidence_curve(_data(6, 2, 3), {"one": ProportionalLimitPrior(1.0, 1)})



# --- Issue 28: estimates that say when they cannot be trusted ------------------------------------------

def _raw_unit_data(scale):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3))
    Y = X @ rng.normal(size=(3, 2)) + 1e-3 * rng.normal(size=(10, 2))
    return RegressionData.linear(X, Y * scale)


def test_the_precision_check_of_fit_protects_log_evidence():
    """float32 with a tiny fixed noise cannot resolve the likelihood (the evidence was 1.3e6 nats
    off float64, equal for two priors): the PrecisionWarning that fit gives, before sampling."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_evidence(_raw_unit_data(1.0), FiniteWidthPrior((4, 4), 2), noise_variance=1e-9, num_particles=16,
                     method="prior")
    assert any(issubclass(w.category, PrecisionWarning) and "float32 cannot resolve" in str(w.message)
               for w in caught)


def test_a_capped_schedule_warns(monkeypatch):
    """Labels in raw units need far more temperatures than the cap: the estimate's own diagnostic
    (the schedule it wanted) is reported, not hidden behind a sub-nat standard error."""
    import warnings

    import deeplinear.evidence as evidence

    monkeypatch.setattr(evidence, "MAX_TEMPERATURES", 64)  # the check, at a size that runs in seconds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimate = log_evidence(_raw_unit_data(1e3), ProportionalLimitPrior(1.0, 2), noise_variance=1.0,
                                num_particles=16, pilot_particles=16)
    assert estimate.num_temperatures == 64
    assert any(issubclass(w.category, ConvergenceWarning) and "capped at MAX_TEMPERATURES = 64" in str(w.message)
               for w in caught)


def test_log_weights_equal_to_rounding_give_no_standard_error_of_zero():
    """Weights that agree to float32's rounding at 1.3e6 nats carry no information on the error:
    NaN with a warning, never 0; weights with a real spread keep their delta-method error."""
    import warnings

    from deeplinear.evidence import _honest_standard_error

    flat = np.full(64, -1.3e6, np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.isnan(_honest_standard_error(flat, 0.0, 64.0, 64))
    assert [w.category for w in caught] == [ConvergenceWarning] and "float64" in str(caught[0].message)
    spread = np.linspace(-3.0, -1.0, 64).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _honest_standard_error(spread, 0.25, 40.0, 64) == 0.25
    assert not caught


def test_compare_models_puts_the_evidence_beside_loo():
    """Issue 31: compare_models(evidence=True) adds log evidence and the log Bayes factor against the
    first model. Two fixed NNGPs have closed-form evidence (per output, N(y_d; 0, lambda K + sigma^2 I),
    scipy here); a limit prior gets the AIS estimate with its standard error."""
    import warnings

    from scipy.stats import multivariate_normal

    import deeplinear as dl

    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3))
    Y = X @ rng.normal(size=(3, 2)) + 0.5 * rng.normal(size=(8, 2))
    data = dl.RegressionData.linear(X, Y, dtype="float32")
    K = X @ X.T / 3

    def closed_form(noise):
        return sum(multivariate_normal.logpdf(Y[:, d], np.zeros(8), K + noise * np.eye(8)) for d in range(2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.ConvergenceWarning)
        fits = {"a": dl.fit(data, dl.NNGPPrior(2), noise_variance=0.25),
                "b": dl.fit(data, dl.NNGPPrior(2), noise_variance=1.0),
                "limit": dl.fit(data, dl.ProportionalLimitPrior(1.0, 2, num_steps=4), noise_variance=0.25,
                                num_warmup=50, num_samples=50, num_chains=1, progress_bar=False)}
        table = dl.compare_models(fits, evidence=True, evidence_particles=64, key=3).table
    np.testing.assert_allclose(table.loc[["a", "b"], "log_evidence"], [closed_form(0.25), closed_form(1.0)],
                               rtol=1e-4)
    np.testing.assert_allclose(table.loc["b", "log_bayes_factor"], closed_form(1.0) - closed_form(0.25), rtol=1e-3)
    assert table.loc["b", "log_bayes_factor_se"] == 0.0 and list(table["evidence_note"][:2]) == ["exact"] * 2
    limit = log_evidence(data, fits["limit"].spec, num_particles=64, key=3)
    np.testing.assert_allclose(table.loc["limit", "log_evidence"], limit.log_evidence, rtol=1e-6)
    assert table.loc["limit", "log_bayes_factor_se"] == pytest.approx(limit.standard_error) and limit.standard_error > 0
