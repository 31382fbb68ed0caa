"""Posterior inference end to end: NUTS in Q-space against exact D = 1 references and
against NUTS on every weight of the actual network (D = 2); label dependence; ArviZ.

Data are made in theory.md's columns (``X`` is ``N0 x P``, ``Y`` is ``D x P``) and passed to the
package as rows (``X.T``, ``Y.T``)."""

import warnings

import arviz_stats
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

from deeplinear import (
    ConvergenceWarning,
    FiniteWidthPrior,
    NNGPPrior,
    ProportionalLimitPrior,
    RegressionData,
    compare_models,
    exact_posterior_d1,
    fit,
    loo,
)
from deeplinear.network import weight_space_model

SIGMAS = 5.0  # tolerance in Monte Carlo standard errors
WS_SIGMAS = 4.0  # against weight-space NUTS (issue 14's acceptance: within 4 MCSE)
NUM_CHAINS = 2
NUM_WARMUP = 500
NUM_DRAWS = 1500  # per chain, Q-space NUTS
WS_WARMUP = 1000
WS_DRAWS = 2000  # per chain, weight-space NUTS


def _mcse(draws):
    """Mean and its MC standard error from (chain, draw, ...) draws, via NumPyro's ESS."""
    x = np.asarray(draws, np.float64)
    ess = effective_sample_size(x)
    return x.mean((0, 1)), x.std((0, 1)) / np.sqrt(ess)


def _d1_data(P, noise, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3, P))
    Y = 1.2 * rng.normal(size=(1, 3)) @ X / np.sqrt(3) + np.sqrt(noise) * rng.normal(size=(1, P))
    return X, Y, rng.normal(size=(3, 2))


D1_GRID = [
    (ProportionalLimitPrior(0.5, 1), 5, 1.0),
    (ProportionalLimitPrior(2.0, 1), 20, 0.1),
    (FiniteWidthPrior.from_depth_width(3, 4, 1), 20, 0.1),
    (FiniteWidthPrior((2, 9), 1), 5, 1.0),
]


@pytest.mark.parametrize("prior,P,noise", D1_GRID, ids=["limit-a0.5", "limit-a2", "finite-L3N4", "finite-2-9"])
def test_d1_mcmc_matches_exact(prior, P, noise):
    with jax.enable_x64(True):
        X, Y, Xt = _d1_data(P, noise, seed=P)
        data = RegressionData.linear(X.T, Y.T)
        lam = 1.0
        ex = exact_posterior_d1(data, prior, lambda_star=lam, noise_variance=noise, X_test=Xt.T)
        res = fit(data, prior, lambda_star=lam, noise_variance=noise, num_warmup=NUM_WARMUP,
                  num_samples=NUM_DRAWS, num_chains=NUM_CHAINS, key=1)
        q = res.datatree["posterior"]["Q"].values[..., 0, 0]  # (chain, draw)
        m, se = _mcse(q)
        assert abs(m - ex.q_mean) < SIGMAS * se
        v, se_v = _mcse((q - m) ** 2)
        assert abs(v - ex.q_var) < SIGMAS * se_v
        # predictive variance E[Sigma*] + Var(m*): per-draw terms, chains kept for the ESS
        pm = res.predict(Xt.T)
        mean_d = np.asarray(pm.draw_means)[:, :, 0].reshape(NUM_CHAINS, NUM_DRAWS, -1)
        cov_d = np.asarray(pm.draw_covariances)[:, :, 0, 0].reshape(NUM_CHAINS, NUM_DRAWS, -1)
        pv_terms = cov_d + (mean_d - mean_d.mean((0, 1))) ** 2
        pv, se_pv = _mcse(pv_terms)
        np.testing.assert_array_less(np.abs(pv - ex.pred_var), SIGMAS * se_pv)
        np.testing.assert_allclose(np.asarray(pm.covariance())[:, 0, 0], pv, rtol=1e-10)
        pmean, se_m = _mcse(mean_d)
        np.testing.assert_array_less(np.abs(pmean - ex.pred_mean), SIGMAS * se_m)


