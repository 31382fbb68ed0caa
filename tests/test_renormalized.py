"""The renormalized kernel (issue 16, item 3) against independent references: the closed-form root for
D = 1, L = 1, interpolation; the one-matrix action of equal widths (minimized here with scipy on Q^{1/L});
the stationarity equations of the Wishart chain written here in NumPy for unequal widths, full noise and
intercepts; and the exact D = 1 posterior (deeplinear.exact, checked here against a 2-D grid in the far
tail it now reaches) as N grows with P/N fixed, where the distance must fall like 1/N while the NNGP's
does not fall."""

import jax
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import optimize, special

from deeplinear import (
    FiniteWidthPrior,
    ModelSpec,
    NNGPPrior,
    ProportionalLimitPrior,
    RegressionData,
    exact_posterior_d1,
)
from deeplinear.exact import _loglik
from deeplinear.renormalized import RenormalizedKernel, renormalized_kernel

STATIONARITY = 1e-7  # largest gradient entry of the chain's action at the solution, relative to sum(N_l)
WIDTHS_GROWING = (16, 32, 64, 128, 256)  # N at fixed P/N = 1/2 and P/N0 = 1/2
DATA_SEEDS = 3  # data sets averaged at each N
NOISE = 0.1
GRID_POINTS = 601  # per layer, for the 2-D reference grid


def _arrays(P, D, N0, seed=0, scale=2.0, mixing=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P, N0))
    W = rng.normal(size=(N0, D)) * scale
    if mixing is not None:
        W = W @ np.asarray(mixing)
    return X, X @ W / np.sqrt(N0) + np.sqrt(NOISE) * rng.normal(size=(P, D))


def _chain_gradients(layer_q, widths, kappa, rotated, lam, noise_cov):
    r"""dS/dQ_l of the module's action, from the formulas (symmetric-matrix derivatives), in NumPy."""
    L, D = layer_q.shape[0], layer_q.shape[1]
    inv = np.linalg.inv(layer_q)
    parents_inv = np.concatenate([inv[1:], np.eye(D)[None]])
    grads = []
    for i in range(L):
        g = widths[i] / 2 * (parents_inv[i] - inv[i])
        if i > 0:
            g += widths[i - 1] / 2 * (inv[i] - inv[i] @ layer_q[i - 1] @ inv[i])
        grads.append(g)
    c = lam * kappa[:, None, None] * layer_q[0] + noise_cov
    ci = np.linalg.inv(c)
    cy = np.einsum("pij,pj->pi", ci, rotated)
    grads[0] += 0.5 * np.einsum("p,pij->ij", lam * kappa, ci - cy[:, :, None] * cy[:, None, :])
    return np.array(grads)


@pytest.mark.device
def test_d1_one_layer_interpolation_is_the_closed_form_root():
    """S(q) = N/2 (q - log q) + P/2 log q + r/(2 lambda q): q^2 - (1 - alpha) q - r/(lambda N) = 0."""
    with jax.enable_x64(True):
        X, Y = _arrays(20, 1, 30)
        data = RegressionData.linear(X, Y)
        N, lam = 50, 1.7
        rk = renormalized_kernel(data, FiniteWidthPrior((N,), 1), lambda_star=lam, noise_variance=0.0)
    K = X @ X.T / X.shape[1]
    r = float(Y[:, 0] @ np.linalg.solve(K, Y[:, 0]))
    alpha = 20 / N
    root = ((1 - alpha) + np.sqrt((1 - alpha) ** 2 + 4 * r / (lam * N))) / 2
    assert rk.converged and rk.layer_q.shape == (1, 1, 1)
    np.testing.assert_allclose(rk.q[0, 0], root, rtol=1e-9)


