r"""The inference story on built-in data, shared by the command line (default run, ``infer``).

Data: the Linnerud exercise/physiology data (:func:`deeplinear.datasets.linnerud`; 3
correlated outputs Weight, Waist, Pulse; 15 training and 5 held-out men), inputs and
labels standardized with the training rows' mean and standard deviation.

The noise model the data need: the least-squares residuals of Weight and Waist correlate
(about +0.6 on the training men), which a noise :math:`\sigma^2 I` can only put into ``Q``. So
every fit has a full output-noise covariance
:math:`\Sigma_\varepsilon = \operatorname{diag}(\sigma)\,\Omega\,\operatorname{diag}(\sigma)`
(``HalfNormal(1)`` per variance, ``LKJ(3, 1)`` over :math:`\Omega`; theory.md §4), and one fit
repeats the inferred-ratio model with scalar noise to show what correlated noise changes.

Fits: the proportional limit at fixed ratios ``a`` and with ``a ~ LogNormal(0, 1)``; the
**Wishart baseline**, one hidden layer of width :math:`\nu = D + 1`
(:math:`Q \sim \mathrm{Wishart}_D(\nu, I/\nu)`: the classical intrinsic-coregionalization model
with a Wishart prior on the output covariance), so the comparison shows what depth adds beyond
it; and the NNGP (``Q = I``). Then :func:`~deeplinear.comparison.compare_models` on the held-out
men: LOO, held-out log predictive density and predictive cross-output correlations. The
questions the demo answers, honestly either way:

* does :math:`E[\operatorname{corr}(Q) \mid Y]` follow the data's output correlations
  (:attr:`InferenceDemo.q_correlations` against the labels' correlation and the least-squares
  :math:`\hat Q \propto \hat B \hat B^\top`, :math:`\hat B^\top = X^+ Y`: the correlation of the
  signal, without the residuals')?
* does correlated noise change :math:`\operatorname{corr}(Q)` and the held-out log density
  (:data:`INFERRED` against :data:`SCALAR_NOISE`)?
* does the limit beat the NNGP and the Wishart baseline on the held-out log density
  (``comparison.table["heldout_lpd"]``, in the data's units)?
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from numpyro import distributions as dist

from deeplinear._validation import check_choice
from deeplinear.app.tables import Standardizer
from deeplinear.comparison import LOO_METHODS, ModelComparison, compare_models
from deeplinear.data import RegressionData
from deeplinear.datasets import LINNERUD_OUTPUTS, Dataset, linnerud
from deeplinear.inference import ConvergenceWarning, fit
from deeplinear.predictive import correlation_matrix
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior

__all__ = ["InferenceDemo", "correlation_table", "heldout_verdicts", "inference_demo", "loo_verdicts", "noise_effect",
           "refitted_summary"]

DEMO_RATIOS = (0.5, 2.0)
DEMO_FOLDS = 5  # loo="kfold": 3 men per fold
DEMO_STEPS = 32
DEMO_TARGET_ACCEPT = 0.9  # smaller steps for the curved posteriors of a and the LKJ noise correlation
DEMO_NOISE = "full"  # the residuals of Weight and Waist correlate: a full noise covariance (LKJ(3, 1) correlation)
INFERRED = "limit a~LogNormal"  # name of the fit with the ratio inferred
SCALAR_NOISE = "limit a~LogNormal, scalar noise"  # the same model with noise sigma^2 I
WISHART = "Wishart (1 layer)"  # one hidden layer of width D + 1: the ICM with a Wishart prior
BASELINE = "NNGP"


class InferenceDemo(NamedTuple):
    r"""What :func:`inference_demo` returns.

    ``label_correlation`` is the training labels' ``D x D`` correlation matrix;
    ``least_squares_correlation`` the correlation of :math:`\hat B \hat B^\top`,
    :math:`\hat B^\top = \tilde X^+ \tilde Y` (standardized data; uncentered, as ``B`` has
    prior mean 0); ``residual_correlation`` that of the least-squares residuals
    :math:`\tilde Y - \tilde X \hat B^\top` (what a full noise covariance models);
    ``noise_correlation`` the posterior mean of the noise correlation :math:`\Omega` of the
    inferred-ratio fit;
    ``q_correlations[name]`` the posterior mean of :math:`\operatorname{corr}(Q)_{de} =
    Q_{de}/\sqrt{Q_{dd} Q_{ee}}` per fit; ``comparison.table["heldout_lpd"]`` is
    :math:`\log p(Y_* \mid Y)` of the held-out labels in the data's original units; ``inferred``
    is the name of the fit with the ratio ``a`` inferred (full noise), ``scalar_noise`` the same
    with noise :math:`\sigma^2 I`, ``wishart`` the one-hidden-layer baseline, ``baseline`` the NNGP;
    ``heldout_terms[name]`` the per-man terms of the held-out log density (standardized units: their
    differences between models are those in the data's units).
    """

    dataset: Dataset
    output_names: tuple
    fits: dict
    comparison: ModelComparison
    label_correlation: np.ndarray
    least_squares_correlation: np.ndarray
    residual_correlation: np.ndarray
    noise_correlation: np.ndarray
    q_correlations: dict
    heldout_terms: dict
    inferred: str = INFERRED
    scalar_noise: str = SCALAR_NOISE
    wishart: str = WISHART
    baseline: str = BASELINE


def inference_demo(
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    key=0,
    progress_bar: bool | None = None,
    dataset: Dataset | None = None,
    output_names=None,
    loo: str = "reloo",
) -> InferenceDemo:
    r"""Fit the limit at ``a = 0.5, 2`` and with ``a ~ LogNormal(0, 1)`` (full noise, and scalar noise
    for the inferred ratio), the Wishart baseline and the NNGP; compare.

    Parameters
    ----------
    num_warmup, num_samples, num_chains, key, progress_bar
        Passed to :func:`deeplinear.fit` (``key`` drives MCMC only; the Linnerud
        train/test split is fixed).
    dataset : Dataset, optional
        Default: :func:`deeplinear.datasets.linnerud` (``num_test=5``, split seed 0).
        Inputs and labels are standardized with the training rows' statistics; the held-out
        log density is mapped back to the original units by its Jacobian,
        :math:`\log p(Y_*) = \log p(\tilde Y_*) - P_* \sum_d \log s_d`.
    output_names : sequence of str, optional
        Names of the ``D`` outputs (default: Linnerud's, or ``y0, y1, ...``).
    loo : {"reloo", "psis", "exact", "kfold"}, default "reloo"
        The cross-validation of :func:`deeplinear.compare_models`: by default PSIS-LOO with every
        man whose Pareto k exceeds 0.7 refitted without him (with 15 men, one influential man
        makes PSIS unreliable), the refits with the fits' own chains and draws.
    """
    loo = check_choice("loo", loo, LOO_METHODS)
    if dataset is None:
        ds, names = linnerud(num_test=5, seed=0), LINNERUD_OUTPUTS
    elif isinstance(dataset, Dataset):
        ds, names = dataset, tuple(output_names or (f"y{d}" for d in range(dataset.Y_train.shape[1])))
    else:
        raise TypeError(f"dataset must be a deeplinear.datasets.Dataset or None, got {type(dataset).__name__}")
    D = ds.Y_train.shape[1]
    if len(names) != D:
        raise ValueError(f"output_names must name the {D} outputs, got {len(names)} names")
    sx, sy = Standardizer.fit(ds.X_train), Standardizer.fit(ds.Y_train)
    data_x, data_y = sx.transform(ds.X_train), sy.transform(ds.Y_train)
    data = RegressionData.linear(data_x, data_y)
    kw = dict(noise_variance=dist.HalfNormal(1.0), num_warmup=num_warmup, num_samples=num_samples,
              num_chains=num_chains, key=key, progress_bar=progress_bar, output_names=list(names),
              target_accept_prob=DEMO_TARGET_ACCEPT)
    full = dict(kw, noise_model=DEMO_NOISE)
    limit = ProportionalLimitPrior(1.0, D, DEMO_STEPS)
    runs: dict[str, tuple] = {f"limit a={a:g}": (ProportionalLimitPrior(a, D, DEMO_STEPS), {}, full)
                              for a in DEMO_RATIOS}
    runs[INFERRED] = (limit, {"ratio": dist.LogNormal(0.0, 1.0)}, full)
    runs[SCALAR_NOISE] = (limit, {"ratio": dist.LogNormal(0.0, 1.0)}, kw)
    runs[WISHART] = (FiniteWidthPrior(widths=(D + 1,), num_outputs=D), {}, full)
    runs[BASELINE] = (NNGPPrior(D), {}, full)
    fits = {}
    for name, (prior, extra, settings) in runs.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fits[name] = fit(data, prior, **extra, **settings)
        for w in caught:  # surface convergence problems, naming the fit; drop library noise
            if isinstance(w.message, ConvergenceWarning):
                warnings.warn(ConvergenceWarning(f"{name}: {w.message}"), stacklevel=2)
    Y_test = sy.transform(ds.Y_test)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison = compare_models(fits, sx.transform(ds.X_test), Y_test, loo=loo, folds=DEMO_FOLDS, key=key)
    for w in caught:  # the refits' convergence, once per model, named as such; the rest as it came
        if isinstance(w.message, ConvergenceWarning):
            warnings.warn(ConvergenceWarning(f"cross-validation refits: {w.message}"), stacklevel=2)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    comparison.table["heldout_lpd"] -= ds.Y_test.shape[0] * np.sum(np.log(sy.scale))
    heldout_terms = {name: np.asarray(pm.log_predictive_density(Y_test, pointwise=True), np.float64)
                     for name, pm in comparison.predictive.items()}
    b_hat = (np.linalg.pinv(data_x) @ data_y).T  # (D, N0): Y = X B^T / sqrt(N0) + noise
    least_squares = correlation_matrix(b_hat @ b_hat.T)
    residuals = data_y - data_x @ b_hat.T
    residual_corr = correlation_matrix(residuals.T @ residuals)
    noise_corr = fits[INFERRED].draws("noise_correlation").mean(0)
    label_corr = np.corrcoef(ds.Y_train, rowvar=False)
    return InferenceDemo(ds, names, fits, comparison, label_corr, least_squares, residual_corr, noise_corr,
                         comparison.q_correlation, heldout_terms)


def noise_effect(demo: InferenceDemo):
    r"""``pandas.DataFrame``: what correlated noise changes, per output pair -- the least-squares
    residuals' correlation, the posterior mean of the noise correlation :math:`\Omega` (full
    noise), and :math:`E[\operatorname{corr}(Q) \mid Y]` with full and with scalar noise (the
    inferred-ratio model)."""
    import pandas as pd

    pairs, index = _pairs(demo)
    cols = {
        "residuals (least squares)": [demo.residual_correlation[d, e] for d, e in pairs],
        "noise corr, full noise": [demo.noise_correlation[d, e] for d, e in pairs],
        "corr(Q), full noise": [demo.q_correlations[demo.inferred][d, e] for d, e in pairs],
        "corr(Q), scalar noise": [demo.q_correlations[demo.scalar_noise][d, e] for d, e in pairs],
    }
    return pd.DataFrame(cols, index=index)


def heldout_verdicts(demo: InferenceDemo) -> list[str]:
    r"""One sentence per comparison of the held-out log density: the limit with ``a`` inferred (full
    noise) against the NNGP, the Wishart baseline and the same model with scalar noise, stated as it
    came out, with the difference in nats and its paired standard error
    :math:`\sqrt{P_*}\,\mathrm{sd}_j(\ell_j - \ell'_j)` over the held-out men (with five men, a rough
    guide: a difference within two standard errors is not a finding)."""
    lpd = demo.comparison.table["heldout_lpd"]
    n = demo.dataset.Y_test.shape[0]
    lines = []
    for other, what in ((demo.baseline, "the NNGP"), (demo.wishart, "the Wishart baseline (one hidden layer)"),
                        (demo.scalar_noise, "the same model with scalar noise")):
        diff = lpd[demo.inferred] - lpd[other]
        paired = demo.heldout_terms[demo.inferred] - demo.heldout_terms[other]
        se = float(np.sqrt(n) * paired.std(ddof=1)) if n > 1 else float("nan")
        verdict = "beats" if diff > 0 else "does not beat"
        clear = "clearly" if abs(diff) > 2 * se else "within two standard errors"
        lines.append(f"the limit with a inferred (full noise) {verdict} {what}: {lpd[demo.inferred]:.2f} vs "
                     f"{lpd[other]:.2f}, difference {diff:+.2f} ± {se:.2f} nats over {n} held-out men ({clear})")
    return lines


def loo_verdicts(demo: InferenceDemo) -> list[str]:
    r"""The same comparisons as :func:`heldout_verdicts` by cross-validation on the training men
    (``demo.comparison``'s LOO or K-fold): the difference in elpd with its paired standard error
    :math:`\sqrt{P}\,\mathrm{sd}_i(\mathrm{elpd}_i - \mathrm{elpd}'_i)`, and whether the held-out
    density agrees on the sign."""
    cv = demo.comparison.cross_validation
    lpd = demo.comparison.table["heldout_lpd"]
    what = "K-fold" if "elpd_kfold" in demo.comparison.table.columns else "LOO"
    lines = []
    for other, name in ((demo.baseline, "the NNGP"), (demo.wishart, "the Wishart baseline (one hidden layer)"),
                        (demo.scalar_noise, "the same model with scalar noise")):
        paired = np.asarray(cv[demo.inferred].elpd_i, np.float64) - np.asarray(cv[other].elpd_i, np.float64)
        diff, se = float(paired.sum()), float(np.sqrt(paired.size) * paired.std(ddof=1))
        verdict = "beats" if diff > 0 else "does not beat"
        clear = "clearly" if abs(diff) > 2 * se else "within two standard errors"
        agree = "agrees" if (diff > 0) == (lpd[demo.inferred] > lpd[other]) else "disagrees"
        lines.append(f"by {what}, the limit with a inferred (full noise) {verdict} {name}: difference {diff:+.2f} ± "
                     f"{se:.2f} nats over {paired.size} training men ({clear}); the held-out density {agree}")
    return lines


def refitted_summary(demo: InferenceDemo) -> list[str]:
    """Per model, the men (training rows) refitted without themselves, or why none were."""
    table = demo.comparison.table
    lines = []
    for name in table.index:
        refitted = table.loc[name, "refitted"]
        lines.append(f"{name}: {'refitted ' + refitted if refitted else 'none refitted (every Pareto k <= 0.7)'}")
    return lines


def _pairs(demo):
    D = demo.label_correlation.shape[0]
    pairs = [(d, e) for d in range(D) for e in range(d)]
    return pairs, [f"{demo.output_names[e]}-{demo.output_names[d]}" for d, e in pairs]


def correlation_table(demo: InferenceDemo):
    r"""``pandas.DataFrame``: per output pair, the labels' correlation, the least-squares
    :math:`\operatorname{corr}(\hat Q)` and each fit's posterior mean of
    :math:`\operatorname{corr}(Q)`."""
    import pandas as pd

    pairs, index = _pairs(demo)
    cols = {
        "labels (train)": [demo.label_correlation[d, e] for d, e in pairs],
        "least squares": [demo.least_squares_correlation[d, e] for d, e in pairs],
    }
    for name, c in demo.q_correlations.items():
        cols[name] = [c[d, e] for d, e in pairs]
    return pd.DataFrame(cols, index=index)
