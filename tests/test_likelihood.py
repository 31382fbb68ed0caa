"""The Kronecker likelihood against dense references (scipy), sample/log_prob agreement,
and the pointwise leave-one-out terms against brute-force Gaussian conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from deeplinear import KroneckerNormal, RegressionData
from deeplinear.likelihood import loo_log_likelihood, loo_log_likelihood_draws

SEED = 20261122
GOF_SAMPLES = 4000  # draws for the chi-square goodness-of-fit of sample vs log_prob
KS_ALPHA = 1e-4  # false-alarm rate of a single KS test
COV_SAMPLES = 20000  # draws for the sample-covariance check
COV_SIGMAS = 5.0


def _problem(D, P, N0, seed=0):
    """Inputs ``(P, N0)`` and labels ``(P, D)`` (rows are observations), and a PD ``Q``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N0, P)).T
    Y = rng.normal(size=(D, P)).T
    A = rng.normal(size=(D, D))
    Q = A @ A.T + 0.2 * np.eye(D)
    return X, Y, Q


def _dense_cov(Q, K, lam, noise):
    """Covariance of ``Y.reshape(-1)`` for ``Y`` ``(P, D)``: lambda K (x) Q + sigma^2 I."""
    return lam * np.kron(K, Q) + noise * np.eye(Q.shape[0] * K.shape[0])


