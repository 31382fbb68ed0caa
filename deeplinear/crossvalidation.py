r"""Cross-validation by refitting: exact LOO, PSIS-LOO with refits where Pareto k is large, K-fold.

PSIS-LOO (:func:`deeplinear.loo`) reweights one posterior; where an input is influential its
Pareto :math:`\hat k` exceeds 0.7 and the estimate cannot be trusted. The remedy is to refit
without it. For a held-out set :math:`H` (one input for LOO, a fold for K-fold) and the training
rows :math:`T = \{1..P\} \setminus H`,

.. math::

    \mathrm{elpd}_i = \log \frac1S \sum_{s=1}^S p(y_i \mid Y_T, \theta_s^{(-H)}),
    \qquad \theta_s^{(-H)} \sim p(\theta \mid Y_T),

with :math:`\theta = (Q, \lambda_*, \Sigma_\varepsilon, \mu)`. The model does not factorize over
inputs (the outputs are matrix-normal with covariance :math:`\lambda_* Q \otimes K +
\Sigma_\varepsilon \otimes I`), so :math:`p(y_i \mid Y_T, \theta)` is the Gaussian conditional of
row :math:`i` given the training rows: the leave-one-input-out term of row :math:`i` in the data
restricted to :math:`T \cup \{i\}` (:func:`~deeplinear.likelihood.loo_log_likelihood`; for LOO that
is the full data).

The algorithms are arviz-stats' own (``arviz_stats.reloo``, ``arviz_stats.loo_kfold``); this module
is their :class:`RefitWrapper`. The data restricted to rows :math:`T` are set up from the full
data's eigenbasis, :math:`K_{TT} = U_T \operatorname{diag}(\kappa) U_T^\top`, as the linear kernel
of the features :math:`U_T \operatorname{diag}(\sqrt{R\kappa})` (``R`` columns), so a refit keeps the
rank ``R`` (unless it keeps fewer than ``R`` rows). The sampler sees only the data's ``R``-sized
summaries (:meth:`~deeplinear.RegressionData.for_sampling`), so every refit runs the original fit's
compiled sampler; only the per-row leave-one-out terms compile, once per training-set size.
The refit holding out rows :math:`H` uses ``jax.random.fold_in(key, min(H))``.

Refits run their chains vectorized (``chain_method="vectorized"``) when there are at least
``VECTORIZE_FROM_REFITS`` of them, unless ``refit_settings`` says otherwise: :func:`deeplinear.fit`'s
CPU default, sequential chains, compiles a smaller program, which pays off for a few fits, while
many refits run one program many times. Measured on Linnerud's full-noise limit model (15 refits,
2 chains of 500 + 500 steps, 2 CPU cores, programs compiled): 22.1 s sequential, 14.3 s vectorized
(the models of ``benchmarks/model_comparison.py``); the command-line demo, whose reloo refits one
or two men per model, took 76.6 s sequential and 90.2 s vectorized from a cold start.

The refits run side by side on threads of this process, one per usable core, unless an
``executor`` is given (:meth:`RefitWrapper.prefetch`). A refit leaves the process's warning filters
alone (:func:`deeplinear.inference.fit_quietly`: ``warnings.catch_warnings`` is not thread-safe);
its convergence message is collected and reported once for all refits.

Moment matching (``arviz_stats.loo_moment_match``), the cheap step before refits, was measured and
not adopted (``benchmarks/moment_matching.py``): on Linnerud it left the full-noise limit model's
Pareto k at 1.23 (199 unconstrained dimensions, 1,000 draws: the covariance it matches is poorly
estimated) and lowered the full-noise NNGP's from 1.00 to 0.63 (6 dimensions), moving its elpd
from -64.11 to -64.97 where refits give -65.5 to -65.7. Refits are exact and here take seconds.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from arviz_stats import SamplingWrapper

from deeplinear import inference
from deeplinear._types import ArrayLike, Executor, KeyLike
from deeplinear._validation import check_positive_int, check_progress_bar, describe
from deeplinear.inference import PosteriorFit, _validate_fit_args, fit_quietly
from deeplinear.likelihood import loo_log_likelihood_draws
from deeplinear.models import ModelSpec

if TYPE_CHECKING:
    import xarray as xr
    from arviz_stats.utils import ELPDData

__all__ = ["RefitWrapper", "exact_loo", "reloo", "kfold"]

DEFAULT_K_THRESHOLD = 0.7  # Pareto k above which a PSIS-LOO term is replaced by a refit
DEFAULT_FOLDS = 10
VECTORIZE_FROM_REFITS = 8  # refits from which vectorized chains repay their larger compile (module docstring)


def _check_refittable(result) -> None:
    if not isinstance(result, PosteriorFit):
        raise TypeError(f"fit must be a deeplinear PosteriorFit, got {describe(result)}")
    if not isinstance(result.spec, ModelSpec):
        raise ValueError("refit-based cross-validation needs a built-in model (ModelSpec); a fit of your own "
                         "NumPyro model (fit(model=...)) cannot be refitted on a subset here")
    result.data.require_rows("refit-based cross-validation")
    if result.data.kernel_kind == "learned":
        raise ValueError("refit-based cross-validation needs a fixed kernel; a learned kernel (learned_gram, "
                         "learned_features) depends on its hyperparameters, so refit it with your own model")


def restrict_rows(data, rows):
    r"""The data restricted to ``rows`` (increasing indices): the kernel :math:`K_{TT}` and the labels
    of those inputs, set up as the linear kernel of :math:`U_T \operatorname{diag}(\sqrt{R\kappa})`
    (module docstring), in the data's precision."""
    rows = np.asarray(rows)
    U = np.asarray(data.basis.eigenvectors, np.float64)[rows]
    kappa = np.asarray(data.basis.eigenvalues, np.float64)
    features = U * np.sqrt(kappa * kappa.size)[None, :]
    from deeplinear.data import RegressionData

    return RegressionData.linear(features, np.asarray(data.labels, np.float64)[rows], dtype=data.dtype)


