"""General output noise (per-output variances, a full ``D x D`` covariance): the likelihood, its
leave-one-out terms and the conditional predictive against dense Gaussian references (scipy),
including the null-space columns of ``K``; the relative null-space term differs from the absolute
one by a constant of the data only; noise models through the specification, fit, predict, LOO and
persistence."""

import warnings

import arviz_stats
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

from deeplinear import KroneckerNormal, ModelSpec, ProportionalLimitPrior, RegressionData, fit, load_fit, save_fit
from deeplinear.likelihood import loo_log_likelihood, loo_log_likelihood_draws
from deeplinear.predictive import PredictiveMixture, conditional_predictive

LAMBDA = 0.8
ROUND_OFF = 1e-10


def _problem(D, P, N0, seed=0):
    """Inputs ``(P, N0)``, labels ``(P, D)``, a PD ``Q`` and a full and a diagonal noise covariance."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P, N0))
    Y = rng.normal(size=(P, D)) * np.arange(1, D + 1)  # outputs on different scales
    A = rng.normal(size=(D, D))
    Q = A @ A.T + 0.2 * np.eye(D)
    B = rng.normal(size=(D, D))
    full = B @ B.T / D + 0.3 * np.eye(D)
    diagonal = np.diag(rng.uniform(0.2, 2.0, size=D))
    return X, Y, Q, full, diagonal


def _dense_cov(Q, K, lam, noise_cov):
    """Covariance of ``Y.reshape(-1)`` (row-major, ``Y`` ``(P, D)``): lambda K (x) Q + I_P (x) Sigma."""
    return lam * np.kron(K, Q) + np.kron(np.eye(K.shape[0]), noise_cov)


def _data(X, Y, kernel):
    return RegressionData.linear(X, Y) if kernel == "linear" else RegressionData.from_gram(X @ X.T / X.shape[1], Y)


@pytest.mark.parametrize("D,P,N0", [(1, 7, 3), (2, 9, 4), (3, 12, 5), (2, 5, 8), (3, 5, 4)])
@pytest.mark.parametrize("noise", ["full", "diagonal"])
@pytest.mark.parametrize("kernel", ["linear", "gram"])
def test_log_prob_equals_dense_mvn(D, P, N0, noise, kernel):
    with jax.enable_x64(True):
        X, Y, Q, full, diagonal = _problem(D, P, N0)
        sigma = full if noise == "full" else diagonal
        data = _data(X, Y, kernel)
        expected = stats.multivariate_normal(np.zeros(P * D), _dense_cov(Q, X @ X.T / N0, LAMBDA, sigma)).logpdf(
            Y.reshape(-1))
        for root in (None, np.linalg.cholesky(Q)):
            d = KroneckerNormal(Q, LAMBDA, None, data, noise_covariance=sigma, root=root)
            assert abs(float(d.log_prob(data.labels)) - expected) <= ROUND_OFF * abs(expected)
            own = KroneckerNormal(Q, LAMBDA, None, data, noise_covariance=sigma, labels_are_data=True)
            assert abs(float(own.log_prob(data.labels)) - expected) <= ROUND_OFF * abs(expected)


def test_scalar_noise_as_a_covariance_agrees():
    with jax.enable_x64(True):
        X, Y, Q, _, _ = _problem(3, 12, 5)
        data = RegressionData.linear(X, Y)
        scalar = KroneckerNormal(Q, LAMBDA, 0.7, data).log_prob(data.labels)
        matrix = KroneckerNormal(Q, LAMBDA, None, data, noise_covariance=0.7 * np.eye(3)).log_prob(data.labels)
        assert abs(float(scalar) - float(matrix)) <= ROUND_OFF * abs(float(scalar))


@pytest.mark.parametrize("P,N0", [(40, 3), (5, 4)])  # null space of dimension 37 (>= D) and 1 (< D: no reference)
def test_relative_null_term_differs_by_a_data_constant(P, N0):
    with jax.enable_x64(True):
        D = 3
        X, Y, Q, full, diagonal = _problem(D, P, N0, seed=3)
        data = RegressionData.linear(X, Y)
        differences = []
        for sigma in (full, diagonal, 4.0 * full, np.cov(Y.T) + 0.01 * np.eye(D)):
            kw = dict(noise_covariance=sigma, labels_are_data=True)
            absolute = KroneckerNormal(Q, LAMBDA, None, data, **kw).log_prob(data.labels)
            relative = KroneckerNormal(Q, LAMBDA, None, data, relative=True, **kw).log_prob(data.labels)
            differences.append(float(absolute) - float(relative))
        n = P - N0
        if n >= D:
            s_hat = np.asarray(data.null_scatter) / n
            constant = -0.5 * n * (D * np.log(2 * np.pi) + np.linalg.slogdet(s_hat)[1] + D)
        else:
            constant = 0.0
        np.testing.assert_allclose(differences, constant, rtol=1e-9, atol=1e-9)


def test_relative_null_term_has_finite_gradients_at_its_reference_in_float32():
    X, Y, Q, _, _ = _problem(2, 200, 3, seed=5)
    data = RegressionData.linear(X, Y)
    reference = np.asarray(data.null_scatter, np.float64) / (200 - 3)

    def lp(sigma):
        return KroneckerNormal(Q, LAMBDA, None, data, noise_covariance=sigma, labels_are_data=True,
                               relative=True).log_prob(data.labels)

    grad = jax.grad(lp)(jnp.asarray(reference, jnp.float32))
    assert bool(jnp.all(jnp.isfinite(grad)))


def _dense_loo(Q, K, lam, sigma, Y):
    """log p(y_i | Y_-i) by conditioning the dense Gaussian on every other row."""
    P, D = Y.shape
    C = _dense_cov(Q, K, lam, sigma)
    y = Y.reshape(-1)
    out = []
    for i in range(P):
        idx = np.arange(i * D, (i + 1) * D)
        rest = np.setdiff1d(np.arange(P * D), idx)
        gain = np.linalg.solve(C[np.ix_(rest, rest)], C[np.ix_(rest, idx)])
        mean = gain.T @ y[rest]
        cov = C[np.ix_(idx, idx)] - C[np.ix_(idx, rest)] @ gain
        out.append(stats.multivariate_normal(mean, cov).logpdf(y[idx]))
    return np.array(out)


@pytest.mark.parametrize("D,P,N0", [(2, 9, 4), (3, 7, 9)])
def test_loo_with_noise_covariance_equals_dense_conditioning(D, P, N0):
    with jax.enable_x64(True):
        X, Y, Q, full, _ = _problem(D, P, N0, seed=1)
        data = RegressionData.linear(X, Y)
        expected = _dense_loo(Q, X @ X.T / N0, LAMBDA, full, Y)
        got = np.asarray(loo_log_likelihood(Q, LAMBDA, None, data, noise_covariance=full))
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        draws = np.asarray(loo_log_likelihood_draws(np.stack([Q, Q]), LAMBDA, None, data,
                                                    noise_covariance=np.stack([full, full])))
        np.testing.assert_allclose(draws, np.stack([expected, expected]), rtol=1e-9)


def test_loo_conditional_moments_equal_dense_conditioning():
    from deeplinear.likelihood import _loo_conditional_from_terms, _loo_data_terms

    with jax.enable_x64(True):
        D, P, N0 = 2, 9, 4
        X, Y, Q, full, _ = _problem(D, P, N0, seed=13)
        mu = INTERCEPT[:D]
        data = RegressionData.linear(X, Y + mu)
        C = _dense_cov(Q, X @ X.T / N0, LAMBDA, full)
        y = Y.reshape(-1)
        mean, cov = _loo_conditional_from_terms(jnp.asarray(Q), LAMBDA, jnp.asarray(full), data,
                                                _loo_data_terms(data, jnp.float64), data.labels, jnp.asarray(mu))
        for i in range(P):
            idx = np.arange(i * D, (i + 1) * D)
            rest = np.setdiff1d(np.arange(P * D), idx)
            gain = np.linalg.solve(C[np.ix_(rest, rest)], C[np.ix_(rest, idx)])
            np.testing.assert_allclose(np.asarray(mean[i]), gain.T @ y[rest] + mu, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(np.asarray(cov[i]), C[np.ix_(idx, idx)] - C[np.ix_(idx, rest)] @ gain,
                                       rtol=1e-9, atol=1e-12)


LOO_DRAWS = 4000  # label draws per row in the test of the fused LOO terms and draws


@pytest.mark.parametrize("noise", ["scalar", "full"])
def test_fused_loo_terms_and_draws_follow_dense_conditioning(noise):
    """The default posterior_predictive's draws (fit's one program for the LOO terms and draws): their
    log densities equal scipy's conditional density, their sample moments the dense conditional's at
    5 Monte Carlo standard errors (the row's mean; each covariance entry)."""
    from scipy import stats

    from deeplinear.likelihood import _loo_data_terms, _loo_terms_and_draw

    with jax.enable_x64(True):
        D, P, N0 = 2, 9, 4  # P > N0: a null space
        X, Y, Q, full, _ = _problem(D, P, N0, seed=21)
        full = full if noise == "full" else 0.3 * np.eye(D)
        mu = INTERCEPT[:D]
        data = RegressionData.linear(X, Y + mu)
        C = _dense_cov(Q, X @ X.T / N0, LAMBDA, full)
        y = (Y + mu).reshape(-1)
        terms = _loo_data_terms(data, jnp.float64)
        noise_arg = jnp.asarray(full) if noise == "full" else jnp.asarray(0.3)
        keys = jax.random.split(jax.random.key(5), LOO_DRAWS)
        ll, draws = jax.vmap(lambda k: _loo_terms_and_draw(k, jnp.asarray(Q), LAMBDA, noise_arg, data, terms,
                                                           jnp.asarray(mu)))(keys)
        ll, draws = np.asarray(ll), np.asarray(draws)
        assert np.all(ll == ll[0])  # the key draws the labels only
        for i in range(P):
            idx = np.arange(i * D, (i + 1) * D)
            rest = np.setdiff1d(np.arange(P * D), idx)
            gain = np.linalg.solve(C[np.ix_(rest, rest)], C[np.ix_(rest, idx)])
            mean = gain.T @ (y[rest] - np.tile(mu, P - 1)) + mu
            cov = C[np.ix_(idx, idx)] - C[np.ix_(idx, rest)] @ gain
            np.testing.assert_allclose(ll[0, i], stats.multivariate_normal(mean, cov).logpdf(y[idx]), rtol=1e-9)
            got = draws[:, i]
            se_mean = np.sqrt(np.diag(cov) / LOO_DRAWS)
            assert np.all(np.abs(got.mean(0) - mean) < 5 * se_mean), (i, got.mean(0), mean)
            se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / LOO_DRAWS)
            assert np.all(np.abs(np.cov(got.T) - cov) < 5 * se_cov), (i, np.cov(got.T), cov)