NOISE_VARIANCES, NOISE_CORRELATION = (0.1, 0.15), 0.6  # the correlated-noise case (per-output variances)


@pytest.mark.parametrize("noise_model", ["scalar", "full"])
def test_d2_predictive_matches_weight_space_nuts(noise_model):
    """N = 6, L = 3, D = 2: Q-space posterior predictive vs NUTS on all 102 weights; with scalar
    noise sigma^2 I and with a fixed correlated noise covariance (per-output variances 0.1 and
    0.15, correlation 0.6)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        N0, P, D, N, L, noise = 3, 8, 2, 6, 3, 0.1
        X, Xt = rng.normal(size=(N0, P)), rng.normal(size=(N0, 2))
        f = rng.normal(size=(1, N0)) @ X / np.sqrt(N0)
        Y = np.vstack([f, 0.8 * f]) + 0.3 * rng.normal(size=(2, P))
        corr = np.array([[1.0, NOISE_CORRELATION], [NOISE_CORRELATION, 1.0]])
        sd = np.sqrt(NOISE_VARIANCES)
        noise_kw = {"noise_variance": noise}
        fit_kw = {"noise_variance": noise}
        if noise_model == "full":
            noise_kw = {"noise_covariance": jnp.asarray(sd[:, None] * corr * sd[None, :])}
            fit_kw = {"noise_variance": NOISE_VARIANCES, "noise_model": "full", "noise_correlation": corr}

        mcmc = MCMC(NUTS(weight_space_model, target_accept_prob=0.9), num_warmup=WS_WARMUP,
                    num_samples=WS_DRAWS, num_chains=4, chain_method="sequential", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(0), jnp.asarray(X.T), jnp.asarray(Y.T), widths=(N,) * L, num_outputs=D,
                 X_test=jnp.asarray(Xt.T), **noise_kw)
        ft = np.asarray(mcmc.get_samples(group_by_chain=True)["f_test"])  # (C, S, P*, D)
        ws_mean, ws_mean_se = _mcse(ft)
        dev = ft - ws_mean
        ws_cov, ws_cov_se = _mcse(np.einsum("csjd,csje->csjde", dev, dev))

        res = fit(RegressionData.linear(X.T, Y.T), FiniteWidthPrior.from_depth_width(L, N, D),
                  num_warmup=NUM_WARMUP, num_samples=NUM_DRAWS, num_chains=NUM_CHAINS, key=2, **fit_kw)
        pm = res.predict(Xt.T)
        md = np.asarray(pm.draw_means).reshape(NUM_CHAINS, NUM_DRAWS, -1, D)
        cd = np.asarray(pm.draw_covariances).reshape(NUM_CHAINS, NUM_DRAWS, -1, D, D)
        dl_mean, dl_mean_se = _mcse(md)
        ddev = md - dl_mean
        dl_cov, dl_cov_se = _mcse(cd + np.einsum("csjd,csje->csjde", ddev, ddev))
        z_mean = np.abs(dl_mean - ws_mean) / np.hypot(dl_mean_se, ws_mean_se)
        z_cov = np.abs(dl_cov - ws_cov) / np.hypot(dl_cov_se, ws_cov_se)
        print(f"{noise_model}: max |z| of the predictive mean {z_mean.max():.2f}, of its covariance "
              f"{np.nanmax(z_cov):.2f}")
        np.testing.assert_array_less(z_mean, WS_SIGMAS)
        np.testing.assert_array_less(np.abs(dl_cov - ws_cov), WS_SIGMAS * np.hypot(dl_cov_se, ws_cov_se))
        np.testing.assert_allclose(np.asarray(pm.covariance()), dl_cov, rtol=1e-8, atol=1e-12)


# N0 > P: test inputs have components off the span of the training inputs, where the
# predictive covariance is lambda* E[Q | Y] (k** - k*^T K^+ k*) and shows Q's correlation.
# (With N0 << P the data pin f down and the iid noise makes outputs nearly independent.)
LABEL_N0, LABEL_P = 30, 12


def _labels(kind, rng):
    X = rng.normal(size=(LABEL_N0, LABEL_P))
    f = rng.normal(size=(1, LABEL_N0)) @ X / np.sqrt(LABEL_N0)
    if kind == "correlated":
        Y = np.vstack([f, f]) + 0.3 * rng.normal(size=(2, LABEL_P))
    elif kind == "anticorrelated":
        Y = np.vstack([f, -f]) + 0.3 * rng.normal(size=(2, LABEL_P))
    else:
        g = rng.normal(size=(1, LABEL_N0)) @ X / np.sqrt(LABEL_N0)
        Y = np.vstack([f, g]) + 0.3 * rng.normal(size=(2, LABEL_P))
    return X, Y


@pytest.mark.device
@pytest.mark.parametrize("kind", ["correlated", "anticorrelated", "independent"])
def test_label_dependent_cross_covariance(kind, dtype):
    rng = np.random.default_rng(5)
    X, Y = _labels(kind, rng)
    Xt = rng.normal(size=(LABEL_N0, 3))
    data = RegressionData.linear(X.T, Y.T, dtype=dtype)
    res = fit(data, ProportionalLimitPrior(1.0, 2, num_steps=16), noise_variance=0.09,
              num_warmup=300, num_samples=500, num_chains=2, key=3)
    corr = np.asarray(res.predict(Xt.T).correlation())[:, 0, 1]
    nngp = fit(data, NNGPPrior(2), noise_variance=0.09, num_samples=10, num_chains=1)
    assert np.all(np.abs(np.asarray(nngp.predict(Xt.T).covariance())[:, 0, 1]) < 1e-5)
    q = res.draws("Q")
    q_corr = np.mean(q[:, 0, 1] / np.sqrt(q[:, 0, 0] * q[:, 1, 1]))
    if kind == "correlated":
        assert np.all(corr > 0.5) and q_corr > 0.5
    elif kind == "anticorrelated":
        assert np.all(corr < -0.5) and q_corr < -0.5
    else:
        # independent labels: the posterior correlation of Q stays near zero
        assert abs(q_corr) < 0.25 and np.all(np.abs(corr) < 0.25)


def _arviz_data(dtype=None):
    rng = np.random.default_rng(8)
    X, Y = _labels("correlated", rng)
    data = RegressionData.linear(X[:, 5:].T, Y[:, 5:].T, dtype=dtype)
    return data, X[:, :5].T, Y[:, :5].T


def _short_fit(data, prior, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short chains may trip the R-hat warning
        return fit(data, prior, noise_variance=dist.HalfNormal(1.0), num_warmup=200, num_samples=200,
                   num_chains=2, key=4, **kw)


def test_datatree_dims_and_inferred_hyperparameters(dtype):
    data, _, _ = _arviz_data(dtype)
    limit = _short_fit(data, ProportionalLimitPrior(1.0, 2, num_steps=8), ratio=dist.LogNormal(0.0, 1.0),
                       lambda_star=dist.LogNormal(0.0, 0.5))
    dt = limit.datatree
    post = dt["posterior"]
    assert post["Q"].dims == ("chain", "draw", "output", "output_bis")
    assert post["brownian_diag"].dims == ("chain", "draw", "step", "output")
    assert dt["observed_data"]["Y"].dims == ("obs", "output")
    assert dt["log_likelihood"]["Y"].dims == ("chain", "draw", "obs")
    assert "diverging" in dt["sample_stats"]
    for v in ("ratio", "lambda_star", "noise_variance"):
        assert post[v].dtype == dtype and np.all(np.isfinite(post[v].values))
    summ = limit.summary()
    assert "ratio" in summ.index
    assert np.all(np.isfinite(arviz_stats.summary(dt, var_names=["Q"])["mean"].astype(float)))
    assert np.isfinite(arviz_stats.loo(dt).elpd)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # 400 draws, 7 inputs
def test_arviz_compare_and_compare_models():
    data, Xt, Yt = _arviz_data()
    limit = _short_fit(data, ProportionalLimitPrior(1.0, 2, num_steps=8), ratio=dist.LogNormal(0.0, 1.0))
    finite = _short_fit(data, FiniteWidthPrior.from_depth_width(2, 4, 2))
    nngp = _short_fit(data, NNGPPrior(2))
    assert finite.datatree["posterior"]["bartlett_diag"].dims == ("chain", "draw", "layer", "output")
    ranked = arviz_stats.compare({"limit": limit.datatree, "finite": finite.datatree, "nngp": nngp.datatree})
    assert set(ranked.index) == {"limit", "finite", "nngp"}
    comp = compare_models({"limit": limit, "nngp": nngp}, Xt, Yt)
    assert np.all(np.isfinite(comp.table["heldout_lpd"]))
    assert comp.table.loc["limit", "mean_abs_pred_corr"] > 0.5
    assert comp.table.loc["limit", "mean_abs_Q_offdiag_corr"] == pytest.approx(abs(comp.q_correlation["limit"][1, 0]))
    # NNGP: Q = I; the only cross-output dependence is through the shared sigma^2 across
    # draws (Cov(m*) of the mixture), which is small
    assert comp.table.loc["nngp", "mean_abs_pred_corr"] < 0.1


@pytest.mark.device
def test_exact_nngp_fit_and_loo():
    """NNGP with fixed hyperparameters: no MCMC; LOO terms are exact and loo() handles them."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(9)
        X, Y = _labels("independent", rng)
        res = fit(RegressionData.linear(X.T, Y.T), NNGPPrior(2), noise_variance=0.1, num_samples=20, num_chains=2)
        assert "sample_stats" not in res.datatree.children  # nothing was sampled
        q = res.datatree["posterior"]["Q"].values
        assert q.shape == (2, 20, 2, 2) and np.all(q == np.eye(2))
        ll = res.datatree["log_likelihood"]["Y"].values
        e = loo(res)
        np.testing.assert_allclose(e.elpd, ll[0, 0].sum(), rtol=1e-10)


