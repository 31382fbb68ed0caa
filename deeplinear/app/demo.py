r"""The inference story on built-in data, shared by the command line (default run, ``infer``).

Data: the Linnerud exercise/physiology data (:func:`deeplinear.datasets.linnerud`; 3
correlated outputs Weight, Waist, Pulse; 15 training and 5 held-out men), inputs and
labels standardized with the training rows' mean and standard deviation. Posteriors of
the proportional limit at fixed ratios ``a``, with ``a ~ LogNormal(0, 1)`` inferred, and
of the NNGP (``Q = I``), all with the noise variance inferred (``HalfNormal(1)`` prior);
then :func:`~deeplinear.comparison.compare_models` on the held-out men: LOO, held-out log
predictive density and predictive cross-output correlations, which the NNGP cannot
express (theory.md §4). The two questions the demo answers:

* does :math:`E[\operatorname{corr}(Q) \mid Y]` of the limit follow the data's output
  correlations? (:attr:`InferenceDemo.q_correlations` against
  :attr:`InferenceDemo.label_correlation`, and against the least-squares estimate of ``Q``:
  the model is :math:`Y = BX/\sqrt{N_0} + \text{noise}` with the rows of :math:`B`
  covarying as :math:`\lambda_* Q` and noise iid across outputs, so the labels' correlation
  mixes the signal's correlation with the residuals'; :math:`\hat B^\top = X^+ Y` gives
  :math:`\hat Q \propto \hat B \hat B^\top`, the correlation ``Q`` actually models);
* does the limit beat the NNGP on the held-out log density
  (``comparison.table["heldout_lpd"]``, reported in the data's units)?
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import numpyro.distributions as dist

from deeplinear.app.tables import Standardizer
from deeplinear.comparison import ModelComparison, compare_models
from deeplinear.data import RegressionData
from deeplinear.datasets import LINNERUD_OUTPUTS, Dataset, linnerud
from deeplinear.inference import ConvergenceWarning, fit
from deeplinear.predictive import correlation_matrix
from deeplinear.priors import NNGPPrior, ProportionalLimitPrior

__all__ = ["InferenceDemo", "correlation_table", "inference_demo"]

DEMO_RATIOS = (0.5, 2.0)
DEMO_STEPS = 32
INFERRED = "limit a~LogNormal"  # name of the fit with the ratio inferred
BASELINE = "NNGP"


class InferenceDemo(NamedTuple):
    r"""What :func:`inference_demo` returns.

    ``label_correlation`` is the training labels' ``D x D`` correlation matrix;
    ``least_squares_correlation`` the correlation of :math:`\hat B \hat B^\top`,
    :math:`\hat B^\top = \tilde X^+ \tilde Y` (standardized data; uncentered, as ``B`` has
    prior mean 0);
    ``q_correlations[name]`` the posterior mean of :math:`\operatorname{corr}(Q)_{de} =
    Q_{de}/\sqrt{Q_{dd} Q_{ee}}` per fit; ``comparison.table["heldout_lpd"]`` is
    :math:`\log p(Y_* \mid Y)` of the held-out labels in the data's original units; ``inferred``
    is the name of the fit with the ratio ``a`` inferred, ``baseline`` that of the NNGP.
    """

    dataset: Dataset
    output_names: tuple
    fits: dict
    comparison: ModelComparison
    label_correlation: np.ndarray
    least_squares_correlation: np.ndarray
    q_correlations: dict
    inferred: str = INFERRED
    baseline: str = BASELINE


def inference_demo(
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    key=0,
    progress_bar: bool | None = None,
    dataset: Dataset | None = None,
    output_names=None,
) -> InferenceDemo:
    r"""Fit the limit at ``a = 0.5, 2`` and with ``a ~ LogNormal(0, 1)``, and the NNGP; compare.

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
    """
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
              num_chains=num_chains, key=key, progress_bar=progress_bar, output_names=list(names))
    fits = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for a in DEMO_RATIOS:
            fits[f"limit a={a:g}"] = fit(data, ProportionalLimitPrior(a, D, DEMO_STEPS), **kw)
        fits[INFERRED] = fit(data, ProportionalLimitPrior(1.0, D, DEMO_STEPS), ratio=dist.LogNormal(0.0, 1.0), **kw)
        fits[BASELINE] = fit(data, NNGPPrior(D), **kw)
    for w in caught:  # surface convergence problems, drop library noise
        if isinstance(w.message, ConvergenceWarning):
            warnings.warn(w.message, stacklevel=2)
    comparison = compare_models(fits, sx.transform(ds.X_test), sy.transform(ds.Y_test))
    comparison.table["heldout_lpd"] -= ds.Y_test.shape[0] * np.sum(np.log(sy.scale))
    b_hat = (np.linalg.pinv(data_x) @ data_y).T  # (D, N0): Y = X B^T / sqrt(N0) + noise
    least_squares = correlation_matrix(b_hat @ b_hat.T)
    label_corr = np.corrcoef(ds.Y_train, rowvar=False)
    return InferenceDemo(ds, names, fits, comparison, label_corr, least_squares, comparison.q_correlation)


def correlation_table(demo: InferenceDemo):
    r"""``pandas.DataFrame``: per output pair, the labels' correlation, the least-squares
    :math:`\operatorname{corr}(\hat Q)` and each fit's posterior mean of
    :math:`\operatorname{corr}(Q)`."""
    import pandas as pd

    D = demo.label_correlation.shape[0]
    pairs = [(d, e) for d in range(D) for e in range(d)]
    index = [f"{demo.output_names[e]}-{demo.output_names[d]}" for d, e in pairs]
    cols = {
        "labels (train)": [demo.label_correlation[d, e] for d, e in pairs],
        "least squares": [demo.least_squares_correlation[d, e] for d, e in pairs],
    }
    for name, c in demo.q_correlations.items():
        cols[name] = [c[d, e] for d, e in pairs]
    return pd.DataFrame(cols, index=index)