@pytest.mark.parametrize("D,P,N0", [(2, 9, 4), (3, 6, 8)])
def test_conditional_predictive_with_noise_covariance_equals_dense_gp(D, P, N0):
    with jax.enable_x64(True):
        X, Y, Q, full, _ = _problem(D, P, N0, seed=2)
        X_test = np.random.default_rng(9).normal(size=(4, N0))
        data = RegressionData.linear(X, Y)
        test = data.prediction_kernel(X_test)
        K, Ks, Kss = X @ X.T / N0, X_test @ X.T / N0, X_test @ X_test.T / N0
        C = _dense_cov(Q, K, LAMBDA, full)
        cross = LAMBDA * np.kron(Ks, Q)  # Cov(vec f*, vec Y)
        mean = (cross @ np.linalg.solve(C, Y.reshape(-1))).reshape(4, D)
        cov = LAMBDA * np.kron(Kss, Q) - cross @ np.linalg.solve(C, cross.T)
        got_mean, got_cov = conditional_predictive(Q, LAMBDA, None, data, test, joint=True, noise_covariance=full)
        np.testing.assert_allclose(np.asarray(got_mean), mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(got_cov).reshape(4 * D, 4 * D), cov, rtol=1e-8, atol=1e-12)
        # the mixture of one draw: moments, and the held-out density of new labels (noise added)
        mix = PredictiveMixture(Q[None], LAMBDA, None, data, test, noise_covariance=full)
        np.testing.assert_allclose(np.asarray(mix.mean), mean, rtol=1e-9, atol=1e-12)
        per_input = np.stack([cov[j * D:(j + 1) * D, j * D:(j + 1) * D] for j in range(4)])
        np.testing.assert_allclose(np.asarray(mix.covariance()), per_input, rtol=1e-8, atol=1e-12)
        Y_test = np.random.default_rng(10).normal(size=(4, D))
        joint = stats.multivariate_normal(mean.reshape(-1), cov + np.kron(np.eye(4), full)).logpdf(Y_test.reshape(-1))
        pointwise = sum(stats.multivariate_normal(mean[j], per_input[j] + full).logpdf(Y_test[j]) for j in range(4))
        assert abs(float(mix.log_predictive_density(Y_test, joint=True)) - joint) <= 1e-9 * abs(joint)
        assert abs(float(mix.log_predictive_density(Y_test)) - pointwise) <= 1e-9 * abs(pointwise)