def test_same_seed_same_draws():
    rng = np.random.default_rng(10)
    X, Y = _labels("correlated", rng)
    data = RegressionData.linear(X.T, Y.T)
    kw = dict(noise_variance=0.1, num_warmup=50, num_samples=50, num_chains=1)
    a = fit(data, ProportionalLimitPrior(0.5, 2, num_steps=8), key=11, **kw)
    b = fit(data, ProportionalLimitPrior(0.5, 2, num_steps=8), key=jax.random.key(11), **kw)
    c = fit(data, ProportionalLimitPrior(0.5, 2, num_steps=8), key=12, **kw)
    np.testing.assert_array_equal(a.draws("Q"), b.draws("Q"))  # an integer seed is jax.random.key(seed)
    assert not np.array_equal(a.draws("Q"), c.draws("Q"))


def test_divergences_warn():
    """A sampler forced into divergences (tiny tree depth, absurd target) says so."""
    rng = np.random.default_rng(12)
    X, Y = _labels("correlated", rng)
    data = RegressionData.linear(X.T, 100 * Y.T)
    with pytest.warns(ConvergenceWarning, match="diverged|R-hat"):
        fit(data, ProportionalLimitPrior(3.0, 2, num_steps=8), noise_variance=1e-4, num_warmup=20,
            num_samples=50, num_chains=2, max_tree_depth=2, key=0)


def test_arviz_imported_before_numpyro_does_not_break_nuts():
    """arviz_base lazy-loads numpyro; importing numpyro.distributions afterwards used to leave
    numpyro.factor broken for constrained latents (see deeplinear/_compat.py)."""
    import subprocess
    import sys

    code = (
        "import arviz_base, numpyro.distributions, numpy as np, deeplinear as dl\n"
        "data = dl.RegressionData.linear(np.eye(6, 2), np.ones((6, 1)))\n"
        "r = dl.fit(data, dl.FiniteWidthPrior((3, 3), 1), num_warmup=5, num_samples=5, num_chains=1,"
        " log_likelihood=False)\n"
        "print(r.draws('Q').shape)"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(5, 1, 1)"
