"""ArviZ 1.x on a default fit: the statistics and plots a NumPyro/ArviZ user reaches for run on
``fit(...).datatree`` (with :meth:`PosteriorFit.add_predictive_groups` for the predictive ones)."""

import warnings

import arviz_plots
import arviz_stats
import matplotlib
import numpy as np
import numpyro.distributions as dist
import pytest

from deeplinear import ProportionalLimitPrior, RegressionData, fit
from deeplinear.inference import ConvergenceWarning

matplotlib.use("Agg")

PRIOR_DRAWS = 100


def _fit(**kwargs):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(12, 3))
    f = X @ rng.normal(size=(3, 1)) / np.sqrt(3)
    Y = np.hstack([f, 0.7 * f]) + 0.3 * rng.normal(size=(12, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit(RegressionData.linear(X, Y), ProportionalLimitPrior(1.0, 2, num_steps=8),
                   noise_variance=dist.HalfNormal(1.0), num_warmup=200, num_samples=150, num_chains=2, key=0,
                   progress_bar=False, **kwargs)


@pytest.fixture(scope="module")
def default_result():
    """A fit as ``fit`` returns it (default output names 0, 1): no method called on it."""
    return _fit()


@pytest.fixture(scope="module")
def result():
    return _fit(output_names=["a", "b"]).add_predictive_groups(key=1, prior_draws=PRIOR_DRAWS)


def test_default_tree_holds_leave_one_out_draws_for_ppc_and_loo(default_result):
    """``fit``'s own tree: ``az.loo`` and ``az.plot_ppc_dist`` run on it as returned, its
    ``posterior_predictive`` rows are leave-one-input-out draws (not the labels they check), with the
    observed data's coordinates; ``add_predictive_groups`` replaces them with joint replicates on the
    same coordinates."""
    import matplotlib.pyplot as plt

    from deeplinear import PosteriorFit

    dt = default_result.datatree
    assert {"log_likelihood", "posterior_predictive"} <= set(dt.children)
    pp, obs = dt["posterior_predictive"]["Y"], dt["observed_data"]["Y"]
    assert pp.dims == ("chain", "draw", "obs", "output") and pp.shape[2:] == obs.shape
    assert list(pp.coords["output"].values) == list(obs.coords["output"].values) == [0, 1]
    assert "leave-one-input-out" in dt["posterior_predictive"].attrs["description"]
    assert not np.any(pp.values == obs.values) and np.all(np.isfinite(pp.values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isfinite(arviz_stats.loo(dt).elpd)
        assert arviz_plots.plot_ppc_dist(dt, backend="matplotlib") is not None
    plt.close("all")
    again = _fit()  # same key, same draws
    np.testing.assert_array_equal(again.datatree["posterior_predictive"]["Y"].values, pp.values)
    joint = PosteriorFit(dt.copy(), default_result.spec, default_result.data).add_predictive_groups(key=1)
    rep = joint.datatree["posterior_predictive"]["Y"]
    assert list(rep.coords["output"].values) == [0, 1] and not np.array_equal(rep.values, pp.values)


def test_fit_above_the_group_budget_leaves_the_draws_out_and_says_how_to_add_them(default_result, monkeypatch):
    import deeplinear.inference

    monkeypatch.setattr(deeplinear.inference, "DEFAULT_GROUP_ENTRIES", 100)
    with pytest.warns(UserWarning, match="add_predictive_groups") as record:
        small = _fit()
    assert any("loo_pit_tree" in str(w.message) for w in record)
    assert "posterior_predictive" not in small.datatree.children
    np.testing.assert_allclose(small.datatree["log_likelihood"]["Y"].values,
                               default_result.datatree["log_likelihood"]["Y"].values, rtol=1e-5, atol=1e-6)


def test_loo_pit_tree_compiles_nothing_after_the_fit(default_result):
    """Its leave-one-out draws come from the program that made the fit's own groups: no new program."""
    from test_compilation import count_compilations

    with count_compilations() as count:
        tree = default_result.loo_pit_tree(key=5)
    assert count[0] == 0
    rep = tree["posterior_predictive"]["Y"].values
    assert rep.shape == default_result.datatree["posterior_predictive"]["Y"].shape and np.all(np.isfinite(rep))


def test_loo_pit_values_are_probabilities_per_observation_and_output(result):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pit = arviz_stats.loo_pit(result.loo_pit_tree(key=2))["Y"]
    assert pit.dims == ("obs", "output") and np.all((pit.values >= 0) & (pit.values <= 1))


def test_groups_and_sample_stats(result):
    dt = result.datatree
    assert {"posterior", "sample_stats", "observed_data", "log_likelihood", "posterior_predictive", "prior",
            "prior_predictive"} <= set(dt.children)
    stats = dt["sample_stats"]
    assert {"diverging", "energy", "lp", "acceptance_rate", "n_steps", "step_size", "tree_depth"} <= set(stats)
    n, depth = stats["n_steps"].values, stats["tree_depth"].values
    assert np.all(2 ** (depth - 1) <= n) and np.all(n <= 2**depth - 1)
    assert dt["posterior_predictive"]["Y"].dims == ("chain", "draw", "obs", "output")
    assert dt["prior"]["Q"].shape == (1, PRIOR_DRAWS, 2, 2)
    assert dt["prior_predictive"]["Y"].dims == ("chain", "draw", "obs", "output")


STATS = {
    "summary": lambda r: arviz_stats.summary(r.datatree),
    "ess": lambda r: arviz_stats.ess(r.datatree),
    "rhat": lambda r: arviz_stats.rhat(r.datatree),
    "hdi": lambda r: arviz_stats.hdi(r.datatree),
    "loo": lambda r: arviz_stats.loo(r.datatree),
    "compare": lambda r: arviz_stats.compare({"one": r.datatree, "two": r.datatree}),
    "loo_pit": lambda r: arviz_stats.loo_pit(r.loo_pit_tree(key=2)),
}

PLOTS = ["plot_trace_dist", "plot_forest", "plot_rank", "plot_dist", "plot_ess", "plot_pair", "plot_khat",
         "plot_ppc_dist", "plot_loo_pit", "plot_energy", "plot_prior_posterior"]


@pytest.mark.parametrize("name", sorted(STATS))
def test_arviz_stats_functions_run(result, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = STATS[name](result)
    assert out is not None


@pytest.mark.parametrize("name", PLOTS)
def test_arviz_plots_run(result, name):
    import matplotlib.pyplot as plt

    data = result.datatree
    if name == "plot_khat":
        data = arviz_stats.loo(result.datatree, pointwise=True)
    elif name == "plot_loo_pit":
        data = result.loo_pit_tree(key=2)
    kwargs = {"var_names": ["Q"]} if name in ("plot_trace_dist", "plot_forest", "plot_rank", "plot_dist",
                                               "plot_ess", "plot_pair", "plot_prior_posterior") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc = getattr(arviz_plots, name)(data, backend="matplotlib", **kwargs)
    assert pc is not None
    plt.close("all")


def test_power_scaling_tree_for_psense(result):
    """log_prior + joint log-likelihood equals NumPyro's log joint of the model (which leaves out a
    data constant of the relative null-space term) up to one constant over the draws."""
    from numpyro.infer.util import log_density

    from deeplinear.sampler import model_of_arguments

    tree = result.power_scaling_tree()
    assert set(tree["log_likelihood"]) == {"Y"} and tree["log_likelihood"]["Y"].dims == ("chain", "draw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = arviz_stats.psense_summary(tree)
    # the rows a user reads: Q's entries and the inferred hyperparameters, not the prior's latents
    assert set(tree["posterior"].data_vars) == set(result._varying_variables()) and "Q" in tree["posterior"]
    q_rows = int(np.prod(tree["posterior"]["Q"].shape[2:]))
    others = sum(int(np.prod(tree["posterior"][v].shape[2:])) for v in tree["posterior"].data_vars if v != "Q")
    assert len(table) == q_rows + others and all(str(r).split("[")[0] in tree["posterior"] for r in table.index)
    total = sum(tree["log_prior"][k].values for k in tree["log_prior"]) + tree["log_likelihood"]["Y"].values
    args = result.spec.model_arguments(result.data)
    names = list(tree["log_prior"])
    joint = np.array([
        float(log_density(model_of_arguments, (args,), {}, {k: result.draws(k)[s] for k in names})[0])
        for s in range(0, 300, 37)
    ])
    diff = total.reshape(-1)[: 300: 37] - joint
    np.testing.assert_allclose(diff, diff[0], atol=1e-3 * np.abs(joint).max())