@pytest.mark.parametrize("bad,match", [
    (np.eye(3), "shape"),
    (np.array([[1.0, 0.5], [0.4, 1.0]]), "symmetric"),
    (np.array([[1.0, 2.0], [2.0, 1.0]]), "positive definite"),
    (np.array([[np.nan, 0.0], [0.0, 1.0]]), "finite"),
])
def test_bad_noise_covariance_is_refused(bad, match):
    X, Y, Q, _, _ = _problem(2, 9, 4)
    data = RegressionData.linear(X, Y)
    with pytest.raises(ValueError, match=match):
        KroneckerNormal(Q, LAMBDA, None, data, noise_covariance=bad)
    with pytest.raises(ValueError, match="not both"):
        KroneckerNormal(Q, LAMBDA, 1.0, data, noise_covariance=np.eye(2))


# -- the model specification, fit, predict, LOO and persistence -----------------------------------

FIT_SETTINGS = dict(num_warmup=150, num_samples=100, num_chains=2, progress_bar=False)


@pytest.mark.parametrize("kw", [
    dict(noise_model="diagonal", noise_variance=(0.5, 0.7)),
    dict(noise_model="diagonal", noise_variance=dist.LogNormal(0.0, 0.5)),
    dict(noise_model="full", noise_variance=(0.5, 0.7), noise_correlation=[[1.0, 0.3], [0.3, 1.0]]),
    dict(noise_model="full", noise_variance=dist.HalfNormal(1.0), noise_correlation=dist.LKJCholesky(2, 2.0)),
    dict(noise_model="full", noise_variance=dist.HalfNormal(1.0)),
])
def test_spec_with_noise_model_round_trips_through_json(kw):
    spec = ModelSpec(ProportionalLimitPrior(1.0, 2), **kw)
    again = ModelSpec.from_json(spec.to_json())
    assert again.to_dict() == spec.to_dict()
    assert again.noise_model == kw["noise_model"]
    if kw["noise_model"] == "full" and "noise_correlation" not in kw:
        assert isinstance(spec.noise_correlation, dist.LKJCholesky) and float(spec.noise_correlation.concentration) == 1
    assert "noise_model" in spec.describe()


