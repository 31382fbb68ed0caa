"""Your own model in ``fit(data, model=...)``: the site contract is checked before sampling; the
fit predicts, gives LOO, is compared and round-trips through save_fit/load_fit; its posterior
equals the built-in model's for the same prior (within Monte Carlo error); named ArviZ dims for a
user's own ``MCMC`` (``ModelSpec.arviz_dims``)."""

import functools
import warnings

import arviz_base
import arviz_stats
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

import deeplinear as dl
from deeplinear.custom import CustomModel

PRIOR = dl.FiniteWidthPrior(widths=(4, 4), num_outputs=2)
NOISE = 0.1
DRAWS = 1000  # per chain, for the posterior comparison
CHAINS = 2
MCSE_TOLERANCE = 4.5


def _data(P=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P, 3))
    Y = X @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(P, 2))
    return X, Y, dl.RegressionData.linear(X, Y)


def my_model(data, *, record=True, lam_scale=1.0, noise_value=NOISE, intercept=False, observed=True):
    """The built-in model's likelihood with a LogNormal prior on lambda_star, written by hand, as the
    user guide writes it: ``observed=False`` leaves the labels free (``Predictive`` draws new ones)."""
    lam = numpyro.sample("lambda_star", dist.LogNormal(0.0, lam_scale))
    noise = numpyro.deterministic("noise_variance", noise_value) if record else noise_value
    mu = numpyro.sample("intercept", dist.Normal(0.0, 1.0).expand([2]).to_event(1)) if intercept else None
    vbar = PRIOR.numpyro_vbar(prefix="net_")
    q = numpyro.deterministic("Q", vbar @ vbar.T)
    likelihood = dl.KroneckerNormal(q, lam, noise, data, root=vbar, labels_are_data=observed, intercept=mu)
    numpyro.sample("Y", likelihood, obs=data.labels if observed else None)


def _fit(data, model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.ConvergenceWarning)
        return dl.fit(data, model=model, progress_bar=False, **kw)


@pytest.fixture(scope="module")
def custom_fit():
    X, Y, data = _data()
    return X, Y, _fit(data, functools.partial(my_model, intercept=True), num_warmup=300, num_samples=200,
                      num_chains=2)


def test_user_model_predicts_and_round_trips(custom_fit, tmp_path):
    X, Y, fitted = custom_fit
    assert isinstance(fitted.spec, CustomModel) and fitted.spec.has_intercept
    assert fitted.datatree["posterior"]["Q"].dims[-2:] == ("output", "output_bis")
    assert {"energy", "lp", "tree_depth", "step_size", "acceptance_rate", "diverging"} <= set(
        fitted.datatree["sample_stats"].data_vars)
    assert "log_likelihood" in fitted.datatree.children
    mixture = fitted.predict(X[:4])
    mean, cov = np.asarray(mixture.mean), np.asarray(mixture.covariance())
    assert mean.shape == (4, 2) and np.all(np.isfinite(cov))
    path = tmp_path / "custom.nc"
    dl.save_fit(fitted, path)
    loaded = dl.load_fit(path)
    assert loaded.spec == fitted.spec and loaded.spec.model is None
    again = loaded.predict(X[:4])
    np.testing.assert_allclose(np.asarray(again.mean), mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(again.covariance()), cov, rtol=1e-6)
    np.testing.assert_allclose(dl.loo(loaded).elpd, dl.loo(fitted).elpd, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.ConvergenceWarning)
        nngp = dl.fit(fitted.data, dl.NNGPPrior(2), noise_variance=NOISE, intercept=dist.Normal(0.0, 1.0),
                      num_samples=200, num_warmup=200, num_chains=2, progress_bar=False)
    table = dl.compare_models({"mine": fitted, "NNGP": nngp}, X[:4], Y[:4]).table
    assert np.all(np.isfinite(table["heldout_lpd"]))
    with pytest.raises(ValueError, match="numpyro.infer.Predictive"):
        fitted.add_predictive_groups(prior_draws=10)
    assert "posterior_predictive" in fitted.add_predictive_groups().datatree.children


PREDICTIVE_DRAWS = 4000  # label sets drawn at one posterior draw, for the moments of Predictive's labels