def _default_settings(result, settings) -> dict:
    post = result.datatree["posterior"]
    out: dict = {"num_chains": int(post.sizes["chain"]), "num_samples": int(post.sizes["draw"])}
    stats = result.datatree["sample_stats"].attrs if "sample_stats" in result.datatree.children else {}
    out["num_warmup"] = int(stats.get("tuning_steps", out["num_samples"]))
    if "target_accept_prob" in stats:  # as the original fit ran, where it recorded them
        out["target_accept_prob"] = float(stats["target_accept_prob"])
    if "max_tree_depth" in stats:
        out["max_tree_depth"] = int(stats["max_tree_depth"])
    if settings is not None:
        if not isinstance(settings, dict):
            raise TypeError(f"refit_settings must be a dict of fit keywords, got {describe(settings)}")
        allowed = {"num_warmup", "num_samples", "num_chains", "target_accept_prob", "max_tree_depth", "chain_method"}
        unknown = set(settings) - allowed
        if unknown:
            raise ValueError(f"refit_settings: unknown keyword(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        out.update(settings)
    for name in ("num_warmup", "num_samples", "num_chains"):
        out[name] = check_positive_int(f"refit_settings[{name!r}]", out[name], minimum=1 if name != "num_warmup" else 0)
    if "chain_method" not in out:  # until plan() counts the refits (module docstring)
        out["chain_method"] = "sequential"
    defaults = inspect.signature(inference.fit).parameters  # a fit saved before they were recorded: fit's defaults
    for name in ("target_accept_prob", "max_tree_depth"):
        out.setdefault(name, defaults[name].default)
    out["progress_bar"] = False
    out["log_likelihood"] = False  # the refit's own PSIS terms are not used
    try:  # before any refit, where a refit in a worker would only fail
        _validate_fit_args(**out)
    except (TypeError, ValueError) as err:
        raise type(err)(f"refit_settings: {err}") from None
    return out


def _conditional_terms(refit: PosteriorFit, data, train, held) -> np.ndarray:
    """``(S, len(held))``: :math:`\\log p(y_i \\mid Y_T, \\theta_s)` for the refit's draws (module docstring)."""
    dtype = data.dtype
    q = np.asarray(refit.draws("Q"), dtype)
    lam = np.asarray(refit.draws("lambda_star"), dtype)
    kw = refit._draw_keywords(dtype)  # the draws' noise and intercepts, once for every held-out row
    noise = kw.pop("noise_variance")
    out = []
    for i in held:
        rows = np.sort(np.append(train, i))
        sub = data if rows.size == data.num_obs else restrict_rows(data, rows)
        terms = np.asarray(loo_log_likelihood_draws(q, lam, noise, sub, **kw), np.float64)
        out.append(terms[:, int(np.searchsorted(rows, i))])
    ll = np.stack(out, axis=1)
    if not np.all(np.isfinite(ll)):
        raise FloatingPointError("the held-out log-likelihood terms of a refit are not finite in this precision; "
                                 "rescale the inputs and labels, or use float64 (jax_enable_x64)")
    return ll


class RefitWrapper(SamplingWrapper):
    r"""An ``arviz_stats.SamplingWrapper`` that refits ``result``'s model on subsets of its inputs.

    ``sel_observations(idx)`` gives the training rows (all but ``idx``) and ``idx``; ``sample``
    refits with :func:`deeplinear.fit` (the same model; ``refit_settings``, keywords of ``fit``:
    by default the original fit's chains, draws, warm-up steps, ``target_accept_prob`` and
    ``max_tree_depth``, as it recorded them in ``sample_stats``' attributes (a fit saved before
    they were recorded: as many warm-up steps as draws and ``fit``'s defaults), chains vectorized
    when :meth:`plan` finds many refits);
    ``log_likelihood__i`` gives :math:`\log p(y_i \mid Y_T, \theta_s)` for the held-out rows
    (module docstring) as a ``(chain, draw, obs)`` DataArray. Pass it to ``arviz_stats.reloo`` or
    ``arviz_stats.loo_kfold``, as :func:`reloo`, :func:`exact_loo` and :func:`kfold` do. With
    ``progress_bar``, :meth:`prefetch` shows a bar over the refits it plans, counting each as it
    finishes (:meth:`close_progress` closes it).

    Attributes
    ----------
    refitted : list[tuple[int, ...]]
        The held-out rows of each refit, in order. The refit holding out rows :math:`H` uses
        ``jax.random.fold_in(key, min(H))``, so a row's refit is the same in :func:`reloo` and
        :func:`exact_loo`.
    convergence_warnings : list[tuple[tuple[int, ...], str]]
        The refits' convergence warnings, reported together by :meth:`report_convergence`.
    """

    def __init__(self, result: PosteriorFit, *, key: KeyLike = 0, refit_settings: dict | None = None,
                 progress_bar: bool = False) -> None:
        from deeplinear._validation import check_bool, raw_key

        _check_refittable(result)
        super().__init__(result, idata_orig=result.datatree)
        self.settings = _default_settings(result, refit_settings)
        self._chain_method_given = refit_settings is not None and "chain_method" in refit_settings
        self._base_key = raw_key(key)
        self.refitted: list[tuple[int, ...]] = []
        self.convergence_warnings: list[tuple[tuple[int, ...], str]] = []
        self._recording: list | None = None  # a dry run (prefetch) records here and fits nothing
        self._prefetched: dict = {}  # held-out rows -> (DataTree, convergence messages)
        self._show_progress = check_bool("progress_bar", progress_bar)
        self._bar: Any = None  # a tqdm bar over the planned refits, while they run

    def sel_observations(self, idx: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        data = self.model.data
        held = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        if held.size == 0 or held.min() < 0 or held.max() >= data.num_obs:
            raise ValueError(f"held-out rows must be in [0, {data.num_obs}), got {held.tolist()}")
        return np.setdiff1d(np.arange(data.num_obs), held), held

    def sample(self, modified_observed_data: ArrayLike) -> tuple[np.ndarray, PosteriorFit | None]:
        train = np.asarray(modified_observed_data)
        held = tuple(int(i) for i in np.setdiff1d(np.arange(self.model.data.num_obs), train))
        if self._recording is not None:  # a dry run: only which refits the algorithm asks for
            self._recording.append(held)
            return train, None
        if held not in self._prefetched:  # not refitted by prefetch: here, in this thread, by the same task
            from deeplinear._executor import InProcessExecutor

            self._run_refits([held], InProcessExecutor())
        tree, message = self._prefetched.pop(held)
        refit = PosteriorFit(tree, self.model.spec, restrict_rows(self.model.data, train))
        if message is not None:  # convergence is summarized once, by report_convergence
            self.convergence_warnings.append((held, message))
        self.refitted.append(held)
        return train, refit

    def plan(self, run: Callable[[RefitWrapper], Any]) -> list[tuple[int, ...]]:
        """The held-out rows of the refits that ``run(self)`` (a call of ``arviz_stats.reloo`` or
        ``loo_kfold`` on this wrapper) will ask for, found by a dry run of ``run`` that fits nothing.
        Unless ``refit_settings`` chose a ``chain_method``, the chains run vectorized when there are
        at least ``VECTORIZE_FROM_REFITS`` refits and more than one chain (module docstring)."""
        self._recording = []
        try:
            run(self)
        finally:
            wanted, self._recording = self._recording, None
        if not self._chain_method_given:
            many = len(wanted) >= VECTORIZE_FROM_REFITS and self.settings["num_chains"] > 1
            self.settings["chain_method"] = "vectorized" if many else "sequential"
        return wanted

    def prefetch(self, run: Callable[[RefitWrapper], Any], executor: Executor | None = None) -> None:
        """Run the refits that ``run(self)`` will ask for (:meth:`plan`) on ``executor``, all submitted
        at once (:func:`deeplinear._executor.run_with_retry`: one retry each; a broken pool replaced);
        ``sample`` then takes each refit from here.

        ``executor=None``: threads of this process, one per usable core (at most one per refit;
        none when that is one). JAX runs compiled programs outside the interpreter lock, so the
        refits run side by side, and they share this process's compiled programs: the first refit of
        each training-set size runs (and compiles) before the others start. Measured on Linnerud's
        full-noise limit model (the models of ``benchmarks/model_comparison.py``; 15 refits, 2 CPU
        cores, programs compiled): 27.9 s one after another, 14.7 s on two threads, the same numbers."""
        import concurrent.futures

        from deeplinear._executor import check_executor

        wanted = self.plan(run)
        if self._show_progress and wanted and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(wanted), desc=f"refits ({len(wanted)})", unit="refit")
        if executor is not None:
            self._run_refits(wanted, check_executor(executor))
            return
        threads = min(_usable_cores(), len(wanted))
        if threads < 2:
            return  # sample() refits in this thread
        sizes: dict[int, tuple] = {}
        for held in wanted:  # the first refit of each training-set size compiles its programs
            sizes.setdefault(len(held), held)
        with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="deeplinear-refit") as pool:
            self._run_refits(list(sizes.values()), pool)
            self._run_refits([held for held in wanted if held not in self._prefetched], pool)

    def _run_refits(self, wanted, executor) -> None:
        import jax

        from deeplinear._executor import run_with_retry

        data, spec_json = self.model.data, self.model.spec.to_json()
        x64 = bool(jax.config.jax_enable_x64)

        def submit(pool, j):
            held = wanted[j]
            train = np.setdiff1d(np.arange(data.num_obs), held)
            host = jax.tree_util.tree_map(np.asarray, restrict_rows(data, train))
            key = np.asarray(jax.random.fold_in(self._base_key, held[0]))
            return pool.submit(_refit_task, spec_json, host, key, self.settings, x64)

        def record(j, outcome):
            self._prefetched[wanted[j]] = outcome
            if self._bar is not None:
                self._bar.update(1)

        _, failures = run_with_retry(executor, list(range(len(wanted))), submit, record)
        if failures:
            j, (first, second) = next(iter(failures.items()))
            raise RuntimeError(f"{len(failures)} refit(s) failed twice on the executor; the first, holding out rows "
                               f"{list(wanted[j])}: {type(second).__name__}: {second}") from second

    def close_progress(self) -> None:
        """Close the refits' progress bar (if any): after the cross-validation that ``prefetch`` planned."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def report_convergence(self, stacklevel: int = 3) -> None:
        """One :class:`~deeplinear.ConvergenceWarning` for all refits that warned, naming them."""
        import warnings

        from deeplinear.inference import ConvergenceWarning

        if self.convergence_warnings:
            first_held, first = self.convergence_warnings[0]
            warnings.warn(f"{len(self.convergence_warnings)} of {len(self.refitted)} refits warned about convergence "
                          f"(refit_settings: more draws or warm-up); the first, holding out rows {list(first_held)}: "
                          f"{first}", ConvergenceWarning, stacklevel=stacklevel)

    def get_inference_data(self, fitted_model: tuple[np.ndarray, PosteriorFit | None]
                           ) -> tuple[np.ndarray, PosteriorFit | None]:
        return fitted_model

    def log_likelihood__i(self, excluded_obs: ArrayLike, idata__i: tuple[np.ndarray, PosteriorFit | None]
                          ) -> xr.DataArray:
        import xarray as xr

        train, refit = idata__i
        held = np.atleast_1d(np.asarray(excluded_obs))
        if refit is None:  # a dry run: any finite numbers of the right shape
            chains, draws = self.settings["num_chains"], self.settings["num_samples"]
            return xr.DataArray(np.zeros((chains, draws, held.size)), dims=("chain", "draw", "obs"),
                                coords={"obs": held})
        ll = _conditional_terms(refit, self.model.data, train, held)
        post = refit.datatree["posterior"]
        return xr.DataArray(ll.reshape(post.sizes["chain"], post.sizes["draw"], held.size),
                            dims=("chain", "draw", "obs"), coords={"obs": held})


def _refit_task(spec_json, host_data, key_data, settings, x64):
    """One refit in a worker process or thread: ``(DataTree, convergence message or None)``."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(x64):  # a thread-local setting: the caller's precision
        data = jax.tree_util.tree_map(jnp.asarray, host_data)
        result, message = fit_quietly(data, ModelSpec.from_json(spec_json), key=jnp.asarray(key_data, jnp.uint32),
                                      **settings)
        return result.datatree, message


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_threshold(k_threshold) -> float:
    if isinstance(k_threshold, bool) or not isinstance(k_threshold, (int, float, np.integer, np.floating)) or \
            np.isnan(k_threshold) or k_threshold == np.inf:
        raise TypeError(f"k_threshold must be a real number (or -inf: refit every input), got {describe(k_threshold)}")
    return float(k_threshold)