def test_scalar_spec_is_written_as_before():
    spec = ModelSpec(ProportionalLimitPrior(1.0, 2), noise_variance=0.5)
    assert set(spec.to_dict()) == {"prior", "lambda_star", "noise_variance", "ratio"}


@pytest.mark.parametrize("kw,error,match", [
    (dict(noise_model="diagonal", noise_variance=0.5), ValueError, "D = 2 noise variances"),
    (dict(noise_model="diagonal", noise_variance=(0.5, 0.5, 0.5)), ValueError, r"shape \(2,\)"),
    (dict(noise_model="diagonal", noise_variance=(0.5, -1.0)), ValueError, "positive"),
    (dict(noise_model="diagonal", noise_variance=(0.5, 0.5), noise_correlation=np.eye(2)), ValueError, "only for"),
    (dict(noise_model="scalar", noise_correlation=np.eye(2)), ValueError, "only for"),
    (dict(noise_model="full", noise_variance=(1.0, 1.0), noise_correlation=[[1.0, 2.0], [2.0, 1.0]]), ValueError,
     "positive definite"),
    (dict(noise_model="full", noise_variance=(1.0, 1.0), noise_correlation=[[2.0, 0.0], [0.0, 1.0]]), ValueError,
     "unit diagonal"),
    (dict(noise_model="full", noise_variance=(1.0, 1.0), noise_correlation=dist.LKJCholesky(3, 1.0)), ValueError,
     "LKJCholesky"),
    (dict(noise_model="full", noise_variance=(1.0, 1.0), noise_correlation=dist.Normal(0.0, 1.0)), ValueError,
     "LKJCholesky"),
    (dict(noise_model="full"), ValueError, "D = 2 noise variances"),
    (dict(noise_model="correlated"), ValueError, "noise_model must be one of"),
    (dict(noise_model="diagonal", noise_variance="big"), TypeError, "noise_variance"),
])
def test_bad_noise_model_arguments_are_refused(kw, error, match):
    with pytest.raises(error, match=match):
        ModelSpec(ProportionalLimitPrior(1.0, 2), **kw)