def test_users_model_with_labels_unobserved_gives_predictive_new_labels(custom_fit):
    """The user guide's switch: ``Predictive`` of the model with ``observed=False`` draws new label
    sets (with the labels observed it returns the data in every draw). At one posterior draw,
    repeated, their mean and covariances equal the dense Gaussian's,
    ``1 mu^T`` and ``lambda_star Q (x) K + sigma^2 I`` (numpy), at 5 MC SE."""
    from numpyro.infer import Predictive

    X, Y, fitted = custom_fit
    posterior = {k: fitted.draws(k) for k in ("lambda_star", "intercept", "net_bartlett_diag",
                                               "net_bartlett_offdiag")}
    free = functools.partial(my_model, intercept=True, observed=False)
    new = np.asarray(Predictive(free, posterior_samples=posterior)(jax.random.key(0), fitted.data)["Y"])
    assert new.shape == (fitted.draws("Q").shape[0],) + Y.shape and np.all(np.isfinite(new))
    assert not np.any(new == Y) and np.std(new[:, 0, 0]) > 0
    kept = Predictive(functools.partial(my_model, intercept=True), posterior_samples=posterior)(
        jax.random.key(0), fitted.data)["Y"]
    assert np.array_equal(np.asarray(kept)[3], np.asarray(fitted.data.labels))  # observed: the data, every draw
    one = {k: np.repeat(v[7:8], PREDICTIVE_DRAWS, axis=0) for k, v in posterior.items()}
    draws = np.asarray(Predictive(free, posterior_samples=one)(jax.random.key(1), fitted.data)["Y"])
    draws = draws.reshape(PREDICTIVE_DRAWS, -1)  # vec of rows: index i * D + d
    q, lam, mu = fitted.draws("Q")[7], fitted.draws("lambda_star")[7], fitted.draws("intercept")[7]
    K = X @ X.T / X.shape[1]
    cov = lam * np.kron(K, q) + NOISE * np.eye(K.shape[0] * 2)
    mean = np.tile(mu, K.shape[0])
    se_mean = np.sqrt(np.diag(cov) / PREDICTIVE_DRAWS)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * se_mean)
    sub = np.arange(6)  # the first three rows' entries: a 6 x 6 block of the covariance
    block = cov[np.ix_(sub, sub)]
    se_cov = np.sqrt((np.outer(np.diag(block), np.diag(block)) + block**2) / PREDICTIVE_DRAWS)
    assert np.all(np.abs(np.cov(draws[:, sub].T) - block) < 5 * se_cov)


def test_user_model_posterior_equals_the_built_in_model():
    """The same prior and likelihood through fit(model=...) (NumPyro's MCMC) and the built-in model
    (the compiled driver): posterior means of Q and lambda_star agree within Monte Carlo error."""
    _, _, data = _data(seed=4)
    ours = _fit(data, my_model, num_warmup=500, num_samples=DRAWS, num_chains=CHAINS, key=1)
    builtin = dl.fit(data, dl.ModelSpec(PRIOR, lambda_star=dist.LogNormal(0.0, 1.0), noise_variance=NOISE),
                     num_warmup=500, num_samples=DRAWS, num_chains=CHAINS, key=2, progress_bar=False)
    for name in ("Q", "lambda_star"):
        a, b = ours.datatree["posterior"][name], builtin.datatree["posterior"][name]
        se = np.hypot(arviz_stats.mcse(a).values, arviz_stats.mcse(b).values)
        diff = np.abs(a.mean(("chain", "draw")).values - b.mean(("chain", "draw")).values)
        assert np.all(diff <= MCSE_TOLERANCE * se), (name, diff, se)


def _without_lambda(data):
    vbar = PRIOR.numpyro_vbar()
    q = numpyro.deterministic("Q", vbar @ vbar.T)
    numpyro.sample("Y", dl.KroneckerNormal(q, 1.0, NOISE, data, labels_are_data=True), obs=data.labels)


def _wrong_record(data):
    numpyro.deterministic("lambda_star", 2.0)
    numpyro.deterministic("noise_variance", NOISE)
    q = dl.numpyro_q(PRIOR)  # records the site "Q"
    numpyro.sample("Y", dl.KroneckerNormal(q, 1.0, NOISE, data, labels_are_data=True), obs=data.labels)