def reloo(result: PosteriorFit, *, k_threshold: float = DEFAULT_K_THRESHOLD, key: KeyLike = 0,
          refit_settings: dict | None = None, executor: Executor | None = None,
          progress_bar: bool | None = None) -> ELPDData:
    r"""PSIS-LOO whose terms with Pareto :math:`\hat k >` ``k_threshold`` are replaced by exact ones from
    refits without that input (``arviz_stats.reloo`` with :class:`RefitWrapper`; module docstring).

    Returns ``arviz_stats``' ``ELPDDataLOO`` (pointwise), which ``arviz_stats.compare`` ranks; its
    ``refitted`` attribute lists the refitted inputs (their Pareto k is set to 0). ``key`` seeds the
    refits; ``refit_settings`` as in :class:`RefitWrapper`. ``executor`` (a
    ``concurrent.futures.Executor``: a process pool, a Dask client's ``get_executor()``) runs the
    refits, all submitted at once; default: threads of this process, one per core
    (:meth:`RefitWrapper.prefetch`). ``progress_bar``: a bar over the refits (default: when
    interactive).
    """
    return _reloo(result, _check_threshold(k_threshold), key, refit_settings, executor, progress_bar, stacklevel=4)


def _reloo(result, k_threshold: float, key, refit_settings, executor, progress_bar, stacklevel: int):
    import arviz_stats

    from deeplinear.loo import loo

    wrapper = RefitWrapper(result, key=key, refit_settings=refit_settings,
                           progress_bar=check_progress_bar(progress_bar))
    psis = loo(result)
    if psis.elpd_i is None or psis.pareto_k is None:
        raise ValueError("reloo needs the pointwise PSIS-LOO of the fit: fit(..., log_likelihood=True) on data that "
                         "keep their rows")

    def run(w):
        return arviz_stats.reloo(w, loo_orig=psis, k_threshold=k_threshold, pointwise=True)

    try:
        wrapper.prefetch(run, executor)
        out = run(wrapper)
    finally:
        wrapper.close_progress()
    wrapper.report_convergence(stacklevel)
    out.refitted = [held[0] for held in wrapper.refitted]
    return out


