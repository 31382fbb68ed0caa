"""Figures of the library core (matplotlib, imported lazily): predictive correlations of a
model comparison, and simulation-based calibration ECDFs. Every function returns the
matplotlib object it drew on and never changes global matplotlib state."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_predictive_correlations", "plot_sbc"]


def plot_predictive_correlations(comparison, pair=(0, 1), ax=None, label_corr=None):
    """Bar chart of the predictive cross-output correlation (outputs ``pair``) per test
    input, one bar group per model; a dashed line at the labels' correlation if given."""
    import matplotlib.pyplot as plt

    if not comparison.predictive:
        raise ValueError("the comparison has no test inputs; pass X_test to compare_models")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    i, j = pair
    names = list(comparison.predictive)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        corr = np.asarray(comparison.predictive[name].correlation())[:, i, j]
        ax.bar(np.arange(corr.size) + k * width, corr, width, label=name)
    if label_corr is not None:
        ax.axhline(label_corr, color="k", ls="--", lw=1, label="labels' correlation")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("test input")
    ax.set_ylabel(f"predictive corr(f_{i}, f_{j})")
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, -0.05), max(hi, 0.05) + 0.35 * (max(hi, 0.05) - min(lo, -0.05)))
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    return ax


def plot_sbc(result, prob: float = 0.99, band_simulations: int = 5000):
    r"""ECDF-difference plot: :math:`\hat F(u) - u` of each quantity's fractional ranks with
    its simultaneous band at level :math:`1 - (1-\text{prob})/k` (the band that
    :meth:`uniformity` tests; ``arviz_stats.ecdf_utils.ecdf_pit``). Returns a matplotlib
    Figure. For arviz-plots' own display use
    ``arviz_plots.plot_ecdf_pit(result.to_datatree(), group="prior_sbc")``."""
    import matplotlib.pyplot as plt
    from arviz_stats.ecdf_utils import ecdf_pit

    k = len(result.ranks)
    rows = {row["quantity"]: row for row in result.uniformity(prob, band_simulations=band_simulations)}
    ncols = min(k, 4)
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False, sharey=True)
    for i, (name, u) in enumerate(result.pit().items()):
        ax = axes.flat[i]
        rng = np.random.default_rng(result._seed + 100 + i)
        x, ecdf, lower, upper = ecdf_pit(u, 1 - (1 - prob) / k, band_simulations, rng=rng)
        ax.fill_between(x, lower - x, upper - x, step="post", color="0.85", label=f"{prob:.0%} family band")
        ax.step(x, ecdf - x, where="post", color="C0" if rows[name]["inside_band"] else "C3")
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_title(f"{name}  (chi2 p={rows[name]['chi2_pvalue']:.2f})", fontsize=9)
        ax.set_xlabel("fractional rank u")
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("ECDF(u) - u")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"SBC: {result.num_simulations} simulations, {result.num_draws} draws each", fontsize=10)
    fig.tight_layout()
    return fig
