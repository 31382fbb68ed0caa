"""Figures of the library core (matplotlib, imported lazily): predictive correlations of a
model comparison, and simulation-based calibration ECDFs. Every function returns the
matplotlib object it drew on and never changes global matplotlib state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # matplotlib loads on first use, not on import
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from deeplinear._types import ArrayLike
    from deeplinear.comparison import ModelComparison
    from deeplinear.inference import PosteriorFit
    from deeplinear.sbc import SBCResult

__all__ = ["plot_predictive_correlations", "plot_q_correlations", "plot_sbc"]


def plot_predictive_correlations(comparison: ModelComparison, pair: tuple[int, int] = (0, 1), ax: Axes | None = None,
                                 label_corr: float | None = None,
                                 output_names: Sequence[str] | None = None) -> Axes:
    """Bar chart of the predictive cross-output correlation (outputs ``pair``) per test
    input, one bar group per model; a dashed line at the labels' correlation if given.

    When the inputs have few features (``N0`` much smaller than ``P``) the data pin the linear map
    down and the predictive covariance of the outputs is small and nearly uncorrelated whatever
    ``Q`` learned, so these bars are all near 0; :func:`plot_q_correlations` then shows what the
    models learned."""
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
    first, second = (f"f_{i}", f"f_{j}") if output_names is None else (output_names[i], output_names[j])
    ax.set_ylabel(f"predictive corr({first}, {second})")
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, -0.05), max(hi, 0.05) + 0.35 * (max(hi, 0.05) - min(lo, -0.05)))
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    return ax


def plot_q_correlations(fits: dict[str, PosteriorFit], references: dict[str, ArrayLike] | None = None,
                        output_names: Sequence[str] | None = None, ax: Axes | None = None,
                        prob: float = 0.9) -> Axes:
    r"""What each model learned about the outputs' correlations: for every output pair ``(d, e)``
    (x axis) and model (side by side), the posterior mean of
    :math:`\operatorname{corr}(Q)_{de} = Q_{de}/\sqrt{Q_{dd}Q_{ee}}` with its central ``prob``
    interval; ``references`` (``{label: D x D matrix}``, e.g. the labels' correlation) as short
    horizontal lines. The NNGP's ``Q = I`` shows as a point at 0.

    Parameters
    ----------
    fits : dict[str, PosteriorFit]
    references : dict[str, array (D, D)], optional
    output_names : sequence of str, optional
        Names of the ``D`` outputs for the pair labels (default: the fits' ``output`` coordinate).
    """
    import matplotlib.pyplot as plt

    from deeplinear.predictive import correlation_matrix

    if not isinstance(fits, dict) or not fits:
        raise TypeError("fits must be a non-empty dict {name: PosteriorFit}")
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob!r}")
    first = next(iter(fits.values()))
    D = first.data.num_outputs
    if D < 2:
        raise ValueError("corr(Q) has no off-diagonal entry with one output")
    if output_names is None:
        output_names = [str(x) for x in first.datatree["posterior"]["Q"].coords["output"].values]
    pairs = [(e, d) for d in range(D) for e in range(d)]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(pairs) + 2), 3.5))
    width = 0.8 / len(fits)
    x = np.arange(len(pairs))
    tail = (1 - prob) / 2
    for k, (name, f) in enumerate(fits.items()):
        corr = correlation_matrix(f.draws("Q"))
        values = np.stack([corr[:, i, j] for i, j in pairs], axis=1)  # (S, pairs)
        mean = values.mean(0)
        lo, hi = np.quantile(values, [tail, 1 - tail], axis=0)
        pos = x - 0.4 + (k + 0.5) * width
        ax.errorbar(pos, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=4, capsize=2, label=name, color=f"C{k}")
    for m, (label, matrix) in enumerate((references or {}).items()):
        matrix = np.asarray(matrix)
        color = "k" if m == 0 else "0.45"
        line: Literal["--", ":"] = "--" if m == 0 else ":"
        for p, (i, j) in enumerate(pairs):
            ax.hlines(matrix[i, j], p - 0.45, p + 0.45, colors=color, linestyles=line,
                      label=label if p == 0 else "_nolegend_")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, [f"{output_names[i]}-{output_names[j]}" for i, j in pairs])
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel(f"corr(Q): posterior mean, {prob:.0%} interval")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    return ax


def plot_sbc(result: SBCResult, prob: float = 0.99, band_simulations: int = 5000) -> Figure:
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