def exact_loo(result: PosteriorFit, *, key: KeyLike = 0, refit_settings: dict | None = None,
              executor: Executor | None = None, progress_bar: bool | None = None) -> ELPDData:
    r"""Exact LOO: one refit without each input (:func:`reloo` with every input refitted), ``P`` refits
    of ``P - 1`` rows, which share one compiled program set."""
    return _reloo(result, -np.inf, key, refit_settings, executor, progress_bar, stacklevel=4)


def kfold(result: PosteriorFit, *, folds: int = DEFAULT_FOLDS, seed: int = 0, key: KeyLike = 0,
          refit_settings: dict | None = None, executor: Executor | None = None,
          progress_bar: bool | None = None) -> ELPDData:
    r"""K-fold cross-validation: the inputs split at random (``seed``) into ``folds`` groups of nearly
    equal size; each group is held out in turn and predicted from a refit on the rest
    (``arviz_stats.loo_kfold`` with :class:`RefitWrapper`; module docstring). The folds have at most
    two sizes, so the refits compile at most two sets of per-row programs. Returns ``ELPDDataLOOKFold``
    (pointwise), with ``refitted`` listing each fold's inputs. ``executor`` and ``progress_bar`` as in
    :func:`reloo`.
    """
    import arviz_stats

    wrapper = RefitWrapper(result, key=key, refit_settings=refit_settings,
                           progress_bar=check_progress_bar(progress_bar))
    P = result.data.num_obs
    folds = check_positive_int("folds", folds, minimum=2, maximum=P)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")

    def run(w):
        return arviz_stats.loo_kfold(result.datatree, w, pointwise=True, k=folds, seed=int(seed))

    try:
        wrapper.prefetch(run, executor)
        out = run(wrapper)
    finally:
        wrapper.close_progress()
    wrapper.report_convergence()
    out.refitted = list(wrapper.refitted)
    return out


def check_arguments(method: str, fits, k_threshold, folds, refit_settings, key, executor=None,
                    progress_bar=None) -> None:
    """The checks of :func:`reloo` (``method`` ``"reloo"``, ``"exact"``) or :func:`kfold` (``"kfold"``)
    for several fits at once, before any refit (:func:`deeplinear.compare_models`)."""
    from deeplinear._validation import raw_key

    fits = list(fits)
    for result in fits:
        _check_refittable(result)
        _default_settings(result, refit_settings)
    if method == "reloo":
        _check_threshold(k_threshold)
    if method == "kfold":
        check_positive_int("folds", folds, minimum=2, maximum=min(f.data.num_obs for f in fits))
    raw_key(key)
    check_progress_bar(progress_bar)
    if executor is not None:
        from deeplinear._executor import check_executor

        check_executor(executor)