@pytest.mark.parametrize("D,P,N0", [(1, 7, 3), (2, 9, 4), (3, 12, 5), (2, 5, 8)])
@pytest.mark.parametrize("kernel", ["linear", "gram"])
def test_log_prob_equals_dense_mvn(D, P, N0, kernel):
    with jax.enable_x64(True):
        X, Y, Q = _problem(D, P, N0)
        K = X @ X.T / N0
        data = RegressionData.linear(X, Y) if kernel == "linear" else RegressionData.from_gram(K, Y)
        assert data.basis.rank == min(N0, P)
        lam, noise = 1.7, 0.3
        ref = stats.multivariate_normal(np.zeros(D * P), _dense_cov(Q, K, lam, noise)).logpdf(Y.reshape(-1))
        d = KroneckerNormal(jnp.asarray(Q), lam, noise, data)
        np.testing.assert_allclose(float(d.log_prob(data.labels)), ref, rtol=1e-12, atol=1e-10)
        # any other value goes through the rotation
        Y2 = np.random.default_rng(1).normal(size=(P, D))
        ref2 = stats.multivariate_normal(np.zeros(D * P), _dense_cov(Q, K, lam, noise)).logpdf(Y2.reshape(-1))
        np.testing.assert_allclose(float(d.log_prob(jnp.asarray(Y2))), ref2, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("noise", ["scalar", "full"])
@pytest.mark.parametrize("P", [4, 9])  # no null space (P = N0) and a null space of dimension 5
def test_the_samplers_summary_view_gives_the_dense_density_and_no_program_per_P(noise, P):
    """``RegressionData.for_sampling()`` (what fit hands to the compiled sampler: no per-row array,
    P - R a leaf) gives scipy's dense log density, with intercepts, inside jit; and data of another P
    with the same rank share its compiled program."""
    from test_compilation import count_compilations

    D, N0 = 2, 4
    with jax.enable_x64(True):
        X, Y, Q = _problem(D, P, N0, seed=P)
        K = X @ X.T / N0
        mu = np.array([0.4, -1.1])
        cov = np.array([[0.3, 0.1], [0.1, 0.5]]) if noise == "full" else 0.3 * np.eye(D)
        ref = stats.multivariate_normal(np.tile(mu, P), 1.7 * np.kron(K, Q) + np.kron(np.eye(P), cov)).logpdf(
            Y.reshape(-1))

        @jax.jit
        def density(view, q):
            kw = {"noise_covariance": jnp.asarray(cov)} if noise == "full" else {}
            return KroneckerNormal(q, 1.7, None if noise == "full" else 0.3, view, labels_are_data=True,
                                   intercept=jnp.asarray(mu), **kw).data_log_prob()

        view = RegressionData.linear(X, Y).for_sampling()
        assert view.labels is None and view.basis.eigenvectors is None and view.inputs is None
        np.testing.assert_allclose(float(density(view, jnp.asarray(Q))), ref, rtol=1e-12)
        if P > N0:  # other rows, the same rank: the same program
            X2, Y2, _ = _problem(D, P + 3, N0, seed=1)
            other = RegressionData.linear(X2, Y2).for_sampling()
            with count_compilations() as count:
                value = density(other, jnp.asarray(Q))
            assert count[0] == 0 and np.isfinite(float(value))


def test_interpolation_log_prob():
    """sigma^2 = 0 with an invertible K (P <= N0)."""
    with jax.enable_x64(True):
        X, Y, Q = _problem(2, 4, 6)
        K = X @ X.T / 6
        data = RegressionData.linear(X, Y)
        ref = stats.multivariate_normal(np.zeros(8), np.kron(K, Q) * 0.8).logpdf(Y.reshape(-1))
        d = KroneckerNormal(jnp.asarray(Q), 0.8, 0.0, data)
        np.testing.assert_allclose(float(d.log_prob(data.labels)), ref, rtol=1e-10)


def test_interpolation_singular_kernel_raises():
    X, Y, Q = _problem(2, 9, 3)
    data = RegressionData.linear(X, Y)
    with pytest.raises(ValueError, match="noise_variance = 0.*rank 3 < P = 9"):
        KroneckerNormal(jnp.asarray(Q, data.dtype), 1.0, 0.0, data)


def test_batched_q_log_prob():
    with jax.enable_x64(True):
        X, Y, Q = _problem(2, 6, 3)
        data = RegressionData.linear(X, Y)
        qs = jnp.stack([jnp.asarray(Q), jnp.eye(2), 2 * jnp.asarray(Q)])
        d = KroneckerNormal(qs, 1.0, 0.5, data)
        assert d.batch_shape == (3,)
        lp = d.log_prob(data.labels)
        for i in range(3):
            one = KroneckerNormal(qs[i], 1.0, 0.5, data).log_prob(data.labels)
            np.testing.assert_allclose(lp[i], one, rtol=1e-12)


@pytest.mark.device
def test_sample_and_log_prob_agree(dtype):
    r"""Goodness of fit: for x ~ sample(), -2(log p(x) - log p(0)) = x^T Sigma^{-1} x ~ chi^2_{DP}."""
    D, P, N0 = 2, 6, 3  # rank-deficient K: exercises the null-space term
    X, Y, Q = _problem(D, P, N0, seed=3)
    data = RegressionData.linear(X, Y, dtype=dtype)
    d = KroneckerNormal(jnp.asarray(Q, dtype), 1.3, 0.4, data)
    x = d.sample(jax.random.key(SEED), (GOF_SAMPLES,))
    assert x.shape == (GOF_SAMPLES, P, D) and x.dtype == dtype
    stat = -2 * (d.log_prob(x) - d.log_prob(jnp.zeros((P, D), dtype)))
    res = stats.kstest(np.asarray(stat, np.float64), stats.chi2(D * P).cdf)
    assert res.pvalue > KS_ALPHA, res


def test_sample_covariance_matches_kronecker():
    with jax.enable_x64(True):
        D, P, N0 = 2, 4, 3
        X, Y, Q = _problem(D, P, N0, seed=4)
        K = X @ X.T / N0
        lam, noise = 0.7, 0.2
        data = RegressionData.linear(X, Y)
        x = np.asarray(KroneckerNormal(jnp.asarray(Q), lam, noise, data).sample(jax.random.key(SEED), (COV_SAMPLES,)))
        flat = x.reshape(COV_SAMPLES, -1)
        emp = flat.T @ flat / COV_SAMPLES
        ref = _dense_cov(Q, K, lam, noise)
        # SE of E[x_i x_j] for a Gaussian: sqrt((S_ii S_jj + S_ij^2) / n)
        se = np.sqrt((np.outer(np.diag(ref), np.diag(ref)) + ref**2) / COV_SAMPLES)
        assert np.all(np.abs(emp - ref) < COV_SIGMAS * se)


@pytest.mark.device
@pytest.mark.parametrize("D,P,N0,noise", [(1, 6, 2, 0.5), (2, 7, 3, 0.3), (3, 5, 7, 0.0), (2, 6, 9, 0.2)])
def test_loo_equals_dense_conditioning(D, P, N0, noise):
    """log p(y_i | Y_-i) by conditioning the dense Gaussian (scipy), every input (row) i."""
    with jax.enable_x64(True):
        X, Y, Q = _problem(D, P, N0, seed=5)
        K = X @ X.T / N0
        lam = 1.1
        S = _dense_cov(Q, K, lam, noise)
        y = Y.reshape(-1)
        ref = []
        for i in range(P):
            idx = [i * D + r for r in range(D)]
            rest = [j for j in range(D * P) if j not in idx]
            A = np.linalg.solve(S[np.ix_(rest, rest)], S[np.ix_(rest, idx)])
            mu = A.T @ y[rest]
            cov = S[np.ix_(idx, idx)] - S[np.ix_(idx, rest)] @ A
            ref.append(stats.multivariate_normal(mu, cov).logpdf(Y[i]))
        data = RegressionData.linear(X, Y)
        got = loo_log_likelihood(jnp.asarray(Q), lam, noise, data)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-9, atol=1e-9)


