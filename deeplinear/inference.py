r"""Fitting: NUTS on the prior's latents, results as an ArviZ ``xarray.DataTree``.

:func:`fit` validates everything, runs NumPyro's NUTS on :func:`~deeplinear.models.deep_linear_model`
(several chains, a progress bar in interactive use, a seed), and returns a
:class:`PosteriorFit` holding the DataTree made by ``arviz_base.from_numpyro``: named
dims (``output``, ``output_bis``, ``obs``, ``layer``/``step``, ``offdiag``), ``Q`` as a
deterministic, sample stats with divergences, and a ``log_likelihood`` group with the
exact pointwise leave-one-input-out terms :math:`\log p(y_{\cdot i}\mid Y_{\cdot,-i}, \theta)`
(:func:`~deeplinear.likelihood.loo_log_likelihood`), so ``az.loo``/``az.compare`` rank
models correctly for this non-factorized Gaussian model.

With the NNGP prior and fixed ``lambda_star``, ``noise_variance`` there is nothing to
sample: the posterior is exact (``Q = I``) and no MCMC runs.
"""

from __future__ import annotations

import sys
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import xarray as xr
from numpyro.infer import MCMC, NUTS, init_to_median

from deeplinear._checks import check_positive_int
from deeplinear.data import RegressionData
from deeplinear.likelihood import loo_log_likelihood_draws, warn_if_unresolvable_in_float32
from deeplinear.models import check_model_args, deep_linear_model, has_latent_sites
from deeplinear.predictive import PredictiveMixture
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior

__all__ = ["fit", "PosteriorFit", "ConvergenceWarning", "Diagnostics"]

_CHAIN_METHODS = ("auto", "sequential", "parallel", "vectorized")
RHAT_THRESHOLD = 1.01
MAX_STORED_DRAWS = 10**8  # num_chains * num_samples above this cannot be stored; refuse up front


class ConvergenceWarning(UserWarning):
    """NUTS reported divergences or R-hat above 1.01: do not trust the posterior yet."""


def _interactive() -> bool:
    return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def _dims_and_coords(prior, data, output_names=None):
    D = data.num_outputs
    outputs = list(output_names) if output_names is not None else list(range(D))
    coords = {"output": outputs, "output_bis": outputs, "obs": np.arange(data.num_obs)}
    dims = {"Q": ["output", "output_bis"], "Y": ["output", "obs"]}
    if D > 1:
        rows, cols = np.tril_indices(D, k=-1)
        coords["offdiag"] = [f"{outputs[r]},{outputs[c]}" for r, c in zip(rows, cols)]
    if isinstance(prior, FiniteWidthPrior):
        coords["layer"] = np.arange(1, prior.depth + 1)
        dims["bartlett_diag"] = ["layer", "output"]
        dims["bartlett_offdiag"] = ["layer", "offdiag"]
    elif isinstance(prior, ProportionalLimitPrior):
        coords["step"] = np.arange(1, prior.num_steps + 1)
        dims["brownian_diag"] = ["step", "output"]
        dims["brownian_offdiag"] = ["step", "offdiag"]
    return dims, coords