def _not_kronecker(data):
    numpyro.deterministic("lambda_star", 1.0)
    numpyro.deterministic("noise_variance", NOISE)
    dl.numpyro_q(PRIOR)
    numpyro.sample("Y", dist.Normal(0.0, 1.0).expand(list(data.labels.shape)).to_event(2), obs=data.labels)


def _unobserved(data):
    lam = numpyro.deterministic("lambda_star", 1.0)
    q = dl.numpyro_q(PRIOR)  # records the site "Q"
    numpyro.deterministic("noise_variance", NOISE)
    numpyro.sample("Y", dl.KroneckerNormal(q, lam, NOISE, data))


def _root_of_another_q(data):
    lam = numpyro.sample("lambda_star", dist.LogNormal(0.0, 1.0))
    numpyro.deterministic("noise_variance", NOISE)
    vbar = PRIOR.numpyro_vbar(prefix="net_")
    q = numpyro.deterministic("Q", vbar @ vbar.T)
    numpyro.sample("Y", dl.KroneckerNormal(q, lam, NOISE, data, root=2.0 * vbar, labels_are_data=True),
                   obs=data.labels)


def _with_a_discrete_site(data):
    numpyro.sample("which", dist.Categorical(probs=np.array([0.5, 0.5])))
    my_model(data)


def _with_a_nan_log_density(data):
    numpyro.sample("broken", dist.Normal(0.0, 1.0))
    numpyro.factor("nan_term", np.nan)
    my_model(data)


@pytest.mark.parametrize("model,match", [
    # issue 28: each checked before sampling, naming the site and what the contract requires
    (_root_of_another_q, "root that is not a factor of its Q"),
    (_with_a_discrete_site, "discrete latent site.*'which' \\(CategoricalProbs\\)"),
    (_with_a_nan_log_density, "not finite.*'nan_term'"),
    (_without_lambda, "no site 'lambda_star'.*numpyro.deterministic"),
    (_wrong_record, "records a value other than"),
    (_not_kronecker, "KroneckerNormal"),
    (_unobserved, "observe the labels"),
    (functools.partial(my_model, record=False), "no site 'noise_variance'"),
])
def test_model_breaking_the_site_contract_is_refused_before_sampling(model, match):
    _, _, data = _data()
    with pytest.raises(ValueError, match=match):
        dl.fit(data, model=model, num_warmup=1, num_samples=1, progress_bar=False)


def test_model_with_prior_or_hyperparameters_is_refused():
    _, _, data = _data()
    with pytest.raises(ValueError, match="leave prior and the hyperparameter keywords"):
        dl.fit(data, PRIOR, model=my_model)
    with pytest.raises(ValueError, match="leave prior"):
        dl.fit(data, model=my_model, noise_variance=0.5)
    with pytest.raises(TypeError, match="model must be a NumPyro model"):
        dl.fit(data, model="my_model")
    with pytest.raises(TypeError, match="needs a prior"):
        dl.fit(data)


def test_arviz_dims_name_the_sites_of_a_users_own_mcmc():
    _, _, data = _data()
    spec = dl.ModelSpec(PRIOR, lambda_star=dist.LogNormal(0.0, 1.0), noise_variance=NOISE)
    mcmc = MCMC(NUTS(my_model), num_warmup=20, num_samples=10, progress_bar=False)
    mcmc.run(jax.random.key(0), data)
    tree = arviz_base.from_numpyro(mcmc, **spec.arviz_dims(data, output_names=["a", "b"], prefix="net_"))
    post = tree["posterior"]
    assert post["Q"].dims == ("chain", "draw", "output", "output_bis")
    assert list(post["Q"].coords["output"].values) == ["a", "b"]
    assert post["net_bartlett_diag"].dims == ("chain", "draw", "layer", "output")
    assert post["net_bartlett_offdiag"].dims == ("chain", "draw", "layer", "offdiag")


def test_exact_nngp_loo_in_float32_has_uniform_weights():
    """The exact NNGP's terms, computed in batches, differ across draws by rounding only; LOO
    treats them as constant (PSIS would fail: 'All tail values are the same')."""
    _, _, data = _data()
    fitted = dl.fit(data, dl.NNGPPrior(2), noise_variance=NOISE, num_samples=100, num_chains=2, progress_bar=False)
    result = dl.loo(fitted)
    assert np.isfinite(result.elpd) and float(np.max(result.pareto_k)) == 0.0
