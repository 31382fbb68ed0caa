"""Figures of the application: the demonstration's posterior correlations and ratio, and the
prior-law experiments (:mod:`deeplinear.app.prior_laws`). Matplotlib is imported lazily."""

from __future__ import annotations

import numpy as np
import scipy.stats as st

from deeplinear.plotting import plot_predictive_correlations, plot_q_correlations

__all__ = ["plot_demo", "plot_lognormal_convergence", "plot_offdiagonal_variance"]


def plot_demo(demo):
    """Two figures: predictive correlations per test input for each output pair; the posterior
    of corr(Q) of every fit (mean and 90% interval) against the labels' and the least-squares
    correlations, and the posterior of the inferred ratio ``a``."""
    import matplotlib.pyplot as plt

    D = demo.label_correlation.shape[0]
    pairs = [(e, d) for d in range(D) for e in range(d)]
    n = max(len(pairs), 1)
    fig1, axes1 = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False)
    for ax, (i, j) in zip(axes1[0], pairs):
        plot_predictive_correlations(demo.comparison, pair=(i, j), ax=ax, label_corr=demo.label_correlation[i, j],
                                     output_names=demo.output_names)
        ax.set_title(f"{demo.output_names[i]}-{demo.output_names[j]}")
        ax.get_legend().remove()
    handles, labels = axes1[0, 0].get_legend_handles_labels()
    fig1.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig1.suptitle("Predictive cross-output correlation at held-out inputs")
    fig1.tight_layout(rect=(0, 0.14, 1, 1))

    fig2, (ax_q, ax_a) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [2.2, 1]})
    references = {"labels": demo.label_correlation, "least squares": demo.least_squares_correlation}
    plot_q_correlations(demo.fits, references, output_names=demo.output_names, ax=ax_q)
    ax_q.set_title("What each model learned: E[corr(Q) | Y]")
    inferred = demo.fits.get(demo.inferred)
    if inferred is not None:
        a = inferred.draws("ratio")
        ax_a.hist(a, bins=40, density=True, histtype="stepfilled", alpha=0.6, label="posterior")
        grid = np.linspace(1e-3, max(a.max(), 1e-3), 200)
        ax_a.plot(grid, np.exp(-np.log(grid) ** 2 / 2) / (grid * np.sqrt(2 * np.pi)), "k-", lw=1, label="prior")
        ax_a.set_xlabel("depth-to-width ratio a")
        ax_a.set_title(demo.inferred)
        ax_a.legend(fontsize=8)
    fig2.tight_layout()
    fig3, ax3 = plt.subplots(figsize=(8, 3.6))
    plot_pointwise_elpd_differences(demo, ax=ax3)
    fig3.tight_layout()
    return fig1, fig2, fig3


def plot_pointwise_elpd_differences(demo, ax=None):
    r"""Per training input, :math:`\mathrm{elpd}_i` of the limit with ``a`` inferred minus the NNGP's
    (the demo's cross-validation: LOO with refits, or K-fold), the inputs refitted for either model
    marked; positive bars favour the limit."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    cv = demo.comparison.cross_validation
    diff = np.asarray(cv[demo.inferred].elpd_i, np.float64) - np.asarray(cv[demo.baseline].elpd_i, np.float64)
    refitted = set()
    for name in (demo.inferred, demo.baseline):
        refitted.update(i for i in getattr(cv[name], "refitted", []) if isinstance(i, int))
    rows = np.arange(diff.size)
    colours = ["tab:orange" if i in refitted else "tab:blue" for i in rows]
    ax.bar(rows, diff, color=colours)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("training input (man)")
    ax.set_ylabel("elpd_i difference (nats)")
    ax.set_xticks(rows)
    what = "K-fold" if "elpd_kfold" in demo.comparison.table.columns else "LOO"
    ax.set_title(f"{what}: {demo.inferred} minus {demo.baseline} (orange: refitted, Pareto k > 0.7)")
    return ax


def plot_lognormal_convergence(rows, ax=None):
    """Histograms of ``log Vbar`` at the largest width for each ``a`` against ``N(-a/2, a/2)``."""
    import matplotlib.pyplot as plt

    ratios = sorted({r.ratio for r in rows})
    if ax is None:
        _, axes = plt.subplots(1, len(ratios), figsize=(4 * len(ratios), 3.2), squeeze=False)
        axes = axes[0]
    else:
        axes = np.atleast_1d(ax)
    for a, axis in zip(ratios, axes):
        cells = [r for r in rows if r.ratio == a]
        for r in cells:
            axis.hist(r.samples, bins=80, density=True, histtype="step", label=f"N={r.width}, L={r.depth}")
        grid = np.linspace(min(c.samples.min() for c in cells), max(c.samples.max() for c in cells), 400)
        axis.plot(grid, st.norm(-a / 2, np.sqrt(a / 2)).pdf(grid), "k--", label="limit N(-a/2, a/2)")
        axis.set(title=f"a = {a}", xlabel=r"$\log \bar V$")
        axis.legend(fontsize=7)
    return axes


def plot_offdiagonal_variance(rows, ax=None):
    r""":math:`\mathbb E[Q_{12}^2]` against ``1/N``: MC with error bars, exact finite curve, limit."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    fin = [r for r in rows if r.width > 0]
    inv = np.array([1 / r.width for r in fin])
    ax.errorbar(inv, [r.mc for r in fin], yerr=[4 * r.mc_se for r in fin], fmt="o", label="finite product (MC ±4 SE)")
    ax.plot(inv, [r.exact for r in fin], "-", label="finite product (exact)")
    ax.axhline(fin[0].limit, color="k", ls="--", label="limit (closed form)")
    lim = [r for r in rows if r.width == 0]
    if lim:
        ax.errorbar([0.0], [lim[0].mc], yerr=[4 * lim[0].mc_se], fmt="s", color="C3", label="limit simulator")
    ax.set(xlabel="1/N", ylabel=r"$E[Q_{12}^2]$", title=r"$D=2$: off-diagonal variance, $L = aN$")
    ax.legend(fontsize=7)
    return ax