class Diagnostics(NamedTuple):
    """Convergence summary of a fit (see :meth:`PosteriorFit.diagnostics`)."""

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
        ``log_likelihood``); pass it to ``az.summary``, ``az.loo``, ``az.compare``, plots.
    prior, data : the prior and :class:`~deeplinear.data.RegressionData` that were fitted.
    hyperparameters : dict
        The ``lambda_star``, ``noise_variance``, ``ratio`` arguments (numbers or priors).
    mcmc : numpyro.infer.MCMC or None
        The sampler (``None`` for the exact NNGP with fixed hyperparameters).
    """

    def __init__(self, datatree, prior, data, hyperparameters, mcmc=None):
        self.datatree = datatree
        self.prior = prior
        self.data = data
        self.hyperparameters = hyperparameters
        self.mcmc = mcmc

    def draws(self, name: str) -> np.ndarray:
        """Posterior draws of a variable, chains flattened: shape ``(S, ...)``.

        ``lambda_star`` and ``noise_variance`` fall back to their fixed values."""
        post = self.datatree["posterior"]
        if name in post.data_vars:
            arr = post[name].values
            return arr.reshape((-1,) + arr.shape[2:])
        fixed = self.hyperparameters.get(name)
        if fixed is None or isinstance(fixed, dist.Distribution):
            raise KeyError(f"no posterior variable {name!r}; have {sorted(post.data_vars)}")
        n = post.sizes["chain"] * post.sizes["draw"]
        return np.full((n,), float(fixed))

    def predict(self, X_test=None, *, cross_gram=None, test_gram=None, batch_size: int = 256) -> PredictiveMixture:
        r"""Posterior predictive mixture of the outputs at test inputs.

        ``X_test`` is ``(N0, P*)`` for the linear kernel; for a user Gram matrix pass
        ``cross_gram`` :math:`K(X, X_*)` ``(P, P*)`` and ``test_gram`` ``(P*, P*)``.
        """
        test = self.data.test_kernel(X_test, cross_gram=cross_gram, test_gram=test_gram)
        return PredictiveMixture(
            self.draws("Q"), self.draws("lambda_star"), self.draws("noise_variance"), self.data, test, batch_size
        )

    def summary(self, var_names=None, **kwargs):
        """``arviz.summary`` of the posterior (default variables: ``Q`` and hyperparameters)."""
        import arviz_stats

        if var_names is None:
            post = self.datatree["posterior"]
            var_names = [v for v in ("Q", "ratio", "lambda_star", "noise_variance") if v in post.data_vars]
        return arviz_stats.summary(self.datatree, var_names=var_names, **kwargs)

    def diagnostics(self) -> Diagnostics:
        """Divergences, max R-hat and min bulk ESS over ``Q`` and the inferred hyperparameters
        (variables whose draws are all equal, like the NNGP's ``Q``, are skipped; R-hat needs
        two or more chains, else it is NaN)."""
        import arviz_stats

        post = self.datatree["posterior"]
        names = tuple(
            v for v in ("Q", "ratio", "lambda_star", "noise_variance")
            if v in post.data_vars and np.ptp(post[v].values) > 0
        )
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
        return (
            f"PosteriorFit(prior={self.prior!r}, chains={post.sizes['chain']}, draws={post.sizes['draw']}, "
            f"divergences={self.num_divergences})"
        )


def check_sampler_settings(seed, target_accept_prob):
    """Seed and NUTS acceptance target, shared by :func:`fit` and SBC."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if not (isinstance(target_accept_prob, (float, int)) and 0 < target_accept_prob < 1):
        raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob!r}")


def _validate_fit_args(num_warmup, num_samples, num_chains, chain_method, seed, target_accept_prob, max_tree_depth):
    check_positive_int("num_warmup", num_warmup, minimum=0)
    check_positive_int("num_samples", num_samples)
    check_positive_int("num_chains", num_chains)
    check_positive_int("max_tree_depth", max_tree_depth)
    if num_samples * num_chains > MAX_STORED_DRAWS:
        raise ValueError(
            f"num_chains * num_samples = {num_chains * num_samples:.3g} draws exceeds {MAX_STORED_DRAWS:.0e}; "
            "they could not be stored -- use fewer draws (thin, or fewer chains)"
        )
    if chain_method not in _CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {_CHAIN_METHODS}, got {chain_method!r}")
    check_sampler_settings(seed, target_accept_prob)