def test_float32_close_to_float64():
    X, Y, Q = _problem(3, 50, 6, seed=6)
    with jax.enable_x64(True):
        d64 = RegressionData.linear(X, Y, dtype="float64")
        ref = float(KroneckerNormal(jnp.asarray(Q), 1.0, 0.1, d64).log_prob(d64.labels))
    d32 = RegressionData.linear(X, Y, dtype="float32")
    got = KroneckerNormal(jnp.asarray(Q, "float32"), 1.0, 0.1, d32).log_prob(d32.labels)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_many_inputs_cost_does_not_grow():
    """P = 200,000 inputs, N0 = 8: the rotated statistics have rank N0 and the log-density
    equals the same computation through an explicit eigen-decomposition of the N0 x N0 Gram."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        P, N0, D = 200_000, 8, 2
        X = rng.normal(size=(P, N0))
        Y = rng.normal(size=(P, D))
        data = RegressionData.linear(X, Y)
        assert data.rotated_labels.shape == (N0, D)
        # independent route: K's nonzero eigenpairs from the N0 x N0 matrix X^T X / N0
        w, v = np.linalg.eigh(X.T @ X / N0)
        U = X @ v / np.sqrt(w * N0)
        Yr = (U.T @ Y).T
        null = np.sum(Y**2) - np.sum(Yr**2)
        q, lam, noise = np.array([[1.0, 0.3], [0.3, 0.5]]), 1.0, 0.7
        ref = -0.5 * (P - N0) * D * np.log(2 * np.pi * noise) - 0.5 * null / noise
        for p in range(N0):
            ref += stats.multivariate_normal(np.zeros(D), lam * w[p] * q + noise * np.eye(D)).logpdf(Yr[:, p])
        got = float(KroneckerNormal(jnp.asarray(q), lam, noise, data).log_prob(data.labels))
        np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_distribution_is_a_pytree_and_jits():
    X, Y, Q = _problem(2, 6, 3)
    data = RegressionData.linear(X, Y)
    d = KroneckerNormal(jnp.asarray(Q, data.dtype), 1.0, 0.5, data)
    leaves, tree = jax.tree_util.tree_flatten(d)
    d2 = jax.tree_util.tree_unflatten(tree, leaves)
    assert d2.event_shape == d.event_shape
    grad = jax.grad(lambda q: KroneckerNormal(q, 1.0, 0.5, data).log_prob(data.labels))(jnp.asarray(Q, data.dtype))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_labels_are_data_fast_path_is_explicit():
    """The precomputed rotation is used only when declared, and only for data.labels."""
    X, Y, Q = _problem(2, 6, 3)
    data = RegressionData.linear(X, Y)
    q = jnp.asarray(Q, data.dtype)
    fast = KroneckerNormal(q, 1.0, 0.5, data, labels_are_data=True)
    slow = KroneckerNormal(q, 1.0, 0.5, data)
    copy = jnp.array(data.labels, copy=True)
    np.testing.assert_allclose(float(fast.log_prob(copy)), float(slow.log_prob(copy)), rtol=1e-5)
    with pytest.raises(ValueError, match="labels other than data.labels"):
        fast.log_prob(copy + 1.0)


def test_loo_draws_validate_hyperparameters():
    X, Y, Q = _problem(2, 6, 3)
    data = RegressionData.linear(X, Y)
    q = jnp.asarray(np.stack([Q, Q]), data.dtype)
    with pytest.raises(ValueError, match="noise_variance must be finite and >= 0"):
        loo_log_likelihood_draws(q, 1.0, -0.5, data)
    with pytest.raises(ValueError, match=r"q must have shape \(S, 2, 2\)"):
        loo_log_likelihood_draws(q[0], 1.0, 0.5, data)
    out = loo_log_likelihood_draws(q, 1.0, jnp.array([0.5, 0.5]), data)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(loo_log_likelihood(q[0], 1.0, 0.5, data)), rtol=1e-5)
