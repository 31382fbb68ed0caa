r"""Comparing a deep linear posterior with the NNGP baseline (theory.md §4, §6).

Under the NNGP (``Q = I``) outputs are independent and the predictive covariance does
not depend on the labels; under a finite-width or proportional-limit prior
:math:`E[Q \mid Y]` follows the labels' output correlations. :func:`compare_models` puts
the models side by side:

* PSIS-LOO from the exact pointwise leave-one-input-out terms
  (:func:`~deeplinear.likelihood.loo_log_likelihood`), subsampled beyond a memory budget
  (:func:`~deeplinear.loo.loo`); or, where PSIS cannot be trusted (Pareto :math:`\hat k > 0.7`),
  cross-validation by refitting (:mod:`deeplinear.crossvalidation`: PSIS with refits of the
  high-:math:`\hat k` inputs, exact LOO, K-fold); ranked by ``arviz.compare``;
* the held-out log predictive density of test labels,
  :math:`\sum_j \log \frac1S \sum_s N(y_{*j}; m_{*j}(Q_s), \Sigma_{*jj}(Q_s) + \sigma_s^2 I)`;
* predictive means, variances and cross-output correlations at the test inputs.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from deeplinear._types import ArrayLike, Executor, KeyLike, RowSource
from deeplinear._validation import check_bool, check_choice, check_positive_int, check_progress_bar
from deeplinear.inference import PosteriorFit
from deeplinear.loo import loo as psis_loo
from deeplinear.predictive import correlation_matrix

if TYPE_CHECKING:  # pandas loads on first use, not on import
    import pandas as pd

__all__ = ["compare_models", "ModelComparison"]


class ModelComparison(NamedTuple):
    r"""Result of :func:`compare_models`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per model: ``elpd_loo``, ``elpd_loo_se`` (``elpd_kfold``, ``elpd_kfold_se`` for
        ``loo="kfold"``), ``max_pareto_k`` (PSIS reliability over the terms still from PSIS: above
        0.7 the LOO estimate for some input is unreliable; 0 once every such input is refitted),
        ``refitted`` (the inputs, or folds, refitted; ``loo="psis"``: none), ``heldout_lpd`` (if test labels
        were given) with ``heldout_lpd_se`` (:math:`\sqrt{P_*}` times the standard deviation of its
        per-input terms, as for ``elpd_loo_se``; for the difference of two models use the paired
        terms, ``predictive[name].log_predictive_density(Y_test, pointwise=True)``), mean predictive variance
        and mean/max absolute cross-output correlation
        at the test inputs, and the mean absolute off-diagonal entry of the posterior mean of
        ``corr(Q)`` (absolute values, so correlations of opposite signs do not cancel; the
        entries with their signs are in ``q_correlation``).
    loo : pandas.DataFrame
        ``arviz.compare`` on the LOO (or K-fold) estimates (ranked, with weights).
    predictive : dict[str, deeplinear.predictive.PredictiveMixture]
    q_correlation : dict[str, numpy.ndarray]
        Posterior mean of :math:`\operatorname{corr}(Q)` (``D x D``) per model.
    cross_validation : dict[str, arviz_stats ELPDData]
        Each model's LOO or K-fold estimate, pointwise (``elpd_i``, ``pareto_k``).
    """

    table: pd.DataFrame
    loo: pd.DataFrame
    predictive: dict
    q_correlation: dict
    cross_validation: dict


LOO_METHODS = ("psis", "reloo", "exact", "kfold")


def compare_models(fits: dict[str, PosteriorFit], X_test: ArrayLike | None = None, Y_test: ArrayLike | None = None, *,
                   cross_gram: ArrayLike | None = None, test_gram: ArrayLike | None = None,
                   rows: RowSource | None = None, loo_seed: int = 0, loo: str = "psis", k_threshold: float = 0.7,
                   folds: int = 10, key: KeyLike = 0, refit_settings: dict | None = None,
                   executor: Executor | None = None, evidence: bool = False,
                   evidence_particles: int = 1024, progress_bar: bool | None = None) -> ModelComparison:
    r"""Compare fitted models (e.g. ``{"limit a=1": fit1, "NNGP": fit0}``) on the same data.

    Parameters
    ----------
    fits : dict[str, PosteriorFit]
    X_test : array ``(P*, N0)``, optional
        Test inputs, one per row (linear kernel); or ``cross_gram``/``test_gram`` for a user kernel.
    Y_test : array ``(P*, D)``, optional
        Held-out labels for the log predictive density.
    rows, loo_seed
        Passed to :func:`~deeplinear.loo.loo` (``rows``: the training rows again, for data set up by
        streaming; ``loo_seed``: the subsample, the same for every fit, when LOO is subsampled; for
        ``loo="kfold"``, the seed of the split, the same folds for every fit).
    loo : {"psis", "reloo", "exact", "kfold"}, default "psis"
        ``"psis"``: PSIS-LOO from the fit alone. ``"reloo"``: PSIS-LOO with every input whose
        Pareto :math:`\hat k` exceeds ``k_threshold`` refitted without it
        (:func:`deeplinear.crossvalidation.reloo`). ``"exact"``: one refit per input. ``"kfold"``:
        ``folds``-fold cross-validation. The refits run the fit's compiled sampler (the per-row terms:
        one program set per training-set size).
    k_threshold : float, default 0.7
    folds : int, default 10
    key, refit_settings
        The refits' seed (the refit holding out inputs ``H`` uses ``fold_in(key, min(H))``) and
        sampler settings (:class:`deeplinear.crossvalidation.RefitWrapper`); ``key`` also seeds the
        evidence estimates.
    executor : concurrent.futures.Executor, optional
        Where the refits run (a process pool, a Dask client's ``get_executor()``), each model's
        submitted at once; default: threads of this process, one per core
        (:meth:`deeplinear.crossvalidation.RefitWrapper.prefetch`).
    progress_bar : bool, optional
        A bar over each model's refits (``loo`` other than ``"psis"``) and over the held-out
        density at scale; default: when interactive.
    evidence : bool, default False
        Also estimate each model's log evidence :math:`\log p(Y \mid \mathcal M)`
        (:func:`deeplinear.evidence.log_evidence`, ``evidence_particles`` particles, annealed
        importance sampling; exact for a fixed NNGP): columns ``log_evidence``, ``log_evidence_se``
        and the log Bayes factor against the first model, ``log_bayes_factor`` with
        ``log_bayes_factor_se`` (the two standard errors in quadrature; the estimates are
        independent). The estimates' own warnings (a capped schedule, a low ESS) pass through.
        NaN, with the reason in ``evidence_note``, for a model of your own (``fit(model=...)``).
    """
    import arviz_stats
    import pandas as pd

    if not isinstance(fits, dict) or not fits:
        raise TypeError("fits must be a non-empty dict {name: PosteriorFit}")
    for name, f in fits.items():
        if not isinstance(f, PosteriorFit):
            raise TypeError(f"fits[{name!r}] must be a PosteriorFit, got {type(f).__name__}")
    shapes = {(f.data.num_obs, f.data.num_outputs) for f in fits.values()}
    if len(shapes) > 1:
        raise ValueError(f"all fits must be on the same data; got (P, D) = {sorted(shapes)}")
    _check_same_data(fits)
    has_test = X_test is not None or cross_gram is not None
    if Y_test is not None and not has_test:
        raise ValueError("Y_test needs test inputs (X_test, or cross_gram and test_gram)")

    loo = check_choice("loo", loo, LOO_METHODS)
    evidence = check_bool("evidence", evidence)
    evidence_particles = check_positive_int("evidence_particles", evidence_particles, minimum=2)
    progress_bar = check_progress_bar(progress_bar)
    if loo != "psis":
        from deeplinear import crossvalidation

        crossvalidation.check_arguments(loo, fits.values(), k_threshold, folds, refit_settings, key, executor,
                                        progress_bar)
    with warnings.catch_warnings():  # high Pareto k is reported in the table instead
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        if loo == "psis":
            loos = {name: psis_loo(f, rows=rows, seed=loo_seed) for name, f in fits.items()}
        elif loo == "kfold":
            loos = {name: crossvalidation.kfold(f, folds=folds, seed=loo_seed, key=key, refit_settings=refit_settings,
                                                executor=executor, progress_bar=progress_bar)
                    for name, f in fits.items()}
        else:
            threshold = -np.inf if loo == "exact" else k_threshold
            loos = {name: crossvalidation.reloo(f, k_threshold=threshold, key=key, refit_settings=refit_settings,
                                                executor=executor, progress_bar=progress_bar)
                    for name, f in fits.items()}
    prefix = "elpd_kfold" if loo == "kfold" else "elpd_loo"
    table_rows, predictive, q_correlation = [], {}, {}
    D = next(iter(fits.values())).data.num_outputs
    for name, f in fits.items():
        qcorr = q_correlation[name] = correlation_matrix(f.draws("Q")).mean(0)
        row = {
            "model": name,
            prefix: loos[name].elpd,
            f"{prefix}_se": loos[name].se,
            "max_pareto_k": float(np.max(loos[name].pareto_k)) if getattr(loos[name], "pareto_k", None) is not None
            else np.nan,
            "refitted": _refitted_text(getattr(loos[name], "refitted", [])),
            "mean_abs_Q_offdiag_corr": float(np.abs(_offdiag(qcorr)).mean()) if D > 1 else 0.0,
        }
        if has_test:
            pm = f.predict(X_test, cross_gram=cross_gram, test_gram=test_gram)
            predictive[name] = pm
            cov = np.asarray(pm.covariance())
            corr = np.asarray(pm.correlation())
            row["mean_pred_var"] = float(np.mean(np.einsum("jdd->jd", cov)))
            off = _offdiag(corr)
            row["mean_abs_pred_corr"] = float(np.abs(off).mean()) if off.size else 0.0
            row["max_abs_pred_corr"] = float(np.abs(off).max()) if off.size else 0.0
            if Y_test is not None:
                terms = np.asarray(pm.log_predictive_density(Y_test, pointwise=True, progress_bar=progress_bar),
                                   np.float64)
                row["heldout_lpd"] = float(terms.sum())
                row["heldout_lpd_se"] = float(np.sqrt(terms.size) * terms.std(ddof=1)) if terms.size > 1 else np.nan
        table_rows.append(row)
    table = pd.DataFrame(table_rows).set_index("model")
    if evidence:
        _add_evidence(table, fits, evidence_particles, key)
    ranked = arviz_stats.compare(loos, round_to="none") if len(loos) > 1 else None
    return ModelComparison(table, ranked, predictive, q_correlation, loos)


def _add_evidence(table, fits: dict, num_particles: int, key) -> None:
    """The evidence columns of :func:`compare_models` (its docstring)."""
    from deeplinear.evidence import log_evidence
    from deeplinear.models import ModelSpec

    values, errors, notes = [], [], []
    for f in fits.values():
        if isinstance(f.spec, ModelSpec):
            estimate = log_evidence(f.data, f.spec, num_particles=num_particles, key=key)
            values.append(float(estimate.log_evidence))
            errors.append(float(estimate.standard_error))
            notes.append(estimate.method)
        else:
            values.append(np.nan)
            errors.append(np.nan)
            notes.append("not estimated: a model of your own (fit(model=...)) has no ModelSpec to anneal")
    value, error = np.asarray(values), np.asarray(errors)
    table["log_evidence"] = value
    table["log_evidence_se"] = error
    table["log_bayes_factor"] = value - value[0]
    table["log_bayes_factor_se"] = np.sqrt(error**2 + error[0] ** 2)
    table.iloc[0, table.columns.get_loc("log_bayes_factor_se")] = 0.0  # the first model against itself
    table["evidence_note"] = notes


def _refitted_text(refitted) -> str:
    """The refitted inputs (``"3, 7"``) or folds (``"4 folds"``); ``""`` for none."""
    if refitted and isinstance(refitted[0], tuple):
        return f"{len(refitted)} folds"
    return ", ".join(str(i) for i in refitted)


def _offdiag(mats):
    D = mats.shape[-1]
    r, c = np.tril_indices(D, k=-1)
    return mats[..., r, c]


def _check_same_data(fits: dict) -> None:
    """Every fit was made on the same data: same kernel kind, labels and kernel eigenvalues (to
    the rounding of the coarser precision) -- LOO and held-out densities of different data sets
    cannot be compared."""
    (first_name, first), *rest = fits.items()
    for name, f in rest:
        a, b = first.data, f.data
        rtol = 10 * max(np.finfo(a.dtype).eps, np.finfo(b.dtype).eps) ** 0.5
        differs = None
        if a.kernel_kind != b.kernel_kind:
            differs = f"kernels ({a.kernel_kind} and {b.kernel_kind})"
        elif a.has_rows != b.has_rows:
            differs = "set-ups (one streamed, one in memory)"
        elif not (_close(a.labels, b.labels, rtol) if a.has_rows else
                  _close(a.rotated_labels, b.rotated_labels, rtol) and _close(a.null_scatter, b.null_scatter, rtol)):
            differs = "labels"
        elif a.basis.rank != b.basis.rank or not _close(a.basis.eigenvalues, b.basis.eigenvalues, rtol):
            differs = "kernels (their eigenvalues differ)"
        if differs:
            raise ValueError(
                f"all fits must be on the same data, but fits[{first_name!r}] and fits[{name!r}] have different "
                f"{differs}"
            )


def _close(x, y, rtol: float) -> bool:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0)), np.finfo(np.float64).tiny)
    return x.shape == y.shape and bool(np.all(np.abs(x - y) <= rtol * scale))
