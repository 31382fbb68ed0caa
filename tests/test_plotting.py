"""Figures of the library core draw what they say (values read back from the axes), name the
outputs, and refuse bad arguments; the per-input held-out log density behind the comparison's
standard errors."""

import warnings

import matplotlib
import numpy as np
import pytest

import deeplinear as dl
from deeplinear.datasets import correlated_outputs
from deeplinear.plotting import plot_predictive_correlations, plot_q_correlations
from deeplinear.predictive import correlation_matrix

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def comparison():
    ds = correlated_outputs(num_train=12, num_test=4, num_features=30, correlation=0.9, seed=0)
    data = dl.RegressionData.linear(ds.X_train, ds.Y_train)
    kw = dict(noise_variance=0.1, num_warmup=100, num_samples=100, num_chains=1, progress_bar=False,
              output_names=["height", "weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.ConvergenceWarning)
        fits = {"finite": dl.fit(data, dl.FiniteWidthPrior(widths=(3, 3), num_outputs=2), **kw),
                "NNGP": dl.fit(data, dl.NNGPPrior(2), **kw)}
    return ds, fits, dl.compare_models(fits, ds.X_test, ds.Y_test)


def test_q_correlation_figure_shows_the_posterior_means_and_references(comparison):
    import matplotlib.pyplot as plt

    ds, fits, _ = comparison
    label_corr = np.corrcoef(ds.Y_train, rowvar=False)
    ax = plot_q_correlations(fits, {"labels": label_corr})
    means = [line.get_ydata()[0] for line in ax.lines if line.get_marker() == "o"]
    expected = [correlation_matrix(f.draws("Q"))[:, 0, 1].mean() for f in fits.values()]
    np.testing.assert_allclose(means, expected, rtol=1e-6)
    assert expected[1] == 0.0  # the NNGP's Q = I
    segments = [c for c in ax.collections if c.get_label() == "labels"]
    assert segments and np.isclose(segments[0].get_segments()[0][0][1], label_corr[0, 1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["height-weight"]
    plt.close("all")


def test_predictive_figure_names_the_outputs(comparison):
    import matplotlib.pyplot as plt

    _, _, comp = comparison
    ax = plot_predictive_correlations(comp, output_names=["height", "weight"])
    assert ax.get_ylabel() == "predictive corr(height, weight)"
    assert plot_predictive_correlations(comp).get_ylabel() == "predictive corr(f_0, f_1)"
    plt.close("all")


@pytest.mark.parametrize("fits,prob,error,match", [
    ({}, 0.9, TypeError, "non-empty dict"),
    ("fits", 0.9, TypeError, "non-empty dict"),
    (None, 1.5, ValueError, "prob"),
])
def test_q_correlation_figure_refuses_bad_arguments(comparison, fits, prob, error, match):
    fits = comparison[1] if fits is None else fits
    with pytest.raises(error, match=match):
        plot_q_correlations(fits, prob=prob)


def test_pointwise_held_out_density_sums_to_the_total_and_gives_the_table_se(comparison):
    ds, _, comp = comparison
    pm = comp.predictive["finite"]
    terms = np.asarray(pm.log_predictive_density(ds.Y_test, pointwise=True), np.float64)
    assert terms.shape == (ds.Y_test.shape[0],)
    np.testing.assert_allclose(terms.sum(), float(pm.log_predictive_density(ds.Y_test)), rtol=1e-5)
    np.testing.assert_allclose(comp.table.loc["finite", "heldout_lpd_se"], np.sqrt(terms.size) * terms.std(ddof=1),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="joint"):
        pm.log_predictive_density(ds.Y_test, joint=True, pointwise=True)