def test_equal_widths_lie_on_the_geodesic_and_minimize_the_one_matrix_action():
    D, L, N = 2, 3, 40
    with jax.enable_x64(True):
        X, Y = _arrays(30, D, 25, mixing=[[1.0, 0.8], [0.0, 0.6]])
        data = RegressionData.linear(X, Y)
        rk = renormalized_kernel(data, FiniteWidthPrior((N,) * L, D), lambda_star=0.8, noise_variance=0.2)
    kappa = np.asarray(data.basis.eigenvalues, np.float64)
    yt = np.asarray(data.rotated_labels, np.float64)

    def power(q, t):
        w, v = np.linalg.eigh(q)
        return (v * w**t) @ v.T

    def reduced(theta):  # (NL/2)(tr Q^{1/L} - D) - (N/2) log det Q - log p(Y | Q), Q = C C^T
        c = np.array([[np.exp(theta[0]), 0.0], [theta[2], np.exp(theta[1])]])
        q = c @ c.T
        cov = 0.8 * kappa[:, None, None] * q + 0.2 * np.eye(D)
        nll = 0.5 * sum(np.linalg.slogdet(cp)[1] + y @ np.linalg.solve(cp, y) for cp, y in zip(cov, yt))
        return N * L / 2 * (np.trace(power(q, 1 / L)) - D) - N * (theta[0] + theta[1]) + nll

    best = optimize.minimize(reduced, np.zeros(3), method="Nelder-Mead",
                             options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    c = np.array([[np.exp(best.x[0]), 0.0], [best.x[2], np.exp(best.x[1])]])
    np.testing.assert_allclose(rk.q, c @ c.T, atol=2e-6)
    for layer in range(L):  # Q_l = Q^{(L + 1 - l) / L}, l = 1..L
        np.testing.assert_allclose(rk.layer_q[layer], power(rk.q, (L - layer) / L), atol=1e-8)
    assert abs(rk.q[0, 1]) > 0.1  # correlated labels renormalize the off-diagonal


@pytest.mark.parametrize("noise", ["scalar", "full", "intercept"])
def test_unequal_widths_satisfy_the_chain_stationarity_equations(noise):
    D, widths = 3, (12, 30, 7, 20)
    rng = np.random.default_rng(4)
    mixing = np.linalg.cholesky(np.array([[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]])).T
    X, Y = _arrays(40, D, 15, seed=2, mixing=mixing)
    kwargs, noise_cov, shift = {"noise_variance": 0.3}, 0.3 * np.eye(D), np.zeros(D)
    if noise == "full":
        sd = np.array([0.4, 0.6, 0.5])
        corr = np.array([[1.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 1.0]])
        kwargs = {"noise_variance": tuple(sd**2), "noise_model": "full", "noise_correlation": corr}
        noise_cov = sd[:, None] * corr * sd[None, :]
    elif noise == "intercept":
        shift = rng.normal(size=D)
        kwargs["intercept"] = tuple(shift)
        Y = Y + shift
    with jax.enable_x64(True):
        data = RegressionData.linear(X, Y)
        rk = renormalized_kernel(data, FiniteWidthPrior(widths, D), lambda_star=1.4, **kwargs)
    U, s, _ = np.linalg.svd(X / np.sqrt(X.shape[1]), full_matrices=False)
    rotated = U.T @ (Y - shift)
    grads = _chain_gradients(rk.layer_q, widths, s**2, rotated, 1.4, noise_cov)
    assert rk.converged and rk.layer_q.shape == (4, D, D)
    assert np.abs(grads).max() < STATIONARITY * sum(widths), np.abs(grads).max()
    assert np.all(np.linalg.eigvalsh(rk.layer_q) > 0)


def test_exact_d1_reaches_the_far_tail():
    """At N = 256, L = 2, P = 128 the posterior of s sits about 6 prior standard deviations out; the
    exact reference (tilted FFT convolution) agrees with a direct 2-D grid over the two layers."""
    N = 256
    with jax.enable_x64(True):
        X, Y = _arrays(128, 1, 256)
        data = RegressionData.linear(X, Y)
        exact = exact_posterior_d1(data, FiniteWidthPrior((N, N), 1), noise_variance=NOISE)
        kappa = np.asarray(data.basis.eigenvalues, np.float64)
        yt = np.asarray(data.rotated_labels, np.float64)[:, 0]
        null_energy, num_null = float(data.null_energy), data.basis.num_null
    a = N / 2
    v = np.linspace(-0.2, 1.0, GRID_POINTS)  # the posterior of each log-factor lies in about 0.4 +- 0.3
    log_f = a * np.log(a) - special.gammaln(a) + a * v - a * np.exp(v)  # log chi^2_N / N, in log scale
    u = (v[:, None] + v[None, :]).ravel()
    log_w = (log_f[:, None] + log_f[None, :]).ravel() + _loglik(np.exp(u), 1.0, NOISE, kappa, yt, 0.0, 0)
    w = np.exp(log_w - log_w.max())
    log_z = np.log(w.sum() * (v[1] - v[0]) ** 2) + log_w.max()
    assert exact.q_mean > 1.5  # far from the prior's mean of 1
    np.testing.assert_allclose(exact.q_mean, (w * np.exp(u)).sum() / w.sum(), rtol=1e-8)
    np.testing.assert_allclose(exact.log_evidence, log_z - 0.5 * null_energy / NOISE
                               - 0.5 * num_null * np.log(2 * np.pi * NOISE), atol=1e-7)


def _distance(mean, var, ref_mean, ref_var):
    """max over test inputs of |mean error| / reference sd and |variance ratio - 1| (D = 1)."""
    return max(np.max(np.abs(mean - ref_mean) / np.sqrt(ref_var)), np.max(np.abs(var / ref_var - 1)))


def test_predictive_approaches_the_exact_posterior_like_one_over_width():
    """P/N = 1/2, P/N0 = 1/2, L = 2: the renormalized predictive's distance from the exact posterior's
    falls like 1/N (slope -1 in log-log, measured -1.0); the NNGP's stays of order one."""
    rk_dist, nngp_dist = [], []
    with jax.enable_x64(True):
        for N in WIDTHS_GROWING:
            d_rk, d_nngp = [], []
            for seed in range(DATA_SEEDS):
                P = N // 2
                X, Y = _arrays(P + 10, 1, 2 * P, seed=seed)
                data = RegressionData.linear(X[:P], Y[:P])
                prior = FiniteWidthPrior((N, N), 1)
                exact = exact_posterior_d1(data, prior, noise_variance=NOISE, X_test=X[P:])
                pred = renormalized_kernel(data, prior, noise_variance=NOISE).predict(X[P:])
                mean, var = np.asarray(pred.mean)[:, 0], np.asarray(pred.covariance())[:, 0, 0]
                nngp = exact_posterior_d1(data, NNGPPrior(1), noise_variance=NOISE, X_test=X[P:])
                d_rk.append(_distance(mean, var, exact.pred_mean, exact.pred_var))
                d_nngp.append(_distance(nngp.pred_mean, nngp.pred_var, exact.pred_mean, exact.pred_var))
            rk_dist.append(np.mean(d_rk))
            nngp_dist.append(np.mean(d_nngp))
    slope = np.polyfit(np.log(WIDTHS_GROWING), np.log(rk_dist), 1)[0]
    assert -1.25 < slope < -0.75, (slope, rk_dist)
    assert rk_dist[-1] < 0.005, rk_dist
    assert min(nngp_dist) > 0.2, nngp_dist


@pytest.mark.device
def test_float32_data_give_the_float64_answer():
    X, Y = _arrays(30, 2, 20, mixing=[[1.0, 0.7], [0.0, 0.7]])
    prior = FiniteWidthPrior((40, 40), 2)
    rk32 = renormalized_kernel(RegressionData.linear(X, Y), prior, noise_variance=0.2)
    with jax.enable_x64(True):
        rk64 = renormalized_kernel(RegressionData.linear(X, Y), prior, noise_variance=0.2)
    assert rk32.data.dtype == np.float32 and rk32.converged
    np.testing.assert_allclose(rk32.q, rk64.q, rtol=1e-5)
    pred = rk32.predict(X[:3])
    assert pred.num_draws == 1 and np.all(np.isfinite(np.asarray(pred.covariance())))


def test_nngp_is_the_identity_and_specs_are_accepted():
    X, Y = _arrays(12, 2, 5)
    data = RegressionData.linear(X, Y)
    rk = renormalized_kernel(data, NNGPPrior(2), noise_variance=0.5)
    assert isinstance(rk, RenormalizedKernel) and rk.layer_q.shape == (0, 2, 2)
    np.testing.assert_array_equal(rk.q, np.eye(2))
    spec = ModelSpec(FiniteWidthPrior((8, 8), 2), noise_variance=0.5)
    assert renormalized_kernel(data, spec).converged
    assert "converged=True" in repr(renormalized_kernel(data, spec))


def test_bad_input_is_refused_before_solving():
    X, Y = _arrays(12, 2, 5)
    data = RegressionData.linear(X, Y)
    with pytest.raises(ValueError, match="proportional limit does not have"):
        renormalized_kernel(data, ProportionalLimitPrior(1.0, 2))
    with pytest.raises(ValueError, match="noise_variance has a prior"):
        renormalized_kernel(data, FiniteWidthPrior((8,), 2), noise_variance=dist.HalfNormal(1.0))
    with pytest.raises(ValueError, match="num_outputs"):
        renormalized_kernel(data, FiniteWidthPrior((8,), 3))
    with pytest.raises(ValueError, match="max_iterations"):
        renormalized_kernel(data, FiniteWidthPrior((8,), 2), max_iterations=0)
    with pytest.raises(TypeError, match="prior"):
        renormalized_kernel(data, "deep")