def fit(
    data: RegressionData,
    prior,
    *,
    lambda_star=1.0,
    noise_variance=1.0,
    ratio: dist.Distribution | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    chain_method: str = "auto",
    seed: int = 0,
    progress_bar: bool | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    log_likelihood: bool = True,
    output_names=None,
) -> PosteriorFit:
    r"""Sample the posterior of a deep linear network with NUTS.

    .. math:: \pi(\text{latents}, \theta \mid Y) \propto N(\operatorname{vec} Y; 0,
        \lambda_* Q \otimes K + \sigma^2 I)\; \pi(\text{latents})\, \pi(\theta)

    Parameters
    ----------
    data : RegressionData
        ``RegressionData.linear(X, Y)`` or ``RegressionData.from_gram(K, Y)``; its
        precision (float32/float64) is the precision of the run.
    prior : FiniteWidthPrior | ProportionalLimitPrior | NNGPPrior
    lambda_star, noise_variance : float or numpyro Distribution
        Fixed values or priors (see :func:`~deeplinear.models.deep_linear_model`).
    ratio : numpyro Distribution, optional
        Prior over ``a`` (proportional limit only).
    num_warmup, num_samples, num_chains : int
    chain_method : {"auto", "sequential", "parallel", "vectorized"}
        ``"auto"``: ``"parallel"`` when there are at least ``num_chains`` JAX devices,
        else ``"sequential"``.
    seed : int
        Same seed, same draws (on the same device).
    progress_bar : bool, optional
        Default: on in Jupyter or a terminal, off otherwise.
    log_likelihood : bool, default True
        Store the pointwise leave-one-input-out terms (``O(S P R D^2)``).
    output_names : sequence, optional
        Coordinates of the ``output`` dimension.

    Returns
    -------
    PosteriorFit

    Warns
    -----
    ConvergenceWarning
        On divergent transitions or R-hat of ``Q`` above 1.01.
    PrecisionWarning
        Before sampling, when float32 cannot resolve ``noise_variance`` against the labels
        (:func:`~deeplinear.likelihood.warn_if_unresolvable_in_float32`).
    """
    check_model_args(data, prior, lambda_star, noise_variance, ratio)
    _validate_fit_args(num_warmup, num_samples, num_chains, chain_method, seed, target_accept_prob, max_tree_depth)
    if output_names is not None and len(output_names) != data.num_outputs:
        raise ValueError(f"output_names must have D = {data.num_outputs} entries, got {len(output_names)}")
    warn_if_unresolvable_in_float32(data, noise_variance, lambda_star, stacklevel=3,
                                    q_varies=not isinstance(prior, NNGPPrior))
    hyper = {"lambda_star": lambda_star, "noise_variance": noise_variance, "ratio": ratio}
    dims, coords = _dims_and_coords(prior, data, output_names)
    model_kwargs = dict(lambda_star=lambda_star, noise_variance=noise_variance, ratio=ratio)

    if not has_latent_sites(prior, lambda_star, noise_variance, ratio):
        dt = _exact_nngp_tree(data, num_chains, num_samples, dims, coords)
        mcmc = None
    else:
        if chain_method == "auto":
            chain_method = "parallel" if jax.local_device_count() >= num_chains else "sequential"
        if progress_bar is None:
            progress_bar = _interactive()
        kernel = NUTS(
            deep_linear_model,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            init_strategy=init_to_median(num_samples=15),
        )
        mcmc = MCMC(
            kernel,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            chain_method=chain_method,
            progress_bar=progress_bar,
        )
        mcmc.run(jax.random.PRNGKey(seed), data, prior, extra_fields=("diverging",), **model_kwargs)
        import arviz_base

        dt = arviz_base.from_numpyro(mcmc, dims=dims, coords=coords, log_likelihood=False)

    result = PosteriorFit(dt, prior, data, hyper, mcmc)
    if log_likelihood:
        _add_loo_group(result)
    if mcmc is not None:
        _warn_on_convergence(result)
    return result


def _exact_nngp_tree(data, num_chains, num_samples, dims, coords):
    """DataTree of the exact NNGP posterior: ``Q = I`` in every draw (nothing is random)."""
    import arviz_base

    D = data.num_outputs
    q = np.broadcast_to(np.eye(D), (num_chains, num_samples, D, D)).copy()
    return arviz_base.from_dict(
        {"posterior": {"Q": q}, "observed_data": {"Y": np.asarray(data.labels)}},
        dims={k: v for k, v in dims.items() if k in ("Q", "Y")},
        coords={k: v for k, v in coords.items() if k in ("output", "output_bis", "obs")},
    )


def _add_loo_group(result: PosteriorFit):
    post = result.datatree["posterior"]
    C, S = post.sizes["chain"], post.sizes["draw"]
    data = result.data
    q = jnp.asarray(result.draws("Q"), data.dtype)
    lam = jnp.asarray(result.draws("lambda_star"), data.dtype)
    noise = jnp.asarray(result.draws("noise_variance"), data.dtype)

    ll = np.asarray(loo_log_likelihood_draws(q, lam, noise, data)).reshape(C, S, data.num_obs)
    ds = xr.Dataset(
        {"Y": (("chain", "draw", "obs"), ll)},
        coords={"chain": post["chain"].values, "draw": post["draw"].values, "obs": np.arange(data.num_obs)},
        attrs={"description": "pointwise leave-one-input-out log p(y_i | y_-i, theta) (non-factorized Gaussian)"},
    )
    result.datatree["log_likelihood"] = xr.DataTree(ds)


def _warn_on_convergence(result: PosteriorFit):
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
    if msgs:
        warnings.warn("; ".join(msgs), ConvergenceWarning, stacklevel=3)
