"""Predictive given Q against dense Gaussian conditioning, the NNGP against tinygp, the
mixture's moments against its own samples, and the exact D = 1 references against
independent importance sampling (plain NumPy draws from the prior).

The dense references are written in theory.md's column notation (``Xc`` is ``N0 x P``,
``Yc`` is ``D x P``); the package is called with rows (``Xc.T``, ``Yc.T``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats
from scipy.integrate import trapezoid
from scipy.linalg import cho_factor, cho_solve

from deeplinear import (
    FiniteWidthPrior,
    NNGPPrior,
    PredictiveMixture,
    ProportionalLimitPrior,
    RegressionData,
    exact_posterior_d1,
    fit,
    predictive,
)
from deeplinear.exact import log_product_density
from deeplinear.predictive import conditional_predictive

SEED = 7
MIX_SAMPLES = 40_000  # draws from the predictive mixture
IS_SAMPLES = 2_000_000  # importance-sampling draws for the exact D = 1 references
SIGMAS = 5.0


def _problem(D, P, N0, P_test=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N0, P))
    Xt = rng.normal(size=(N0, P_test))
    Y = rng.normal(size=(D, P))
    A = rng.normal(size=(D, D))
    return X, Xt, Y, A @ A.T + 0.3 * np.eye(D)


@pytest.mark.parametrize("D,P,N0,noise", [(2, 8, 3, 0.3), (3, 5, 6, 0.1), (2, 4, 6, 0.0)])
def test_conditional_predictive_equals_dense_conditioning(D, P, N0, noise):
    with jax.enable_x64(True):
        X, Xt, Y, Q = _problem(D, P, N0)  # columns
        lam = 1.4
        K, Ks, Kss = X.T @ X / N0, X.T @ Xt / N0, Xt.T @ Xt / N0
        S = lam * np.kron(Q, K) + noise * np.eye(D * P)
        Sx = lam * np.kron(Q, Ks)  # cov(vec Y, vec f*)  (output-major)
        mean_ref = (Sx.T @ np.linalg.solve(S, Y.reshape(-1))).reshape(D, -1)
        cov_ref = lam * np.kron(Q, Kss) - Sx.T @ np.linalg.solve(S, Sx)
        data = RegressionData.linear(X.T, Y.T)
        test = data.prediction_kernel(Xt.T)
        mean, cov = conditional_predictive(jnp.asarray(Q), lam, noise, data, test, joint=True)
        np.testing.assert_allclose(mean, mean_ref.T, rtol=1e-9, atol=1e-10)
        P_t = Xt.shape[1]
        joint = np.transpose(np.asarray(cov), (1, 0, 3, 2)).reshape(D * P_t, D * P_t)
        np.testing.assert_allclose(joint, cov_ref, rtol=1e-8, atol=1e-10)
        _, per_input = conditional_predictive(jnp.asarray(Q), lam, noise, data, test)
        for j in range(P_t):
            np.testing.assert_allclose(per_input[j], cov[j, :, j, :], rtol=1e-10, atol=1e-12)


def test_gram_route_equals_linear_route():
    with jax.enable_x64(True):
        X, Xt, Y, Q = _problem(2, 9, 3)
        a = RegressionData.linear(X.T, Y.T)
        b = RegressionData.from_gram(X.T @ X / 3, Y.T)
        ta = a.prediction_kernel(Xt.T)
        tb = b.prediction_kernel(cross_gram=X.T @ Xt / 3, test_gram=Xt.T @ Xt / 3)
        ma, ca = conditional_predictive(jnp.asarray(Q), 1.0, 0.2, a, ta)
        mb, cb = conditional_predictive(jnp.asarray(Q), 1.0, 0.2, b, tb)
        np.testing.assert_allclose(ma, mb, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ca, cb, rtol=1e-9, atol=1e-12)


def test_nngp_equals_tinygp_regression():
    """NNGP (Q = I): each output is a GP with kernel lambda* x.x'/N0 and noise sigma^2."""
    tinygp = pytest.importorskip("tinygp")
    with jax.enable_x64(True):
        D, P, N0 = 2, 10, 4
        X, Xt, Y, _ = _problem(D, P, N0, P_test=4)
        lam, noise = 1.8, 0.25
        data = RegressionData.linear(X.T, Y.T)
        result = fit(data, NNGPPrior(D), lambda_star=lam, noise_variance=noise, num_samples=5, num_chains=1)
        pm = result.predict(Xt.T)
        kernel = (lam / N0) * tinygp.kernels.DotProduct()
        # scipy GP regression (Cholesky of lambda* K + sigma^2 I) as the round-off reference
        K, Ks, Kss = X.T @ X / N0, X.T @ Xt / N0, Xt.T @ Xt / N0
        cho = cho_factor(lam * K + noise * np.eye(P))
        cov_ref = lam * Kss - lam**2 * Ks.T @ cho_solve(cho, Ks)
        for d in range(D):
            gp = tinygp.GaussianProcess(kernel, jnp.asarray(X.T), diag=noise)
            cond = gp.condition(jnp.asarray(Y[d]), jnp.asarray(Xt.T)).gp
            np.testing.assert_allclose(pm.mean[:, d], cond.loc, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(pm.mean[:, d], lam * Ks.T @ cho_solve(cho, Y[d]), rtol=1e-10, atol=1e-12)
            joint = np.asarray(pm.joint_covariance())[:, d, :, d]
            np.testing.assert_allclose(joint, cov_ref, rtol=1e-10, atol=1e-13)
            # tinygp's conditioned covariance itself differs from the dense scipy one by ~1e-8
            np.testing.assert_allclose(joint, cond.covariance, rtol=1e-6, atol=1e-9)
        cross = np.asarray(pm.covariance())[:, 0, 1]
        assert np.all(np.abs(cross) < 1e-12)


@pytest.mark.device
def test_mixture_moments_match_its_samples(dtype):
    """E[Sigma*] + Cov(m*) (closed form over draws) against joint samples from the mixture."""
    X, Xt, Y, _ = _problem(2, 6, 3, P_test=2, seed=2)
    data = RegressionData.linear(X.T, Y.T, dtype=dtype)
    prior = ProportionalLimitPrior(1.0, 2, num_steps=16)
    q = prior.sample_q(jax.random.key(SEED), (50,), dtype)
    pm = PredictiveMixture(q, 1.0, 0.3, data, data.prediction_kernel(Xt.T))
    f = np.asarray(pm.sample(jax.random.key(SEED + 1), MIX_SAMPLES), np.float64)  # (n, P*, D)
    assert f.shape == (MIX_SAMPLES, 2, 2)
    mean, cov = np.asarray(pm.mean, np.float64), np.asarray(pm.covariance(), np.float64)
    emp_mean = f.mean(0)
    sd = np.sqrt(np.einsum("jdd->jd", cov))
    assert np.all(np.abs(emp_mean - mean) < SIGMAS * sd / np.sqrt(MIX_SAMPLES))
    dev = f - mean
    prods = np.einsum("njd,nje->njde", dev, dev)
    emp_cov, se_cov = prods.mean(0), prods.std(0) / np.sqrt(MIX_SAMPLES)
    assert np.all(np.abs(emp_cov - cov) < SIGMAS * se_cov + 1e-6)
    joint = np.asarray(pm.joint_covariance(), np.float64)
    for j in range(2):
        np.testing.assert_allclose(joint[j, :, j, :], cov[j], rtol=1e-4, atol=1e-6)


def test_log_predictive_density_nngp_equals_scipy():
    with jax.enable_x64(True):
        X, Xt, Y, _ = _problem(2, 8, 3, P_test=3, seed=3)
        Yt = np.random.default_rng(9).normal(size=(2, 3))
        lam, noise = 1.0, 0.5
        data = RegressionData.linear(X.T, Y.T)
        pm = PredictiveMixture(jnp.eye(2)[None], lam, noise, data, data.prediction_kernel(Xt.T))
        K, Ks, Kss = X.T @ X / 3, X.T @ Xt / 3, Xt.T @ Xt / 3
        A = np.linalg.solve(lam * K + noise * np.eye(8), lam * Ks)
        cov = lam * Kss - lam * Ks.T @ A + noise * np.eye(3)
        ref = sum(stats.multivariate_normal(A.T @ Y[d], cov).logpdf(Yt[d]) for d in range(2))
        np.testing.assert_allclose(float(pm.log_predictive_density(Yt.T, joint=True)), ref, rtol=1e-10)
        ref_pw = sum(
            stats.norm(A.T[j] @ Y[d], np.sqrt(cov[j, j])).logpdf(Yt[d, j]) for d in range(2) for j in range(3)
        )
        np.testing.assert_allclose(float(pm.log_predictive_density(Yt.T)), ref_pw, rtol=1e-10)


# ---------------------------------------------------------------- exact D = 1 references


@pytest.mark.parametrize("tilt", [0.0, -1.2, 7.5])
def test_log_product_density_moments(tilt):
    """The tilted law e^{tilt u} f(u) / E[e^{tilt u}] has log-Gamma factors of shape N/2 + tilt, rate N/2."""
    widths = [3, 5, 8, 20]
    grid, dens = log_product_density(widths, tilt=tilt)
    mean = trapezoid(grid * dens, grid)
    var = trapezoid(grid**2 * dens, grid) - mean**2
    a = np.array(widths) / 2
    np.testing.assert_allclose(mean, np.sum(special.digamma(a + tilt) - np.log(a)), atol=1e-9)
    np.testing.assert_allclose(var, np.sum(special.polygamma(1, a + tilt)), rtol=1e-9)


@pytest.mark.parametrize(
    "prior,draw",
    [
        (ProportionalLimitPrior(0.7, 1), lambda rng, n: np.exp(rng.normal(-0.7, np.sqrt(1.4), n))),
        (ProportionalLimitPrior(2.0, 1), lambda rng, n: np.exp(rng.normal(-2.0, 2.0, n))),
        (FiniteWidthPrior([5, 5, 5], 1), lambda rng, n: np.prod(rng.chisquare(5, (3, n)) / 5, axis=0)),
        (FiniteWidthPrior([2, 9], 1), lambda rng, n: rng.chisquare(2, n) / 2 * rng.chisquare(9, n) / 9),
    ],
)
def test_exact_d1_against_importance_sampling(prior, draw):
    """Self-normalized importance sampling from the prior (NumPy draws, not deeplinear's)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        X, Xt = rng.normal(size=(3, 10)), rng.normal(size=(3, 2))
        Y = 1.5 * rng.normal(size=(1, 10))
        lam, noise = 1.3, 0.4
        data = RegressionData.linear(X.T, Y.T)
        ex = exact_posterior_d1(data, prior, lambda_star=lam, noise_variance=noise, X_test=Xt.T)
        s = draw(rng, IS_SAMPLES)
        K = X.T @ X / 3
        w_, v_ = np.linalg.eigh(K)
        yt = Y[0] @ v_
        var = lam * np.maximum(w_, 0)[None, :] * s[:, None] + noise
        ll = -0.5 * np.sum(np.log(2 * np.pi * var) + yt**2 / var, axis=1)
        w = np.exp(ll - ll.max())
        w /= w.sum()
        ess = 1 / np.sum(w**2)
        m1 = np.sum(w * s)
        sd = np.sqrt(np.sum(w * (s - m1) ** 2))
        assert abs(ex.q_mean - m1) < SIGMAS * sd / np.sqrt(ess)
        log_z = np.log(np.mean(np.exp(ll - ll.max()))) + ll.max()
        assert abs(ex.log_evidence - log_z) < SIGMAS / np.sqrt(ess)  # delta method: se(log Z) ~ 1/sqrt(ESS)
        m2 = np.sum(w * s**2)
        se_m2 = np.sqrt(np.sum(w * (s**2 - m2) ** 2) / ess)
        assert abs(ex.q_var + ex.q_mean**2 - m2) < SIGMAS * se_m2


def test_exact_nngp_evidence_is_scipy_mvn():
    with jax.enable_x64(True):
        rng = np.random.default_rng(12)
        X, Y = rng.normal(size=(3, 7)), rng.normal(size=(1, 7))
        data = RegressionData.linear(X.T, Y.T)
        ex = exact_posterior_d1(data, NNGPPrior(1), lambda_star=0.9, noise_variance=0.3)
        ref = stats.multivariate_normal(np.zeros(7), 0.9 * X.T @ X / 3 + 0.3 * np.eye(7)).logpdf(Y[0])
        np.testing.assert_allclose(ex.log_evidence, ref, rtol=1e-12)


# --- predictions in bounded memory (issue 13, item 2) ----------------------------------------


def _mixture_problem(kind, num_test=7, num_draws=11, seed=3):
    rng = np.random.default_rng(seed)
    X, Xt = rng.normal(size=(12, 4)), rng.normal(size=(num_test, 4))
    Y = rng.normal(size=(12, 2))
    if kind == "linear":
        data = RegressionData.linear(X, Y, dtype="float64")
        test = data.prediction_kernel(Xt)
    else:
        F, Ft = np.tanh(X), np.tanh(Xt)  # a user feature map: K = F F^T
        data = RegressionData.from_gram(F @ F.T, Y, dtype="float64")
        test = data.prediction_kernel(cross_gram=F @ Ft.T, test_gram=Ft @ Ft.T)
    A = rng.normal(size=(num_draws, 2, 2))
    q = A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(2)
    return data, test, q, rng.uniform(0.5, 2.0, num_draws), rng.uniform(0.1, 0.5, num_draws), Xt


@pytest.mark.parametrize("kind", ["linear", "gram"])
def test_batched_mixture_moments_equal_the_per_draw_formula(kind):
    """Mean and covariance accumulated over batches of draws (any batch size) equal
    E[m*] and E[Sigma*] + Cov(m*) computed from every draw's conditional predictive."""
    with jax.enable_x64(True):
        data, test, q, lam, noise, _ = _mixture_problem(kind)
        per_draw = [conditional_predictive(q[s], lam[s], noise[s], data, test) for s in range(len(q))]
        means = np.stack([np.asarray(m) for m, _ in per_draw])
        covs = np.stack([np.asarray(c) for _, c in per_draw])
        dev = means - means.mean(0)
        ref_cov = covs.mean(0) + np.einsum("sjd,sje->jde", dev, dev) / len(q)
        for batch in (1, 3, 11, 256):
            pm = PredictiveMixture(q, lam, noise, data, test, batch_size=batch)
            np.testing.assert_allclose(np.asarray(pm.mean), means.mean(0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(pm.covariance()), ref_cov, rtol=1e-11, atol=1e-12)
            # both exact forms: per draw and test input, and from the draws' test-independent summaries
            for form in (predictive._mixture_moments, predictive._mixture_moments_from_draw_summaries):
                mean, expected, spread = form(jnp.asarray(q), jnp.asarray(lam), jnp.asarray(noise), None, data, test,
                                              min(batch, len(q)))
                np.testing.assert_allclose(np.asarray(mean), means.mean(0), rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(np.asarray(expected + spread), ref_cov, rtol=1e-11, atol=1e-12)


def _scipy_pointwise_log_density(data, test, q, lam, noise, Yt):
    """``log (1/S) sum_s N(y_j; m_j(Q_s), Sigma_j(Q_s) + sigma_s^2 I)`` per test input, from
    scipy.stats.multivariate_normal on each draw's conditional predictive."""
    lp = np.empty((len(q), test.num_test))
    for s in range(len(q)):
        m, c = (np.asarray(a) for a in conditional_predictive(q[s], lam[s], noise[s], data, test))
        for j in range(test.num_test):
            lp[s, j] = stats.multivariate_normal(m[j], c[j] + noise[s] * np.eye(2)).logpdf(Yt[j])
    return special.logsumexp(lp, axis=0) - np.log(len(q))


@pytest.mark.parametrize("kind", ["linear", "gram"])
def test_streamed_log_density_equals_scipy_logsumexp(kind):
    """The running log-sum-exp over batches of draws equals scipy's over the stored per-draw
    Gaussian log densities (scipy.stats.multivariate_normal, an independent evaluation)."""
    with jax.enable_x64(True):
        data, test, q, lam, noise, _ = _mixture_problem(kind)
        Yt = np.random.default_rng(4).normal(size=(test.num_test, 2))
        ref = np.sum(_scipy_pointwise_log_density(data, test, q, lam, noise, Yt))
        for batch in (1, 4, 256):
            pm = PredictiveMixture(q, lam, noise, data, test, batch_size=batch)
            assert float(pm.log_predictive_density(Yt)) == pytest.approx(ref, rel=1e-12)


CHUNK_INPUTS = 3  # test inputs per chunk below: 7 inputs make chunks of 3, 3 and 1 (padded to 3)


@pytest.mark.parametrize("kind", ["linear", "gram"])
def test_chunked_log_density_equals_scipy_with_a_progress_bar_and_one_program(kind, monkeypatch, capsys):
    """Above LPD_CHUNK_PAIRS draw-input pairs the pointwise terms come in chunks of test inputs
    (the last one padded): the same terms as scipy's, a progress bar over the test inputs, and
    one compiled program for every chunk (a second call with new labels compiles nothing)."""
    from test_compilation import count_compilations

    with jax.enable_x64(True):
        data, test, q, lam, noise, _ = _mixture_problem(kind)
        rng = np.random.default_rng(4)
        Yt = rng.normal(size=(test.num_test, 2))
        ref = _scipy_pointwise_log_density(data, test, q, lam, noise, Yt)
        monkeypatch.setattr(predictive, "LPD_CHUNK_PAIRS", CHUNK_INPUTS * len(q))
        chunks = []
        real = predictive._pointwise_log_density
        monkeypatch.setattr(predictive, "_pointwise_log_density", lambda *a: chunks.append(a[5].num_test) or real(*a))
        pm = PredictiveMixture(q, lam, noise, data, test, batch_size=4)
        capsys.readouterr()
        terms = pm.log_predictive_density(Yt, pointwise=True, progress_bar=True)
        shown = capsys.readouterr().err  # tqdm redraws at most every 0.1 s: the first and last counts always show
        assert "log predictive density" in shown and "0/7" in shown and "7/7" in shown, shown[-300:]
        assert chunks == [CHUNK_INPUTS] * 3  # 3 + 3 + 1 padded to 3
        np.testing.assert_allclose(np.asarray(terms), ref, rtol=1e-12)
        Y2 = rng.normal(size=Yt.shape)
        with count_compilations() as count:  # the same form as above (the sum's own small program aside)
            total = np.sum(np.asarray(pm.log_predictive_density(Y2, pointwise=True, progress_bar=False)))
        assert count[0] == 0 and len(chunks) == 6
        assert "log predictive density" not in capsys.readouterr().err
        assert float(total) == pytest.approx(np.sum(_scipy_pointwise_log_density(data, test, q, lam, noise, Y2)),
                                             rel=1e-12)
        with pytest.raises(TypeError, match="progress_bar"):
            pm.log_predictive_density(Yt, progress_bar="yes")


def test_gram_kernel_diagonal_is_enough_for_per_input_predictions():
    with jax.enable_x64(True):
        data, test, q, lam, noise, Xt = _mixture_problem("gram")
        F, Ft = np.tanh(np.random.default_rng(3).normal(size=(12, 4))), np.tanh(Xt)
        diag_only = data.prediction_kernel(cross_gram=F @ Ft.T, test_gram=np.sum(Ft**2, axis=1))
        full, light = PredictiveMixture(q, lam, noise, data, test), PredictiveMixture(q, lam, noise, data, diag_only)
        np.testing.assert_allclose(np.asarray(light.covariance()), np.asarray(full.covariance()), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(light.mean), np.asarray(full.mean), rtol=1e-12)
        with pytest.raises(ValueError, match="full test Gram matrix"):
            light.joint_covariance()


def test_linear_kernel_joint_matrices_come_from_factors():
    """The linear kernel stores O(P* N0) factors; the dense matrices built on request equal the
    Schur complement computed directly (dense float64 algebra)."""
    with jax.enable_x64(True):
        data, test, *_, Xt = _mixture_problem("linear")
        assert test.test_dense is None and test.residual_dense is None
        rng = np.random.default_rng(3)
        X = rng.normal(size=(12, 4))
        K, k_cross, k_test = X @ X.T / 4, X @ Xt.T / 4, Xt @ Xt.T / 4
        schur = k_test - k_cross.T @ np.linalg.pinv(K) @ k_cross
        np.testing.assert_allclose(np.asarray(test.test_gram), k_test, atol=1e-12)
        np.testing.assert_allclose(np.asarray(test.residual_gram), schur, atol=1e-10)
        np.testing.assert_allclose(np.asarray(test.residual_diag), np.diagonal(schur), atol=1e-10)


def test_many_test_inputs_per_input_only_and_joint_refused():
    """40,000 test inputs: per-input moments without any P* x P* matrix (dense ones would take
    12.8 GB in float32); the joint covariance is refused with a clear error, before any work."""
    rng = np.random.default_rng(5)
    data = RegressionData.linear(rng.normal(size=(30, 3)), rng.normal(size=(30, 2)))
    q = np.broadcast_to(np.eye(2), (4, 2, 2))
    pm = PredictiveMixture(q, 1.0, 0.5, data, data.prediction_kernel(rng.normal(size=(40_000, 3))))
    cov = np.asarray(pm.covariance())
    assert cov.shape == (40_000, 2, 2) and np.all(np.isfinite(cov))
    with pytest.raises(ValueError, match="joint covariance over P\\* = 40000"):
        pm.joint_covariance()
    with pytest.raises(ValueError, match="joint covariance"):
        pm.sample(0, 2)


def test_functional_prediction_runs_inside_users_jit():
    """linear_prediction_kernel + predictive_moments under jax.jit (test inputs traced) equal
    the validated PredictiveMixture (float64 NumPy kernel) to round-off."""
    from deeplinear.data import linear_prediction_kernel
    from deeplinear.predictive import predictive_moments

    with jax.enable_x64(True):
        data, test, q, lam, noise, Xt = _mixture_problem("linear")

        @jax.jit
        def predict(X_test):
            return predictive_moments(q, lam, noise, data, linear_prediction_kernel(data, X_test), batch_size=4)

        mean, cov = predict(Xt)
        pm = PredictiveMixture(q, lam, noise, data, test)
        np.testing.assert_allclose(np.asarray(mean), np.asarray(pm.mean), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(cov), np.asarray(pm.covariance()), rtol=1e-10, atol=1e-12)
