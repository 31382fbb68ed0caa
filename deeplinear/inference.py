r"""Fitting: NUTS on the prior's latents, results as an ArviZ ``xarray.DataTree``.

:func:`fit` validates everything, runs NUTS on :func:`~deeplinear.models.deep_linear_model`
(NumPyro's NUTS kernel in the compiled driver of :mod:`deeplinear.sampler`, compiled once per
model structure -- the prior, the noise model, ``D``, the kernel's rank ``R`` and the precision,
not the number of rows: the sampler sees the data's rank-sized summaries,
:meth:`~deeplinear.RegressionData.for_sampling`; several chains in one program, a progress bar in
interactive use, a seed),
and returns a :class:`PosteriorFit` holding a DataTree with named
dims (``obs``, ``output``, ``output_bis``, ``layer``/``step``, ``offdiag``; observed ``Y`` is
``(obs, output)``), ``Q`` as a deterministic, ``sample_stats`` (``diverging``, ``energy``,
``lp``, ``acceptance_rate``, ``n_steps``, ``step_size``), and a
``log_likelihood`` group with the exact pointwise leave-one-input-out terms
:math:`\log p(y_i\mid Y_{-i}, \theta)` (``y_i`` the labels of input ``i``)
(:func:`~deeplinear.likelihood.loo_log_likelihood`), so ``az.loo``/``az.compare`` rank
models correctly for this non-factorized Gaussian model, and a ``posterior_predictive`` group
whose row ``i`` is drawn from :math:`p(y_i \mid Y_{-i}, \theta)` at each draw (``az.plot_ppc_dist``).

With the NNGP prior and fixed ``lambda_star``, ``noise_variance`` there is nothing to
sample: the posterior is exact (``Q = I``) and no MCMC runs. Its pointwise terms are then the
same in every draw, which ``az.loo`` cannot fit a Pareto tail to ("All tail values are the
same"): use :func:`deeplinear.loo` (uniform weights, ``k = 0``: the exact LOO) or
:func:`deeplinear.compare_models`, which take any fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as dist

from deeplinear._arrays import on_device
from deeplinear._devices import padded_blocks, spread
from deeplinear._linalg import batched_map, psd_root
from deeplinear._matmul import full_precision_jit
from deeplinear._precision import warn_if_spec_imprecise
from deeplinear._prefetch import prefetch
from deeplinear._types import ArrayLike, InterceptLike, KeyLike, NoiseCorrelationLike, NoiseVarianceLike, ScaleLike
from deeplinear._validation import (
    check_bool,
    check_output_names,
    check_positive_int,
    check_probability,
    interactive,
    raw_key,
)
from deeplinear.cache import reuse_traces
from deeplinear.custom import CustomModel, inspect_model, run_custom_nuts
from deeplinear.data import RegressionData
from deeplinear.likelihood import (
    KroneckerNormal,
    _loo_data_terms,
    _loo_terms_and_draw,
    loo_log_likelihood_draws,
)
from deeplinear.models import ModelSpec
from deeplinear.models import arviz_dims_and_coords as _dims_and_coords
from deeplinear.predictive import PredictiveMixture
from deeplinear.priors import NNGPPrior, VbarPrior
from deeplinear.sampler import CHAIN_METHODS, run_nuts

if TYPE_CHECKING:  # pandas and xarray load on first use, not on import
    import pandas as pd
    import xarray as xr

__all__ = ["fit", "PosteriorFit", "ConvergenceWarning", "Diagnostics"]

RHAT_THRESHOLD = 1.01
LOO_BUDGET_ENTRIES = 2**25  # S x P pointwise LOO terms stored at most (128 MiB in float32); deeplinear.loo subsamples
DEFAULT_GROUP_ENTRIES = 2**22  # S x P x D label draws a fit adds by default (16 MiB in float32 per group)
SYMMETRIC_VARIABLES = ("Q", "noise_covariance", "noise_correlation")  # shown once per entry by summary()
MAX_STORED_DRAWS = 10**8  # num_chains * num_samples above this cannot be stored; refuse up front


class ConvergenceWarning(UserWarning):
    """NUTS reported divergences or R-hat above 1.01: do not trust the posterior yet."""


class Diagnostics(NamedTuple):
    """Convergence summary of a fit (see :meth:`PosteriorFit.diagnostics`); ``num_draws`` is the
    number of posterior draws over all chains."""

    divergences: int
    num_draws: int
    max_rhat: float
    min_ess_bulk: float
    variables: tuple


class PosteriorFit:
    r"""The result of :func:`fit`.

    Attributes
    ----------
    datatree : xarray.DataTree
        ArviZ posterior (``posterior``, ``sample_stats``, ``observed_data``,
        ``log_likelihood``, ``posterior_predictive``: leave-one-input-out label draws); pass it to
        ``az.summary``, ``az.loo``, ``az.compare``, ``az.plot_ppc_dist``, plots (for the
        exact NNGP fit, whose draws are all equal, use :func:`deeplinear.loo` and
        :func:`deeplinear.compare_models` instead of ``az.loo``/``az.compare``; for LOO-PIT and
        power-scaling, :meth:`loo_pit_tree` and :meth:`power_scaling_tree`).
    spec : ModelSpec or CustomModel
        The model that was fitted (prior and hyperparameters), or for ``fit(data, model=...)`` a
        :class:`~deeplinear.custom.CustomModel` describing your model.
    data : RegressionData
        The training data.
    """

    def __init__(self, datatree: xr.DataTree, spec: ModelSpec | CustomModel, data: RegressionData) -> None:
        if not isinstance(spec, (ModelSpec, CustomModel)):
            raise TypeError(f"spec must be a deeplinear.ModelSpec (or a CustomModel), got {type(spec).__name__}")
        spec.check_data(data)
        self.datatree = datatree
        self.spec = spec
        self.data = data

    @property
    def prior(self) -> VbarPrior | None:
        r"""The prior over :math:`\bar V` (``spec.prior``)."""
        return self.spec.prior

    def draws(self, name: str) -> np.ndarray:
        """Posterior draws of a variable, chains flattened: shape ``(S, ...)``.

        ``lambda_star`` and ``noise_variance`` fall back to their fixed values."""
        post = self.datatree["posterior"].to_dataset()
        if name in post.data_vars:
            arr = post[name].values
            return arr.reshape((-1,) + arr.shape[2:])
        n = post.sizes["chain"] * post.sizes["draw"]
        if name == "noise_covariance" and self.spec.fixed_noise_covariance is not None:
            return np.broadcast_to(self.spec.fixed_noise_covariance, (n,) + (self.spec.num_outputs,) * 2).copy()
        fixed = getattr(self.spec, name, None) if name in ("lambda_star", "noise_variance", "intercept") else None
        if fixed is None or isinstance(fixed, dist.Distribution):
            raise KeyError(f"no posterior variable {name!r}; have {sorted(map(str, post.data_vars))}")
        fixed = np.asarray(fixed, np.float64)
        return np.broadcast_to(fixed, (n,) + fixed.shape).copy()

    def noise_draws(self) -> np.ndarray:
        r"""Per-draw output noise as the numerical routines take it: variances :math:`\sigma^2`
        ``(S,)`` for scalar noise, else covariances :math:`\Sigma_\varepsilon` ``(S, D, D)``."""
        if self.spec.noise_model == "scalar":
            return self.draws("noise_variance")
        return self.draws("noise_covariance")

    def add_predictive_groups(self, key: KeyLike = 0, *, prior_draws: int | None = None) -> PosteriorFit:
        r"""Replace the fit's ``posterior_predictive`` group (leave-one-input-out draws) with joint
        replicates and, with ``prior_draws``, add the ``prior`` and ``prior_predictive`` groups, in
        place (returns ``self``), for ``plot_ppc_dist`` and ``plot_prior_posterior``.

        * ``posterior_predictive``: one replicated data set per posterior draw, labels ``Y``
          ``(chain, draw, obs, output)``,
          :math:`Y^{\text{rep}} \sim N(1\mu^\top, \lambda_* Q\otimes K + \Sigma_\varepsilon\otimes I)`
          (:meth:`~deeplinear.likelihood.KroneckerNormal.sample`; ``S x P x D`` numbers, within
          ``LOO_BUDGET_ENTRIES``). For LOO-PIT use :meth:`loo_pit_tree`;
        * ``prior`` and ``prior_predictive``: ``prior_draws`` draws of every site of the model with
          the labels not observed (one chain).

        Needs the per-row data (not a streamed set-up). Same key, same draws."""
        import arviz_base
        from numpyro.infer import Predictive

        from deeplinear.sampler import model_of_arguments

        rng = raw_key(key)
        if prior_draws is not None:
            prior_draws = check_positive_int("prior_draws", prior_draws)
            if isinstance(self.spec, CustomModel):
                raise ValueError("prior_draws: the prior groups of your own model come from "
                                 "numpyro.infer.Predictive(model) with the labels unobserved")
        rep = self._replicates(rng, _replicate_labels, "add_predictive_groups (replicated labels)")
        groups = {"posterior_predictive": {"Y": rep}}
        if prior_draws is not None:
            draws = Predictive(model_of_arguments, num_samples=prior_draws)(
                jax.random.fold_in(rng, 1), self.spec.model_arguments(self.data), observed=False)
            draws = {k: np.asarray(v)[None] for k, v in draws.items()}
            groups["prior_predictive"] = {"Y": draws.pop("Y")}
            groups["prior"] = draws
        tree = arviz_base.from_dict(groups, **self._dims_and_coords())
        for name in groups:
            self.datatree[name] = tree[name]
        return self

    def loo_pit_tree(self, key: KeyLike = 0) -> xr.DataTree:
        r"""A DataTree for ``arviz_stats.loo_pit`` and ``arviz_plots.plot_loo_pit`` on this
        non-factorized model: ``posterior``, ``observed_data``, a ``posterior_predictive`` in which
        each row is drawn from its leave-one-input-out predictive given the draw and the other rows,
        :math:`y_i \mid Y_{-i}, \theta \sim N(m_i, V_i)`
        (:func:`deeplinear.likelihood._loo_conditional_from_terms`), and a ``log_likelihood`` with the
        exact terms :math:`\log p(y_i \mid Y_{-i}, \theta)` repeated over the outputs
        ``(chain, draw, obs, output)``.

        PSIS then weights each draw by :math:`1/p(y_i \mid Y_{-i}, \theta)`, the importance ratio of
        the leave-one-out posterior for non-factorized models (Bürkner, Gabry & Vehtari 2021), and
        compares each :math:`y_{id}` with draws of the same conditional, so the PIT values of a
        calibrated model are uniform. (Joint replicates would not be leave-one-out predictive draws,
        and ArviZ's ``loo_pit`` needs log-likelihood terms with the predictive's dims, hence the
        repetition, which makes this tree unfit for ``az.loo``: use the fit's own ``datatree``.)"""
        import arviz_base

        if "log_likelihood" not in self.datatree.children:
            raise ValueError("loo_pit_tree needs the fit's log_likelihood group (fit(..., log_likelihood=True))")
        rep = self._replicates(raw_key(key), _loo_predictive_labels, "loo_pit_tree (leave-one-out draws)")
        ll = self.datatree["log_likelihood"].to_dataset()["Y"].values
        groups: dict[str, Any] = {
            "posterior": self.datatree["posterior"].to_dataset(),
            "observed_data": {"Y": np.asarray(self.data.labels)},
            "posterior_predictive": {"Y": rep},
            "log_likelihood": {"Y": np.repeat(ll[..., None], self.data.num_outputs, axis=-1)},
        }
        return arviz_base.from_dict(groups, **self._dims_and_coords())

    def _dims_and_coords(self) -> dict:
        names = list(self.datatree["posterior"]["Q"].coords["output"].values)  # as stored: observed_data's too
        dims, coords = _dims_and_coords(self.prior, self.data, names, self.spec.noise_model != "scalar")
        return {"dims": dims, "coords": coords}

    def _replicates(self, rng, replicate, what: str) -> np.ndarray:
        """Labels drawn by ``replicate`` once per posterior draw, ``(chain, draw, obs, output)``, checked."""
        self.data.require_rows(what)
        post = self.datatree["posterior"]
        C, S = post.sizes["chain"], post.sizes["draw"]
        P, D = self.data.num_obs, self.data.num_outputs
        if C * S * P * D > LOO_BUDGET_ENTRIES:
            raise ValueError(f"{what} would hold S x P x D = {C * S * P * D:.3g} numbers, more than "
                             f"LOO_BUDGET_ENTRIES = {LOO_BUDGET_ENTRIES:.3g}; thin the draws first")
        rep = _in_draw_blocks(replicate, rng, 0, self._per_draw_host_arrays(self.data.dtype), self.data)
        rep = rep.reshape(C, S, P, D)
        if not np.all(np.isfinite(rep)):
            raise FloatingPointError(f"{what}: the drawn labels are not finite in this precision; use float64")
        return rep

    def power_scaling_tree(self) -> xr.DataTree:
        r"""A DataTree for ArviZ's prior/likelihood sensitivity (``arviz_stats.psense_summary``,
        ``plot_psense_dist``): ``posterior`` holding the quantities a user reads (``Q`` and the
        inferred hyperparameters that vary: ratio, ``lambda_star``, noise, intercepts; not the
        prior's auxiliary latents, such as the Brownian increments of the limit, which would add a
        row per increment), ``log_prior`` (each prior site's log density at every draw,
        constrained space: the whole prior is power-scaled) and ``log_likelihood`` holding the
        joint :math:`\log p(Y \mid \theta)` per draw (variable ``Y``, dims ``chain, draw``).

        The fit's own ``log_likelihood`` group holds the leave-one-input-out terms
        :math:`\log p(y_i \mid Y_{-i}, \theta)` (right for PSIS-LOO of this non-factorized model),
        whose sum is not :math:`\log p(Y \mid \theta)`; power-scaling the likelihood needs the
        joint, hence this separate tree. Not for the exact NNGP fit (nothing is sampled)."""
        import arviz_base

        if not self.spec.has_latent_sites:
            raise ValueError("the exact NNGP fit has no sampled parameters: nothing to power-scale")
        if isinstance(self.spec, CustomModel):
            raise ValueError("power_scaling_tree needs the built-in model's prior sites; for your own model "
                             "compute log_prior with numpyro.infer.util.log_density at each draw")
        post = self.datatree["posterior"]
        C, S = post.sizes["chain"], post.sizes["draw"]
        dtype = self.data.dtype
        model_args = self.spec.model_arguments(self.data)
        sites = _prior_site_names(model_args)
        params = {k: on_device(self.draws(k), dtype) for k in sites}
        log_prior = _log_prior_draws(model_args, params)
        joint = _joint_log_likelihood(*self._per_draw_arrays(dtype), self.data)
        groups: dict[str, Any] = {
            "posterior": post.to_dataset()[list(self._varying_variables())],
            "log_prior": {k: np.asarray(v).reshape(C, S) for k, v in log_prior.items()},
            "log_likelihood": {"Y": np.asarray(joint).reshape(C, S)},
        }
        if not all(np.all(np.isfinite(v)) for g in ("log_prior", "log_likelihood") for v in groups[g].values()):
            raise FloatingPointError("the log prior or log-likelihood is not finite at some draw; use float64")
        return arviz_base.from_dict(groups)

    def intercept_draws(self) -> np.ndarray | None:
        """Per-draw intercepts ``(S, D)``, or ``None`` for a model without intercepts."""
        return None if self.spec.intercept is None else self.draws("intercept")

    def _per_draw_host_arrays(self, dtype) -> tuple:
        """``(Q, lambda_star, noise, intercept)`` per draw as NumPy arrays of ``dtype`` (noise:
        :meth:`noise_draws`; intercept ``None`` without one), as :func:`_in_draw_blocks` takes them."""
        mu = self.intercept_draws()
        return (np.asarray(self.draws("Q"), dtype), np.asarray(self.draws("lambda_star"), dtype),
                np.asarray(self.noise_draws(), dtype), None if mu is None else np.asarray(mu, dtype))

    def _per_draw_arrays(self, dtype) -> tuple:
        """:meth:`_per_draw_host_arrays` on the device, as the compiled per-draw loops take them."""
        return tuple(None if a is None else on_device(a, dtype) for a in self._per_draw_host_arrays(dtype))

    def _draw_keywords(self, dtype) -> dict:
        """``noise_variance=`` (``None`` for a noise covariance), ``noise_covariance=`` and
        ``intercept=`` of the draws, for the predictive and LOO functions."""
        noise = on_device(self.noise_draws(), dtype)
        out = {"noise_variance": noise, "noise_covariance": None}
        if self.spec.noise_model != "scalar":
            out = {"noise_variance": None, "noise_covariance": noise}
        intercept = self.intercept_draws()
        out["intercept"] = None if intercept is None else on_device(intercept, dtype)
        return out

    def predict(self, X_test: ArrayLike | None = None, *, cross_gram: ArrayLike | None = None,
                test_gram: ArrayLike | None = None, batch_size: int = 256) -> PredictiveMixture:
        r"""Posterior predictive mixture of the outputs at test inputs.

        ``X_test`` is ``(P*, N0)`` (one test input per row) for the linear kernel; for a user
        Gram matrix pass ``cross_gram`` :math:`K(X, X_*)` ``(P, P*)`` and ``test_gram`` ``(P*, P*)``.
        """
        test = self.data.prediction_kernel(X_test, cross_gram=cross_gram, test_gram=test_gram)
        kw = self._draw_keywords(self.data.dtype)
        return PredictiveMixture(self.draws("Q"), self.draws("lambda_star"), kw.pop("noise_variance"), self.data,
                                 test, batch_size, **kw)

    def summary(self, var_names: Sequence[str] | None = None, **kwargs: Any) -> pd.DataFrame:
        """``arviz.summary`` of the posterior, each distinct entry of the symmetric ``D x D``
        variables once (:meth:`distinct_entries`). Default variables: ``Q`` and the inferred
        hyperparameters that vary; the NNGP's constant ``Q = I`` has no R-hat or ESS, so it is
        left out when anything else is inferred."""
        import arviz_stats

        varying = self._varying_variables()
        if var_names is None:
            var_names = list(varying) or ["Q"]
        with warnings.catch_warnings():
            if not varying:  # the exact NNGP: R-hat and ESS of constant draws are NaN, as they should be
                warnings.simplefilter("ignore", RuntimeWarning)
            return arviz_stats.summary(self.distinct_entries(), var_names=var_names, **kwargs)

    def distinct_entries(self) -> xr.DataTree:
        """The ``posterior`` group as a DataTree in which each symmetric ``D x D`` variable
        (``Q``, ``noise_covariance``, ``noise_correlation``) holds only its upper triangle (row by
        row; strictly above the diagonal for ``noise_correlation``, whose diagonal is 1), along a dimension
        ``<name>_entry`` labelled ``"row, column"`` (output names): every distinct entry
        once, for ``arviz_stats.summary`` and forest plots (the full matrices repeat each
        off-diagonal entry). Other variables are unchanged."""
        import xarray as xr

        post = self.datatree["posterior"].to_dataset()
        D = self.data.num_outputs
        rows, cols = np.triu_indices(D)
        names = [str(x) for x in post["Q"].coords["output"].values]
        out: dict[Hashable, xr.DataArray] = {}
        for name, var in post.data_vars.items():
            if name in SYMMETRIC_VARIABLES and var.dims[-2:] == ("output", "output_bis"):
                dim = f"{name}_entry"
                r, c = (rows, cols) if name != "noise_correlation" else np.triu_indices(D, k=1)  # its diagonal is 1
                out[name] = xr.DataArray(
                    var.values[..., r, c], dims=(*var.dims[:-2], dim),
                    coords={dim: [f"{names[i]}, {names[j]}" for i, j in zip(r, c)]},
                )
            else:
                out[name] = var
        ds = xr.Dataset(out)
        return xr.DataTree.from_dict({"posterior": ds})

    def _varying_variables(self) -> tuple[str, ...]:
        """``Q`` and the inferred hyperparameters whose draws vary (over chains and draws, entry
        by entry: the NNGP's ``Q = I`` holds 0s and 1s but never varies)."""
        post = self.datatree["posterior"].to_dataset()
        return tuple(
            v for v in ("Q", "ratio", "lambda_star", "noise_variance", "noise_correlation", "intercept")
            if v in post.data_vars and np.max(np.ptp(post[v].values, axis=(0, 1))) > 0
        )

    def diagnostics(self) -> Diagnostics:
        """Divergences, max R-hat and min bulk ESS over ``Q`` and the inferred hyperparameters
        (variables whose draws are all equal, like the NNGP's ``Q``, are skipped; R-hat needs
        two or more chains, else it is NaN)."""
        import arviz_stats

        post = self.datatree["posterior"]
        names = self._varying_variables()
        rhat = ess = np.nan
        if names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                if post.sizes["chain"] > 1:
                    r = arviz_stats.rhat(self.datatree, var_names=list(names))
                    rhat = max(float(np.nanmax(np.asarray(r[v].values, float))) for v in names)
                e = arviz_stats.ess(self.datatree, var_names=list(names))
                ess = min(float(np.nanmin(np.asarray(e[v].values, float))) for v in names)
        num_draws = post.sizes["chain"] * post.sizes["draw"]
        return Diagnostics(self.num_divergences, num_draws, rhat, ess, names)

    @property
    def num_divergences(self) -> int:
        """Number of divergent transitions over all chains (0 for the exact NNGP)."""
        if "sample_stats" not in self.datatree.children:
            return 0
        return int(self.datatree["sample_stats"]["diverging"].sum())

    def __repr__(self):
        post = self.datatree["posterior"]
        what = f"model={self.spec.name!r}" if isinstance(self.spec, CustomModel) else f"prior={self.prior!r}"
        return (
            f"PosteriorFit({what}, chains={post.sizes['chain']}, draws={post.sizes['draw']}, "
            f"divergences={self.num_divergences})"
        )


def check_sampler_settings(num_warmup, num_samples, target_accept_prob, max_tree_depth, progress_bar):
    """NUTS settings shared by :func:`fit` and SBC."""
    check_positive_int("num_warmup", num_warmup, minimum=0)
    check_positive_int("num_samples", num_samples)
    check_positive_int("max_tree_depth", max_tree_depth)
    check_probability("target_accept_prob", target_accept_prob)
    if progress_bar is not None:
        check_bool("progress_bar", progress_bar)


def _validate_fit_args(num_warmup, num_samples, num_chains, chain_method, target_accept_prob, max_tree_depth,
                       progress_bar, log_likelihood):
    check_sampler_settings(num_warmup, num_samples, target_accept_prob, max_tree_depth, progress_bar)
    check_positive_int("num_chains", num_chains)
    if log_likelihood is not None:
        check_bool("log_likelihood", log_likelihood)
    if num_samples * num_chains > MAX_STORED_DRAWS:
        raise ValueError(
            f"num_chains * num_samples = {num_chains * num_samples:.3g} draws exceeds {MAX_STORED_DRAWS:.0e}; "
            "they could not be stored -- use fewer draws (thin, or fewer chains)"
        )
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")


def fit(
    data: RegressionData,
    prior: VbarPrior | ModelSpec | None = None,
    *,
    lambda_star: ScaleLike = 1.0,
    noise_variance: NoiseVarianceLike = 1.0,
    ratio: dist.Distribution | None = None,
    noise_model: str = "scalar",
    noise_correlation: NoiseCorrelationLike | None = None,
    intercept: InterceptLike | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    chain_method: str = "auto",
    key: KeyLike = 0,
    progress_bar: bool | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    log_likelihood: bool | None = None,
    output_names: Sequence[str] | None = None,
    model: Callable | None = None,
) -> PosteriorFit:
    r"""Sample the posterior of a deep linear network with NUTS.

    .. math:: \pi(\text{latents}, \theta \mid Y) \propto N(\operatorname{vec} Y; 0,
        \lambda_* Q \otimes K + \sigma^2 I)\; \pi(\text{latents})\, \pi(\theta)

    Parameters
    ----------
    data : RegressionData
        ``RegressionData.linear(X, Y)`` or ``RegressionData.from_gram(K, Y)`` (rows are
        observations); its precision (float32/float64) is the precision of the run.
    prior : FiniteWidthPrior | ProportionalLimitPrior | NNGPPrior | ModelSpec
        The prior, or a whole :class:`~deeplinear.models.ModelSpec` (then leave the
        hyperparameter keywords out).
    lambda_star, noise_variance : float or numpyro Distribution
        Fixed values or priors (see :class:`~deeplinear.models.ModelSpec`).
    ratio : numpyro Distribution, optional
        Prior over ``a`` (proportional limit only).
    noise_model, noise_correlation
        Output noise: ``"scalar"`` (:math:`\sigma^2 I`), ``"diagonal"`` (per-output variances) or
        ``"full"`` (with a noise correlation, fixed or LKJ; see :class:`~deeplinear.models.ModelSpec`).
    intercept : D floats or numpyro Distribution, optional
        Per-output intercepts, fixed or with a prior (see :class:`~deeplinear.models.ModelSpec`).
    num_warmup, num_samples, num_chains : int
        NumPyro's words: warmup steps and posterior draws per chain, and chains.
    chain_method : {"auto", "vectorized", "sequential", "parallel"}
        ``"vectorized"``: all chains in one compiled program (``vmap``); ``"sequential"``: one
        chain's program, run ``num_chains`` times (less memory). Chain ``c`` draws from
        ``fold_in(key, c)`` whatever the method, so the methods run the same chains; the batched
        and the one-chain programs round differently, though, and in float32 a trajectory can part
        after such a difference (float64 agrees to rounding); ``"parallel"``: the chains split
        over the local JAX devices.
        ``"auto"``: ``"parallel"`` when there are several devices and ``num_chains`` is a
        multiple of their number (up to ``num_chains`` devices), else ``"vectorized"`` on an
        accelerator and ``"sequential"`` on a CPU (where a batched NUTS step costs as much as
        the chains' steps one by one, and the one-chain program compiles in about half the time).
    key : PRNG key or int, default 0
        A JAX PRNG key or an integer seed in ``[0, 2**32)``, which is the whole of
        ``jax.random.key(seed)`` (no integer outside that range is accepted, so two seeds never
        alias); same key, same draws (on the same device).
    progress_bar : bool, optional
        Default: on in Jupyter or a terminal, off otherwise.
    log_likelihood : bool, optional
        Store the pointwise leave-one-input-out terms (``S x P`` numbers, ``O(S P R D^2)`` time) as
        the ``log_likelihood`` group, and with them (``S P D <= DEFAULT_GROUP_ENTRIES``, 2^22) the
        ``posterior_predictive`` group of leave-one-input-out label draws. Default: when the data keep
        their rows and ``S P <= LOO_BUDGET_ENTRIES`` (2^25); beyond that :func:`~deeplinear.loo.loo`
        subsamples. ``True`` where that is impossible is an error (before sampling).
    output_names : list of str, optional
        ``D`` distinct names, the coordinates of the ``output`` dimension (default ``0..D-1``).
    model : callable, optional
        Your own NumPyro model ``model(data)`` built from the building blocks, in place of ``prior``
        and the hyperparameter keywords (leave those out). Its posterior must hold ``Q``,
        ``lambda_star``, ``noise_variance`` or ``noise_covariance`` and optionally ``intercept``,
        and it must observe ``Y`` with a :class:`~deeplinear.KroneckerNormal` on ``data``
        (:mod:`deeplinear.custom`, checked before sampling); then ``predict``, LOO,
        :func:`~deeplinear.compare_models` and :func:`~deeplinear.save_fit` work as for the
        built-in model. Sampled by NumPyro's ``MCMC`` (compiled per call).

    Returns
    -------
    PosteriorFit

    Warns
    -----
    ConvergenceWarning
        On divergent transitions or R-hat of ``Q`` above 1.01.
    PrecisionWarning
        Before sampling, when float32 cannot resolve ``noise_variance`` against the labels
        (:func:`deeplinear._precision.warn_if_unresolvable_in_float32`); when ``noise_variance = 0``
        meets a nearly singular kernel (:func:`deeplinear._precision.warn_if_interpolation_ill_conditioned`);
        when the prior's ``Q`` underflows in the data's precision
        (:meth:`deeplinear.priors.VbarPrior.warn_if_underflows`).
    """
    if model is not None:
        return _fit_custom(data, prior, model, (lambda_star, noise_variance, ratio, noise_model, noise_correlation,
                                                 intercept), num_warmup=num_warmup, num_samples=num_samples,
                           num_chains=num_chains, chain_method=chain_method, key=key, progress_bar=progress_bar,
                           target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
                           log_likelihood=log_likelihood, output_names=output_names)
    if prior is None:
        raise TypeError("fit needs a prior (FiniteWidthPrior, ProportionalLimitPrior, NNGPPrior or a ModelSpec) "
                        "or model= (your own NumPyro model)")
    spec = ModelSpec.build(prior, lambda_star, noise_variance, ratio, noise_model, noise_correlation, intercept)
    result, convergence = fit_quietly(
        data, spec, key=key, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
        chain_method=chain_method, progress_bar=progress_bar, target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth, log_likelihood=log_likelihood, output_names=output_names,
    )
    if convergence is not None:
        warnings.warn(convergence, ConvergenceWarning, stacklevel=2)
    return result


def fit_quietly(data, spec: ModelSpec, *, key, num_warmup, num_samples, num_chains, chain_method, progress_bar,
                target_accept_prob, max_tree_depth, log_likelihood, output_names=None, stacklevel: int = 5):
    """:func:`fit` of a built-in model ``spec``, returning ``(result, convergence message or None)`` in place of
    the :class:`ConvergenceWarning`: it leaves the process's warning filters alone, so that refits can run in
    threads (:mod:`deeplinear.crossvalidation`; ``warnings.catch_warnings`` is not thread-safe). Precision
    warnings are still issued, before sampling."""
    spec.check_data(data)
    _validate_fit_args(num_warmup, num_samples, num_chains, chain_method, target_accept_prob, max_tree_depth,
                       progress_bar, log_likelihood)
    rng_key = raw_key(key)
    log_likelihood = _store_loo_terms(log_likelihood, data, num_chains * num_samples)
    output_names = check_output_names(output_names, data.num_outputs)
    prior = spec.prior
    warn_if_spec_imprecise(spec, data, not isinstance(prior, NNGPPrior), stacklevel=stacklevel)
    dims, coords = _dims_and_coords(prior, data, output_names, spec.noise_model != "scalar")

    if not spec.has_latent_sites:
        prefetch()  # arviz_base and arviz_stats load while the exact draws are made
        dt = _exact_nngp_tree(data, num_chains, num_samples, dims, coords)
    else:
        run = run_nuts(
            spec.model_arguments(data.for_sampling()), rng_key, num_chains=num_chains, num_warmup=num_warmup,
            num_samples=num_samples, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
            chain_method=chain_method, progress_bar=interactive() if progress_bar is None else progress_bar,
            while_running=prefetch,  # arviz_base and arviz_stats load while the chains run
        )
        dt = _sampled_tree(run, data, dims, coords)
        _record_sampler_settings(dt, num_warmup, target_accept_prob, max_tree_depth)

    result = PosteriorFit(dt, spec, data)
    if log_likelihood:
        _add_default_groups(result, rng_key)
    return result, (convergence_message(result) if spec.has_latent_sites else None)


def _record_sampler_settings(datatree, num_warmup, target_accept_prob, max_tree_depth) -> None:
    """The NUTS settings in ``sample_stats``' attributes (``tuning_steps``, ArviZ's name for the warm-up
    length, ``target_accept_prob``, ``max_tree_depth``), so that a refit (:mod:`deeplinear.crossvalidation`)
    can repeat them; they travel with :func:`~deeplinear.save_fit`."""
    if "sample_stats" in datatree.children:
        datatree["sample_stats"].attrs.update({"tuning_steps": int(num_warmup),
                                               "target_accept_prob": float(target_accept_prob),
                                               "max_tree_depth": int(max_tree_depth)})


def _fit_custom(data, prior, model, hyperparameters, *, num_warmup, num_samples, num_chains, chain_method, key,
                progress_bar, target_accept_prob, max_tree_depth, log_likelihood, output_names) -> PosteriorFit:
    """:func:`fit` with ``model=``: check the arguments and the model's site contract, run NumPyro's NUTS."""
    if prior is not None or any(a is not b and a != b for a, b in zip(
            hyperparameters, (1.0, 1.0, None, "scalar", None, None))):
        raise ValueError("with model=, your model defines its prior and hyperparameters: leave prior and the "
                         "hyperparameter keywords (lambda_star, noise_variance, ratio, noise_model, "
                         "noise_correlation, intercept) out")
    _validate_fit_args(num_warmup, num_samples, num_chains, chain_method, target_accept_prob, max_tree_depth,
                       progress_bar, log_likelihood)
    rng_key = raw_key(key)
    log_likelihood = _store_loo_terms(log_likelihood, data, num_chains * num_samples)
    output_names = check_output_names(output_names, data.num_outputs)
    custom = inspect_model(model, data)
    run = run_custom_nuts(custom, data, rng_key, num_chains=num_chains, num_warmup=num_warmup,
                          num_samples=num_samples, target_accept_prob=target_accept_prob,
                          max_tree_depth=max_tree_depth, chain_method=chain_method,
                          progress_bar=interactive() if progress_bar is None else progress_bar)
    per_output = run.samples.get("noise_variance", np.zeros((1, 1))).ndim == 3
    dims, coords = _dims_and_coords(None, data, output_names, per_output)
    dt = _sampled_tree(run, data, dims, coords)
    _record_sampler_settings(dt, num_warmup, target_accept_prob, max_tree_depth)
    result = PosteriorFit(dt, custom, data)
    if log_likelihood:
        _add_default_groups(result, rng_key)
    message = convergence_message(result)
    if message is not None:
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    return result


DRAW_BLOCK = 64  # posterior draws per call of the per-draw programs (LOO terms, replicated labels)


def _draw_keys(key, salt, first, count: int):
    """The keys of draws ``first .. first + count - 1``: draw ``i`` uses ``fold_in(fold_in(key, salt), i)``,
    which under JAX's partitionable Threefry (the default) is ``split(fold_in(key, salt), S)[i]`` for
    any ``S``, so blocks of draws draw as one call over all of them would. Derived inside the program
    that uses them (eager ``fold_in``/``split`` would compile programs of their own)."""
    base = jax.random.fold_in(key, salt)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(first + jnp.arange(count, dtype=jnp.int32))


def _in_draw_blocks(program, key, salt, arrays, data):
    """``program(key, salt, first, *block, data)`` over the posterior draws ``arrays`` (NumPy, ``None``
    entries passed as they are) in blocks of :data:`DRAW_BLOCK` (the last padded with copies of its
    last draw, whose results are dropped), the outputs joined on the host: the program does not depend
    on the number of draws, so fits with other numbers of chains or draws share it."""
    outs = []
    for first, count, rows in padded_blocks(arrays[0].shape[0], DRAW_BLOCK):
        block = spread([None if a is None else a[rows] for a in arrays], DRAW_BLOCK)
        out = jax.device_get(program(key, salt, np.int32(first), *block, data))
        outs.append(tuple(np.asarray(x)[:count] for x in (out if isinstance(out, tuple) else (out,))))
    joined = tuple(np.concatenate(parts) for parts in zip(*outs))
    return joined if isinstance(out, tuple) else joined[0]


@full_precision_jit
def _replicate_labels(key, salt, first, q, lam, noise, intercept, data):
    """One draw of the labels per posterior draw of a block, ``(B, P, D)`` (``noise``: ``(B,)``
    variances or ``(B, D, D)`` covariances; ``intercept``: ``(B, D)`` or None), the draws' keys from
    :func:`_draw_keys`."""
    keys = _draw_keys(key, salt, first, q.shape[0])

    def one(a):
        key, q1, lam1, noise1, mu1 = a
        return KroneckerNormal.for_draw(q1, lam1, noise1, data, root=psd_root(q1), intercept=mu1).sample(key)

    return batched_map(one, (keys, q, lam, noise, intercept), 64)


def _prior_site_names(model_args) -> list[str]:
    """The model's unobserved sample sites (the prior's latents and the inferred hyperparameters)."""
    from numpyro import handlers

    from deeplinear.sampler import model_of_arguments

    tr = handlers.trace(handlers.seed(model_of_arguments, 0)).get_trace(model_args)
    return [k for k, site in tr.items() if site["type"] == "sample" and not site["is_observed"]]


@full_precision_jit
def _log_prior_draws(model_args, params):
    """Each prior site's log density at each draw of ``params`` (``{site: (S, ...)}``), ``{site: (S,)}``."""
    from numpyro import handlers

    from deeplinear.sampler import model_of_arguments

    def one(p):
        tr = handlers.trace(handlers.substitute(handlers.seed(model_of_arguments, 0), data=p)).get_trace(model_args)
        return {k: jnp.sum(tr[k]["fn"].log_prob(tr[k]["value"])) for k in p}

    return batched_map(one, params, 64)


@full_precision_jit
def _joint_log_likelihood(q, lam, noise, intercept, data):
    r""":math:`\log p(Y \mid \theta)` of the data's labels for each draw, ``(S,)`` (the absolute density)."""

    def one(a):
        q1, lam1, noise1, mu1 = a
        return KroneckerNormal.for_draw(q1, lam1, noise1, data, root=psd_root(q1), labels_are_data=True,
                                        intercept=mu1).data_log_prob()

    return batched_map(one, (q, lam, noise, intercept), 64)


def _loo_predictive_labels(key, salt, first, q, lam, noise, intercept, data):
    """Per posterior draw of a block, each row drawn from its leave-one-input-out predictive,
    ``(B, P, D)``: the default groups' program (:data:`_default_group_draws`), which ``fit`` compiled
    already."""
    return _default_group_draws(key, salt, first, q, lam, noise, intercept, data)[1]


def _loo_terms_and_draws(key, salt, first, q, lam, noise, intercept, data):
    """Per posterior draw of a block, the LOO terms ``(B, P)`` and each row drawn from its
    leave-one-input-out predictive ``(B, P, D)`` (:func:`deeplinear.likelihood._loo_terms_and_draw`),
    the draws' keys from :func:`_draw_keys`."""
    keys = _draw_keys(key, salt, first, q.shape[0])
    terms = _loo_data_terms(data, q.dtype)
    return batched_map(lambda a: _loo_terms_and_draw(a[0], *a[1:4], data, terms, a[4]),
                       (keys, q, lam, noise, intercept), 64)


# the default groups' one program (fit); with the compilation cache on, its trace is kept too (deeplinear.cache)
_default_group_draws = reuse_traces(_loo_terms_and_draws)


def _store_loo_terms(log_likelihood, data, num_draws) -> bool:
    """Whether to store the ``log_likelihood`` group (see :func:`fit`)."""
    fits = data.num_obs * num_draws <= LOO_BUDGET_ENTRIES
    if log_likelihood is None:
        return data.has_rows and fits
    if log_likelihood and not data.has_rows:
        raise ValueError(
            "log_likelihood=True needs the training rows, which data set up by streaming do not keep; leave it "
            "at None and call deeplinear.loo(result, rows=...) for a subsampled LOO"
        )
    if log_likelihood and not fits:
        raise ValueError(
            f"log_likelihood=True would store S x P = {num_draws} x {data.num_obs} = {num_draws * data.num_obs:.3g} "
            f"terms, more than LOO_BUDGET_ENTRIES = {LOO_BUDGET_ENTRIES:.3g}; leave it at None: "
            "deeplinear.loo(result) subsamples"
        )
    return log_likelihood


def _groups(data, **groups) -> dict:
    """``groups`` plus ``observed_data`` (the labels) when the data keep them."""
    return {**groups, "observed_data": {"Y": np.asarray(data.labels)}} if data.has_rows else groups


def _sampled_tree(run, data, dims, coords):
    """DataTree of a NUTS run: ``posterior`` (latents, hyperparameters, ``Q``), ``sample_stats``
    (with ``tree_depth`` from the leapfrog steps: a trajectory of depth ``d`` takes between
    :math:`2^{d-1}` and :math:`2^d - 1` steps) and ``observed_data``."""
    import arviz_base

    stats = dict(run.sample_stats)
    stats["tree_depth"] = (np.floor(np.log2(np.maximum(stats["n_steps"], 1))) + 1).astype(np.int32)
    return arviz_base.from_dict(_groups(data, posterior=run.samples, sample_stats=stats), dims=dims, coords=coords)


def _exact_nngp_tree(data, num_chains, num_samples, dims, coords):
    """DataTree of the exact NNGP posterior: ``Q = I`` in every draw (nothing is random)."""
    import arviz_base

    D = data.num_outputs
    q = np.broadcast_to(np.eye(D), (num_chains, num_samples, D, D)).copy()
    return arviz_base.from_dict(
        _groups(data, posterior={"Q": q}),
        dims={k: v for k, v in dims.items() if k in ("Q", "Y")},
        coords={k: v for k, v in coords.items() if k in ("output", "output_bis", "obs")},
    )


def _add_default_groups(result: PosteriorFit, rng_key) -> None:
    r"""Add the groups ArviZ's first calls read, from one compiled program (:func:`_loo_terms_and_draws`,
    which shares each draw's factorization between the two):

    * ``log_likelihood``: the exact pointwise terms :math:`\log p(y_i \mid Y_{-i}, \theta)` ``(chain, draw,
      obs)``, for ``az.loo``/``az.compare`` (PSIS-LOO of this non-factorized model);
    * ``posterior_predictive``: labels ``Y`` ``(chain, draw, obs, output)``, each row drawn from its
      leave-one-input-out predictive :math:`y_i \mid Y_{-i}, \theta` at each draw, so that
      ``az.plot_ppc_dist`` compares the labels with draws that did not see them (a check that does not
      use a row twice). :meth:`PosteriorFit.add_predictive_groups` replaces it with joint replicates.

    ``posterior_predictive`` holds ``S x P x D`` numbers; above ``DEFAULT_GROUP_ENTRIES`` it is left out with
    a warning naming :meth:`PosteriorFit.add_predictive_groups` and :meth:`PosteriorFit.loo_pit_tree`."""
    import arviz_base
    import xarray as xr

    post = result.datatree["posterior"]
    C, S = post.sizes["chain"], post.sizes["draw"]
    data = result.data
    P, D = data.num_obs, data.num_outputs
    with_draws = C * S * P * D <= DEFAULT_GROUP_ENTRIES
    if with_draws:
        ll, rep = _in_draw_blocks(_default_group_draws, rng_key, 2**20, result._per_draw_host_arrays(data.dtype),
                                  data)
    else:
        q, lam = result._per_draw_arrays(data.dtype)[:2]
        kw = result._draw_keywords(data.dtype)
        ll = loo_log_likelihood_draws(q, lam, kw.pop("noise_variance"), data, **kw)
    ll = np.asarray(ll).reshape(C, S, P)
    if not np.all(np.isfinite(ll)):
        raise FloatingPointError(
            "the leave-one-input-out log-likelihood terms are not finite in this precision; rescale the inputs "
            "and labels, use a larger noise_variance, float64 (jax_enable_x64), or log_likelihood=False"
        )
    ds = xr.Dataset(
        {"Y": (("chain", "draw", "obs"), ll)},
        coords={"chain": post["chain"].values, "draw": post["draw"].values, "obs": np.arange(P)},
        attrs={"description": "pointwise leave-one-input-out log p(y_i | y_-i, theta) (non-factorized Gaussian)"},
    )
    result.datatree["log_likelihood"] = xr.DataTree(ds)
    if not with_draws:
        warnings.warn(
            f"the posterior_predictive group would hold S x P x D = {C * S * P * D:.3g} numbers, more than "
            f"deeplinear.inference.DEFAULT_GROUP_ENTRIES = {DEFAULT_GROUP_ENTRIES:.3g}, so the fit leaves it out; "
            "add predictive draws with result.add_predictive_groups() (joint replicates, for az.plot_ppc_dist) "
            "or result.loo_pit_tree() (leave-one-out draws, for az.loo_pit)", UserWarning, stacklevel=4)
        return
    rep = np.asarray(rep).reshape(C, S, P, D)
    if not np.all(np.isfinite(rep)):
        raise FloatingPointError("the leave-one-input-out label draws are not finite in this precision; use float64 "
                                 "(jax_enable_x64) or log_likelihood=False")
    tree = arviz_base.from_dict({"posterior_predictive": {"Y": rep}}, **result._dims_and_coords())
    result.datatree["posterior_predictive"] = tree["posterior_predictive"]
    result.datatree["posterior_predictive"].attrs["description"] = (
        "each row drawn from its leave-one-input-out predictive p(y_i | Y_-i, theta) at each posterior draw "
        "(add_predictive_groups() replaces these with joint replicates of Y)")


def convergence_message(result: PosteriorFit) -> str | None:
    """What :class:`ConvergenceWarning` says about ``result`` (divergences; R-hat of ``Q`` above
    ``RHAT_THRESHOLD``), or ``None`` when there is nothing to say."""
    diag = result.diagnostics()
    msgs = []
    if diag.divergences:
        msgs.append(
            f"{diag.divergences} of {diag.num_draws} transitions diverged (raise target_accept_prob or check the model)"
        )
    if diag.max_rhat > RHAT_THRESHOLD:
        msgs.append(
            f"max R-hat of {list(diag.variables)} is {diag.max_rhat:.3f} > {RHAT_THRESHOLD} (run longer or more warmup)"
        )
    return "; ".join(msgs) if msgs else None