def test_full_noise_needs_two_outputs():
    with pytest.raises(ValueError, match="D >= 2"):
        ModelSpec(ProportionalLimitPrior(1.0, 1), noise_model="full", noise_variance=dist.HalfNormal(1.0))


def _small_fit(noise_model, tmp_path=None, **kw):
    X, Y, _, _, _ = _problem(2, 30, 3, seed=4)
    data = RegressionData.linear(X, Y)
    return fit(data, ProportionalLimitPrior(1.0, 2, num_steps=8), noise_model=noise_model,
               noise_variance=dist.LogNormal(0.0, 1.0), key=1, **FIT_SETTINGS, **kw), X


@pytest.mark.parametrize("noise_model", ["diagonal", "full"])
def test_fit_predict_loo_and_persistence_with_a_noise_model(noise_model, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short chains: convergence warnings are not the point here
        res, X = _small_fit(noise_model)
    post = res.datatree["posterior"]
    assert post["noise_variance"].dims == ("chain", "draw", "output")
    assert post["noise_covariance"].dims == ("chain", "draw", "output", "output_bis")
    if noise_model == "full":
        assert "noise_correlation" in post and "noise_correlation" in res.diagnostics().variables
        corr = post["noise_correlation"].values
        np.testing.assert_allclose(np.diagonal(corr, axis1=-2, axis2=-1), 1.0, atol=1e-5)
    else:
        cov = post["noise_covariance"].values
        np.testing.assert_array_equal(cov[..., 0, 1], 0.0)
        np.testing.assert_allclose(cov[..., [0, 1], [0, 1]], post["noise_variance"].values, rtol=1e-6)
    tri = res.distinct_entries()["posterior"]
    assert tri["Q"].dims == ("chain", "draw", "Q_entry")
    assert list(tri["noise_covariance"].coords["noise_covariance_entry"].values) == ["0, 0", "0, 1", "1, 1"]
    summary = res.summary()
    assert "Q[0, 1]" in summary.index and "Q[1, 0]" not in summary.index
    pm = res.predict(X[:4])
    assert pm.noise_variance is None and pm.noise_covariance.shape == (200, 2, 2)
    assert np.all(np.isfinite(np.asarray(pm.covariance(include_noise=True))))
    # the stored LOO terms are the noise model's (independent check: the draws through the public function)
    ll = res.datatree["log_likelihood"]["Y"].values.reshape(200, -1)
    expected = loo_log_likelihood(res.draws("Q")[7], res.draws("lambda_star")[7], None, res.data,
                                  noise_covariance=res.draws("noise_covariance")[7])
    np.testing.assert_allclose(ll[7], np.asarray(expected), rtol=1e-5)
    assert np.isfinite(float(arviz_stats.loo(res.datatree).elpd))
    path = save_fit(res, tmp_path / "fit.nc")
    again = load_fit(path)
    assert again.spec.to_dict() == res.spec.to_dict()
    np.testing.assert_allclose(np.asarray(again.predict(X[:4]).mean), np.asarray(pm.mean), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(again.data.null_scatter), np.asarray(res.data.null_scatter), rtol=1e-5)


def test_fixed_full_noise_fit_uses_the_fixed_covariance():
    corr = [[1.0, -0.4], [-0.4, 1.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, Y, _, _, _ = _problem(2, 30, 3, seed=4)
        res = fit(RegressionData.linear(X, Y), ProportionalLimitPrior(1.0, 2, num_steps=8), noise_model="full",
                  noise_variance=(0.3, 0.6), noise_correlation=corr, key=1, **FIT_SETTINGS)
    expected = np.sqrt([0.3, 0.6])[:, None] * np.asarray(corr) * np.sqrt([0.3, 0.6])[None, :]
    np.testing.assert_allclose(res.noise_draws()[0], expected, rtol=1e-6)
    assert res.noise_draws().shape == (200, 2, 2)


# -- per-output intercepts ---------------------------------------------------------------------------

INTERCEPT = np.array([1.5, -0.7, 0.3])


@pytest.mark.parametrize("D,P,N0", [(2, 9, 4), (3, 12, 5), (3, 5, 8), (1, 7, 3)])
@pytest.mark.parametrize("noise", ["scalar", "full"])
def test_log_prob_with_intercept_equals_dense_mvn(D, P, N0, noise):
    with jax.enable_x64(True):
        X, Y, Q, full, _ = _problem(D, P, N0, seed=6)
        Y = Y + 3.0 * INTERCEPT[:D]  # labels off centre
        mu = INTERCEPT[:D]
        sigma = full if noise == "full" else 0.4 * np.eye(D)
        kw = dict(noise_covariance=sigma) if noise == "full" else {}
        nv = None if noise == "full" else 0.4
        data = RegressionData.linear(X, Y)
        mvn = stats.multivariate_normal(np.tile(mu, P), _dense_cov(Q, X @ X.T / N0, LAMBDA, sigma))
        expected = mvn.logpdf(Y.reshape(-1))
        for own in (False, True):  # shifting the value, and the O(R D) update of the precomputed rotation
            d = KroneckerNormal(Q, LAMBDA, nv, data, intercept=mu, labels_are_data=own, root=np.linalg.cholesky(Q),
                                **kw)
            assert abs(float(d.log_prob(data.labels)) - expected) <= ROUND_OFF * abs(expected)
        d = KroneckerNormal(Q, LAMBDA, nv, data, intercept=mu, **kw)
        np.testing.assert_allclose(np.asarray(d.mean), np.tile(mu, (P, 1)))


@pytest.mark.parametrize("noise", ["scalar", "full"])
def test_relative_form_with_intercept_differs_by_a_constant(noise):
    with jax.enable_x64(True):
        D, P, N0 = 3, 40, 3
        X, Y, Q, full, diagonal = _problem(D, P, N0, seed=7)
        data = RegressionData.linear(X, Y + INTERCEPT)
        differences = []
        for scale, mu in ((1.0, INTERCEPT), (2.0, 0.0 * INTERCEPT), (0.5, -INTERCEPT)):
            if noise == "full":
                kw = dict(noise_covariance=scale * full)
                nv = None
            else:
                kw, nv = {}, scale * 0.5
            values = [float(KroneckerNormal(Q, LAMBDA, nv, data, intercept=mu, labels_are_data=True, relative=rel,
                                            **kw).log_prob(data.labels)) for rel in (False, True)]
            differences.append(values[0] - values[1])
        np.testing.assert_allclose(differences, differences[0], rtol=1e-9)


def test_streamed_intercept_terms_equal_in_memory_ones():
    with jax.enable_x64(True):
        from deeplinear import ArrayChunks

        rng = np.random.default_rng(8)
        X = rng.normal(size=(500, 4)) + 2.0
        Y = rng.normal(size=(500, 2)) + np.array([5.0, -3.0])
        memory = RegressionData.linear(X, Y).intercept_terms
        streamed = RegressionData.from_chunks(ArrayChunks(X, Y, chunk_rows=64)).intercept_terms
        for name in ("null_ones", "null_mean", "centred_null_scatter"):
            np.testing.assert_allclose(np.asarray(getattr(streamed, name)), np.asarray(getattr(memory, name)),
                                       rtol=1e-8, err_msg=name)
        # eigenvector signs are canonical, so the rotated constant agrees too
        np.testing.assert_allclose(np.abs(np.asarray(streamed.rotated_ones)), np.abs(np.asarray(memory.rotated_ones)),
                                   rtol=1e-8)


def test_constant_input_column_leaves_no_null_space_intercept():
    with jax.enable_x64(True):
        rng = np.random.default_rng(9)
        X = np.hstack([np.ones((30, 1)), rng.normal(size=(30, 2))])
        terms = RegressionData.linear(X, rng.normal(size=(30, 2))).intercept_terms
        assert float(terms.null_ones) == 0.0 and np.all(np.asarray(terms.null_mean) == 0.0)


def test_loo_and_predictive_with_intercept_equal_dense_references():
    with jax.enable_x64(True):
        D, P, N0 = 2, 9, 4
        X, Y, Q, full, _ = _problem(D, P, N0, seed=10)
        mu = INTERCEPT[:D]
        Y = Y + mu
        data = RegressionData.linear(X, Y)
        expected = _dense_loo(Q, X @ X.T / N0, LAMBDA, full, Y - mu)  # a shift by the mean: same densities
        got = np.asarray(loo_log_likelihood(Q, LAMBDA, None, data, noise_covariance=full, intercept=mu))
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        X_test = np.random.default_rng(11).normal(size=(3, N0))
        test = data.prediction_kernel(X_test)
        C = _dense_cov(Q, X @ X.T / N0, LAMBDA, full)
        cross = LAMBDA * np.kron(X_test @ X.T / N0, Q)
        mean = (cross @ np.linalg.solve(C, (Y - mu).reshape(-1))).reshape(3, D) + mu
        got_mean, _ = conditional_predictive(Q, LAMBDA, None, data, test, noise_covariance=full, intercept=mu)
        np.testing.assert_allclose(np.asarray(got_mean), mean, rtol=1e-9)
        # a mixture over two intercepts: the mean averages them, the spread between them adds to the covariance
        mus = np.stack([mu, -mu])
        mix = PredictiveMixture(np.stack([Q, Q]), LAMBDA, None, data, test, noise_covariance=full, intercept=mus)
        parts = [conditional_predictive(Q, LAMBDA, None, data, test, noise_covariance=full, intercept=m) for m in mus]
        m = np.mean([np.asarray(p[0]) for p in parts], axis=0)
        spread = np.mean([np.einsum("jd,je->jde", np.asarray(p[0]) - m, np.asarray(p[0]) - m) for p in parts], axis=0)
        np.testing.assert_allclose(np.asarray(mix.mean), m, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(mix.covariance()), np.asarray(parts[0][1]) + spread, rtol=1e-9)


def test_fit_with_intercept_predicts_and_round_trips(tmp_path):
    X, Y, _, _, _ = _problem(2, 30, 3, seed=12)
    Y = Y + np.array([4.0, -2.0])
    data = RegressionData.linear(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit(data, ProportionalLimitPrior(1.0, 2, num_steps=8), intercept=dist.Normal(0.0, 5.0),
                  noise_variance=dist.LogNormal(0.0, 1.0), key=3, **FIT_SETTINGS)
    post = res.datatree["posterior"]
    assert post["intercept"].dims == ("chain", "draw", "output")
    assert "intercept" in res.diagnostics().variables
    pm = res.predict(X[:4])
    assert pm.intercept.shape == (200, 2)
    assert np.all(np.isfinite(float(arviz_stats.loo(res.datatree).elpd)))
    again = load_fit(save_fit(res, tmp_path / "fit.nc"))
    assert again.spec.to_dict()["intercept"] == {"distribution": "Normal", "loc": 0.0, "scale": 5.0}
    np.testing.assert_allclose(np.asarray(again.predict(X[:4]).mean), np.asarray(pm.mean), rtol=1e-6)


@pytest.mark.parametrize("value,error,match", [
    (0.5, ValueError, "2 numbers"),
    ((1.0, 2.0, 3.0), ValueError, "2 finite numbers"),
    ((1.0, np.nan), ValueError, "finite"),
    (dist.HalfNormal(1.0), ValueError, "real line"),
    (dist.Normal(np.zeros(2), 1.0), ValueError, "one real number"),
])
def test_bad_intercepts_are_refused(value, error, match):
    with pytest.raises(error, match=match):
        ModelSpec(ProportionalLimitPrior(1.0, 2), intercept=value)
