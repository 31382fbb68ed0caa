r"""The inference story on built-in data, shared by the command line and notebook 03.

Data with correlated outputs (:func:`deeplinear.datasets.correlated_outputs`); posteriors
of the proportional limit at fixed ratios ``a``, with ``a`` inferred, and of the NNGP,
all with the noise variance inferred (``HalfNormal(1)`` prior); then
:func:`~deeplinear.comparison.compare_models` on held-out inputs: LOO, held-out log
predictive density and the predictive cross-output correlation, which the NNGP cannot
express (theory.md §4).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import numpyro.distributions as dist

from deeplinear.comparison import ModelComparison, compare_models
from deeplinear.data import RegressionData
from deeplinear.datasets import Dataset, correlated_outputs
from deeplinear.inference import ConvergenceWarning, fit
from deeplinear.priors import NNGPPrior, ProportionalLimitPrior

__all__ = ["InferenceDemo", "inference_demo"]

DEMO_RATIOS = (0.5, 2.0)
DEMO_STEPS = 32


class InferenceDemo(NamedTuple):
    dataset: Dataset
    fits: dict
    comparison: ModelComparison
    label_correlation: float


def inference_demo(
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    progress_bar: bool | None = None,
    dataset: Dataset | None = None,
) -> InferenceDemo:
    """Fit the limit at ``a = 0.5, 2``, with ``a ~ LogNormal(0, 1)``, and the NNGP; compare."""
    ds = correlated_outputs(seed=seed) if dataset is None else dataset
    D = ds.Y_train.shape[0]
    data = RegressionData.linear(ds.X_train, ds.Y_train)
    kw = dict(noise_variance=dist.HalfNormal(1.0), num_warmup=num_warmup, num_samples=num_samples,
              num_chains=num_chains, seed=seed, progress_bar=progress_bar)
    fits = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for a in DEMO_RATIOS:
            fits[f"limit a={a:g}"] = fit(data, ProportionalLimitPrior(a, D, DEMO_STEPS), **kw)
        fits["limit a~LogNormal"] = fit(
            data, ProportionalLimitPrior(1.0, D, DEMO_STEPS), ratio=dist.LogNormal(0.0, 1.0), **kw
        )
        fits["NNGP"] = fit(data, NNGPPrior(D), **kw)
    for w in caught:  # surface convergence problems, drop library noise
        if isinstance(w.message, ConvergenceWarning):
            warnings.warn(w.message, stacklevel=2)
    comparison = compare_models(fits, ds.X_test, ds.Y_test)
    corr = np.corrcoef(ds.Y_train)
    return InferenceDemo(ds, fits, comparison, float(corr[0, 1]) if D > 1 else 0.0)


def plot_demo(demo: InferenceDemo):
    """Two figures: predictive correlations per test input, and posterior of corr(Q)."""
    import matplotlib.pyplot as plt

    from deeplinear.comparison import plot_predictive_correlations

    fig1, ax = plt.subplots(figsize=(7, 3.5))
    plot_predictive_correlations(demo.comparison, ax=ax, label_corr=demo.label_correlation)
    ax.set_title("Predictive correlation of the two outputs at held-out inputs")
    fig1.tight_layout()

    fig2, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, f in demo.fits.items():
        q = f.draws("Q")
        c = q[:, 0, 1] / np.sqrt(q[:, 0, 0] * q[:, 1, 1])
        if np.ptp(c) > 0:
            axes[0].hist(c, bins=40, range=(-1, 1), histtype="step", density=True, label=name)
    axes[0].axvline(demo.label_correlation, color="k", ls="--", lw=1, label="labels")
    axes[0].set_xlabel("posterior corr(Q) = Q12 / sqrt(Q11 Q22)")
    axes[0].legend(fontsize=7)
    inferred = demo.fits.get("limit a~LogNormal")
    if inferred is not None:
        a = inferred.draws("ratio")
        axes[1].hist(a, bins=40, density=True, histtype="stepfilled", alpha=0.6, label="posterior")
        grid = np.linspace(1e-3, max(a.max(), 1e-3), 200)
        axes[1].plot(grid, np.exp(-np.log(grid) ** 2 / 2) / (grid * np.sqrt(2 * np.pi)), "k-", lw=1, label="prior")
        axes[1].set_xlabel("depth-to-width ratio a")
        axes[1].legend(fontsize=8)
    fig2.tight_layout()
    return fig1, fig2
