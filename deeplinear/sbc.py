r"""Simulation-based calibration of the posterior sampler (Talts et al. 2018; Modrák et al. 2023).

For ``s = 1..S``: draw :math:`\theta_s` from the prior, labels :math:`Y_s \sim p(Y\mid\theta_s)`,
run NUTS on :math:`p(\theta \mid Y_s)`, keep ``M`` thinned draws :math:`\theta_s^{(m)}`, and
record for each test quantity :math:`f` the rank

.. math:: r_s = \#\{m : f(\theta_s^{(m)}, Y_s) < f(\theta_s, Y_s)\} \in \{0, \dots, M\}

(ties broken uniformly at random). If the sampler draws from the exact posterior,
:math:`r_s` is uniform on :math:`\{0..M\}` and the fractional ranks
:math:`u_s = (r_s + V_s)/(M+1)`, :math:`V_s \sim U(0,1)`, are uniform on ``(0, 1)``.

Test quantities: the entries of ``Q`` (diagonal and below), the inferred hyperparameters
(``lambda_star``, ``noise_variance``, ``ratio``), and the data-dependent log-likelihood
:math:`\log p(Y_s \mid \theta)` (Modrák et al. 2023), which is sensitive to errors that
leave every marginal calibrated.

Uniformity is judged by the ECDF of ``u`` against simultaneous bands
(``arviz_stats``' simulation method; Säilynoja et al. 2022) and by a chi-square test on
a rank histogram. The fits are batched: one NUTS driver (:func:`deeplinear.sampler.nuts_kernel`)
is ``vmap``-ed over simulated data sets, compiled once per model structure and batch size and
reused across calls (labels, inputs, ratio and hyperparameter values are arguments; see
``labels`` in :func:`~deeplinear.models.deep_linear_model`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as dist
from numpyro.infer import Predictive
from scipy import stats

from deeplinear._devices import spread
from deeplinear._executor import check_executor, run_with_retry
from deeplinear._matmul import full_precision_jit
from deeplinear._types import (
    ArrayLike,
    Executor,
    InterceptLike,
    KeyLike,
    NoiseCorrelationLike,
    NoiseVarianceLike,
    ScaleLike,
)
from deeplinear._validation import check_positive_int, check_probability, interactive, raw_key
from deeplinear.inference import check_sampler_settings
from deeplinear.likelihood import KroneckerNormal
from deeplinear.models import ModelSpec, NoiseArguments
from deeplinear.priors import NNGPPrior, VbarPrior
from deeplinear.sampler import model_of_arguments, nuts_kernel

if TYPE_CHECKING:  # xarray and matplotlib load on first use, not on import
    import xarray as xr
    from matplotlib.figure import Figure

    from deeplinear.data import RegressionData

__all__ = ["simulation_based_calibration", "SBCResult", "SBCTaskError"]


def _quantity_names(spec: ModelSpec):
    D = spec.num_outputs
    names = []
    if not isinstance(spec.prior, NNGPPrior):
        names += [f"Q[{r},{s}]" for r in range(D) for s in range(r + 1)]
    for h in spec.inferred:
        if h == "noise_variance" and spec.noise_model != "scalar":
            names += [f"noise_variance[{d}]" for d in range(D)]
        elif h == "intercept":
            names += [f"intercept[{d}]" for d in range(D)]
        elif h == "noise_correlation":
            names += [f"noise_correlation[{r},{s}]" for r in range(D) for s in range(r)]
        else:
            names.append(h)
    return names + ["log_likelihood"]


def _quantities(draws, labels, model_args, inferred):
    """Test quantities ``(..., k)`` from (constrained) draws with leading batch dims (the order of
    :func:`_quantity_names`); ``model_args`` is :meth:`ModelSpec.model_arguments`."""
    prior, fixed_lam, fixed_noise, _, data, fixed_intercept = model_args
    q = draws["Q"]
    batch = q.shape[:-2]
    dtype = q.dtype
    cols = []
    if not isinstance(prior, NNGPPrior):
        rows, cols_ = np.tril_indices(prior.num_outputs)
        order = np.lexsort((cols_, rows))  # row-major over the lower triangle
        cols.append(q[..., rows[order], cols_[order]])
    for h in inferred:
        if h == "noise_correlation":
            D = q.shape[-1]
            rows, cols_ = np.tril_indices(D, k=-1)
            order = np.lexsort((cols_, rows))
            cols.append(draws[h][..., rows[order], cols_[order]])
        else:
            cols.append(draws[h].reshape(batch + (-1,)))
    lam = draws["lambda_star"] if "lambda_star" in draws else jnp.broadcast_to(fixed_lam, batch)
    if isinstance(fixed_noise, NoiseArguments):
        noise = draws["noise_covariance"]
    else:
        noise = draws["noise_variance"] if "noise_variance" in draws else jnp.broadcast_to(fixed_noise, batch)
    if noise.shape[:len(batch)] != batch:  # fixed covariance: a deterministic site without the batch dims
        noise = jnp.broadcast_to(noise, batch + noise.shape[-2:])
    flat = lambda x: x.reshape((-1,) + x.shape[len(batch):])  # noqa: E731
    if fixed_intercept is None:
        intercept = jnp.zeros(batch + (q.shape[-1],), dtype)
    elif "intercept" in draws:
        intercept = draws["intercept"]
    else:
        intercept = jnp.broadcast_to(fixed_intercept, batch + fixed_intercept.shape)

    def loglik_one(qq, ll, nn, mu):
        mu = None if fixed_intercept is None else mu
        return KroneckerNormal.for_draw(qq, ll, nn, data, intercept=mu).log_prob(labels)

    loglik = jax.vmap(loglik_one)(flat(q), flat(lam), flat(noise), flat(intercept)).reshape(batch + (1,))
    cols.append(loglik)
    return jnp.concatenate([c.astype(dtype) for c in cols], axis=-1)


@partial(full_precision_jit, static_argnames=("num_simulations", "inferred"))
def _simulate(key, model_args, *, num_simulations, inferred):
    """Draws of everything from the prior predictive (``Y`` included) and their test quantities."""
    truth = Predictive(model_of_arguments, num_samples=num_simulations)(key, model_args, observed=False)
    labels = truth["Y"]
    draws = {k: v for k, v in truth.items() if k != "Y"}
    return labels, jax.vmap(lambda d, y: _quantities(d, y, model_args, inferred))(draws, labels)


@partial(full_precision_jit, static_argnames=("num_warmup", "thin", "num_draws", "max_tree_depth", "inferred"))
def _run_simulations(keys, labels, model_args, target_accept_prob, *, num_warmup, thin, num_draws, max_tree_depth,
                     inferred):
    """NUTS on each simulated data set (``vmap`` over ``keys``/``labels``): ``num_warmup`` adaptation
    steps, then ``num_draws`` draws ``thin`` transitions apart; their test quantities and the
    divergent transitions of the sampling phase."""

    def one_simulation(key, y):
        state, sample, postprocess = nuts_kernel(model_args, key, num_warmup, target_accept_prob, max_tree_depth,
                                                 labels=y)
        state = jax.lax.fori_loop(0, num_warmup, lambda _, s: sample(s), state)

        def thinned(carry, _):
            def step(_, c):
                s_next = sample(c[0])
                return s_next, c[1] + s_next.diverging  # the transition just made, not the one before

            carry = jax.lax.fori_loop(0, thin, step, carry)
            return carry, carry[0].z

        (state, div), zs = jax.lax.scan(thinned, (state, jnp.zeros((), jnp.int32)), None, length=num_draws)
        return _quantities(jax.vmap(postprocess)(zs), y, model_args, inferred), div

    return jax.vmap(one_simulation)(keys, labels)


class SBCTaskError(RuntimeError):
    """A batch of simulations failed on the executor twice (its first try and one retry)."""


def _checked_executor(executor, spec: ModelSpec) -> str:
    """``executor`` is a ``concurrent.futures.Executor`` and ``spec`` can be written down (tasks ship
    its JSON); returns the JSON."""
    check_executor(executor)
    try:
        return spec.to_json()
    except ValueError as err:
        raise ValueError(f"executor= ships the model specification as JSON, and this one cannot be written: {err}"
                         ) from None


def _batch_task(spec_json: str, data, keys, labels, target_accept_prob: float, settings: dict, x64: bool):
    """One batch of simulations in a worker: rebuild the model arguments from the written
    specification and the data's arrays, run the compiled batch program (compiled once per worker
    process and reused), return NumPy arrays. ``x64``: the caller's precision."""
    with jax.enable_x64(x64):
        spec = ModelSpec.from_json(spec_json)
        data = jax.tree_util.tree_map(jnp.asarray, data)
        model_args = spec.model_arguments(data)
        accept = jnp.asarray(target_accept_prob, data.dtype)
        qs, div = _run_simulations(*spread((np.asarray(keys), np.asarray(labels)), len(keys)), model_args, accept,
                                   **settings)
        return np.asarray(qs), np.asarray(div)


def _run_on_executor(executor, spec_json, data, keys, labels, indices, target_accept_prob, settings, progress=None):
    """Every batch ``indices[b]`` as one task; results in batch order. A failed task is submitted once
    more; batches that fail twice raise :class:`SBCTaskError` (after the others finished)."""
    host_data = jax.tree_util.tree_map(np.asarray, data)
    keys, labels = np.asarray(keys), np.asarray(labels)
    x64 = bool(jax.config.jax_enable_x64)

    def submit(pool, b):
        return pool.submit(_batch_task, spec_json, host_data, keys[indices[b]], labels[indices[b]],
                           float(target_accept_prob), settings, x64)

    results, failed = run_with_retry(executor, range(len(indices)), submit,
                                     None if progress is None else lambda *_: progress.update(1))
    if failed:
        lines = [f"simulations {indices[b].min()}..{indices[b].max()} (batch {b}): {type(e1).__name__}: {e1}; "
                 f"retry: {type(e2).__name__}: {e2}" for b, (e1, e2) in sorted(failed.items())]
        raise SBCTaskError(f"{len(failed)} of {len(indices)} SBC batches failed twice on the executor:\n"
                           + "\n".join(lines))
    return [results[b] for b in range(len(indices))]


class SBCResult:
    r"""Ranks from :func:`simulation_based_calibration`.

    Attributes
    ----------
    ranks : dict[str, numpy.ndarray]
        For each test quantity, the ``(S,)`` integer ranks in ``0..M``.
    num_draws : int
        ``M``, the number of (thinned) posterior draws per simulation.
    divergences : numpy.ndarray
        ``(S,)`` divergent transitions per simulation (sampling phase, all iterations).
    description : str
        The configuration (prior, hyperparameters, data shape, sampler settings).
    """

    def __init__(self, ranks: dict[str, np.ndarray], num_draws: int, divergences: ArrayLike, description: str,
                 seed: int = 0) -> None:
        self.ranks = ranks
        self.num_draws = int(num_draws)
        self.divergences = np.asarray(divergences)
        self.description = description
        self._seed = int(seed)

    @property
    def num_simulations(self) -> int:
        """``S``, the number of simulated data sets."""
        return len(next(iter(self.ranks.values())))

    def pit(self) -> dict[str, np.ndarray]:
        r"""Fractional ranks :math:`u_s = (r_s + V_s)/(M + 1)`, uniform on ``(0, 1)`` when
        calibrated (fixed jitter seed, so repeated calls agree)."""
        rng = np.random.default_rng(self._seed + 7)
        return {k: (r + rng.uniform(size=r.shape)) / (self.num_draws + 1) for k, r in self.ranks.items()}

    def uniformity(self, prob: float = 0.99, num_bins: int | None = None,
                   band_simulations: int = 5000) -> list[dict[str, Any]]:
        r"""Test each quantity's ranks for uniformity.

        Returns a list of dicts, one per quantity: ``inside_band`` (the ECDF of the
        fractional ranks lies inside the simultaneous band; this is the pass/fail
        criterion), ``max_ecdf_deviation``, and, as a second opinion, the chi-square
        statistic and p-value of a ``num_bins``-bin rank histogram (default
        ``min(20, S // 5)`` bins) with ``chi2_flag`` set when ``p < (1 - prob)/k``. The band
        is family-wise over the ``k`` quantities of this configuration: each quantity's band
        has level ``1 - (1 - prob)/k`` (Bonferroni), so a calibrated sampler passes with
        probability at least ``prob``.
        """
        from arviz_stats.ecdf_utils import ecdf_pit

        prob = check_probability("prob", prob)
        k = len(self.ranks)
        per_quantity = 1 - (1 - prob) / k
        S = self.num_simulations
        bins = num_bins if num_bins is not None else max(2, min(20, S // 5))
        rows = []
        for i, (name, u) in enumerate(self.pit().items()):
            rng = np.random.default_rng(self._seed + 100 + i)
            x, ecdf, lower, upper = ecdf_pit(u, per_quantity, band_simulations, rng=rng)
            inside = bool(np.all((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12)))
            counts = np.histogram(u, bins=bins, range=(0, 1))[0]
            chi2, p = stats.chisquare(counts)
            rows.append(
                {
                    "quantity": name,
                    "inside_band": inside,
                    "max_ecdf_deviation": float(np.max(np.abs(ecdf - x))),
                    "chi2": float(chi2),
                    "chi2_bins": bins,
                    "chi2_pvalue": float(p),
                    "chi2_flag": bool(p < (1 - prob) / k),
                    "passed": inside,
                }
            )
        return rows

    def passed(self, prob: float = 0.99) -> bool:
        """True when every quantity's ECDF is inside its band (:meth:`uniformity`, family-wise level
        ``prob``). The chi-square flag is a second opinion, reported but not part of the verdict."""
        return all(row["passed"] for row in self.uniformity(prob))

    def to_datatree(self) -> xr.DataTree:
        """The fractional ranks as an ArviZ DataTree (group ``prior_sbc``, ``draw`` = simulation)."""
        import arviz_base

        return arviz_base.from_dict({"prior_sbc": {k: v[None, :] for k, v in self.pit().items()}})

    def plot(self, prob: float = 0.99, band_simulations: int = 5000) -> Figure:
        r"""ECDF-difference plot of each quantity's fractional ranks with its simultaneous band
        (:func:`deeplinear.plotting.plot_sbc`). Returns a matplotlib Figure."""
        from deeplinear.plotting import plot_sbc

        return plot_sbc(self, prob, band_simulations)

    def table(self, prob: float = 0.99) -> str:
        """Plain-text table of :meth:`uniformity`."""
        lines = [f"{'quantity':<16} {'in band':>7} {'max|ECDF-u|':>11} {'chi2 p':>8} {'chi2 flag':>9}"]
        for row in self.uniformity(prob):
            lines.append(
                f"{row['quantity']:<16} {str(row['inside_band']):>7} {row['max_ecdf_deviation']:>11.3f} "
                f"{row['chi2_pvalue']:>8.3f} {str(row['chi2_flag']):>9}"
            )
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"SBCResult({self.description}; simulations={self.num_simulations}, draws={self.num_draws}, "
            f"quantities={list(self.ranks)}, divergences={int(self.divergences.sum())})"
        )


def _check_sbc_args(num_simulations, num_warmup, num_samples, thin, batch_size, target_accept_prob, max_tree_depth,
                    progress_bar):
    check_sampler_settings(num_warmup, num_samples, target_accept_prob, max_tree_depth, progress_bar)
    check_positive_int("num_simulations", num_simulations)
    check_positive_int("thin", thin)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if num_samples % thin:
        raise ValueError(f"num_samples = {num_samples} must be a multiple of thin = {thin}")
    if num_simulations * (num_samples // thin) > 10**8:
        raise ValueError(
            f"num_simulations * num_samples // thin = {num_simulations * (num_samples // thin):.3g} ranked draws "
            "exceeds 1e8; use fewer simulations or a larger thin"
        )
    if num_samples // thin < 2:
        raise ValueError(f"num_samples // thin = {num_samples // thin}: need at least 2 posterior draws per simulation")


def simulation_based_calibration(
    data: RegressionData,
    prior: VbarPrior | ModelSpec,
    *,
    lambda_star: ScaleLike = 1.0,
    noise_variance: NoiseVarianceLike = 1.0,
    ratio: dist.Distribution | None = None,
    noise_model: str = "scalar",
    noise_correlation: NoiseCorrelationLike | None = None,
    intercept: InterceptLike | None = None,
    num_simulations: int = 100,
    num_warmup: int = 500,
    num_samples: int = 1000,
    thin: int = 10,
    batch_size: int | None = None,
    key: KeyLike = 0,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress_bar: bool | None = None,
    executor: Executor | None = None,
) -> SBCResult:
    r"""Simulation-based calibration of :func:`~deeplinear.inference.fit`'s sampler for one configuration.

    Uses the inputs (kernel) of ``data``; its labels are replaced by ``num_simulations``
    data sets simulated from the prior. Each data set gets one NUTS chain (the same
    settings as :func:`~deeplinear.inference.fit`: a start near the prior mean, diagonal mass matrix,
    ``num_warmup`` adaptation steps) and ``num_samples / thin`` posterior draws are ranked.
    Simulations run ``batch_size`` at a time through one jitted, ``vmap``-ed driver
    (compiled once).

    Parameters
    ----------
    data : RegressionData
        Inputs (linear kernel or Gram matrix); the labels only fix ``P`` and ``D``.
    prior, lambda_star, noise_variance, ratio, noise_model, noise_correlation, intercept
        The configuration, as in :func:`~deeplinear.fit` (``prior`` may be a
        :class:`~deeplinear.models.ModelSpec`); at least one
        latent quantity must be inferred (an NNGP with fixed hyperparameters has an exact,
        point-mass posterior: nothing to calibrate).
    num_simulations : int, default 100
    num_warmup, num_samples, thin : int
        NUTS settings per simulation; ``M = num_samples // thin`` draws are ranked. Thin
        enough that the ``M`` draws are nearly independent (autocorrelated draws make the
        rank histogram U-shaped even for a correct sampler).
    batch_size : int, optional
        Simulations per compiled batch (default ``min(num_simulations, 100)``).
    key : PRNG key or int, default 0
        Same key, same ranks (on the same device), whatever the executor: every simulation's
        labels and NUTS key come from ``key`` and its index, and the batches are the same.
    executor : concurrent.futures.Executor, optional
        Run the batches as tasks on an executor: a local ``ProcessPoolExecutor`` (use the
        ``spawn`` or ``forkserver`` start method: forking a process in which JAX runs can
        deadlock) or a Dask cluster's ``client.get_executor()``. Each task ships arrays, the
        written specification (:meth:`~deeplinear.ModelSpec.to_json`) and keys, never a compiled
        object; a worker compiles the batch program once and reuses it for its later tasks. A
        task that fails is submitted once more; if it fails again, a :class:`SBCTaskError` names its
        simulations and both errors. Default: in this process. Limit XLA's threads per worker
        process (e.g. ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false"`` and one worker per core).

    Returns
    -------
    SBCResult

    Examples
    --------
    >>> import numpy as np
    >>> from deeplinear import RegressionData, FiniteWidthPrior, simulation_based_calibration
    >>> data = RegressionData.linear(np.eye(4, 2), np.zeros((4, 1)))
    >>> res = simulation_based_calibration(data, FiniteWidthPrior.from_depth_width(2, 4, 1),
    ...     num_simulations=8, num_warmup=50, num_samples=40, thin=4, progress_bar=False)
    >>> res.num_simulations, res.num_draws, list(res.ranks)
    (8, 10, ['Q[0,0]', 'log_likelihood'])
    """
    spec = ModelSpec.build(prior, lambda_star, noise_variance, ratio, noise_model, noise_correlation, intercept)
    spec.check_data(data)
    data.require_rows("simulation-based calibration (simulated labels)")
    spec.prior.warn_if_underflows(data.dtype, stacklevel=3)
    _check_sbc_args(num_simulations, num_warmup, num_samples, thin, batch_size, target_accept_prob, max_tree_depth,
                    progress_bar)
    rng_key = raw_key(key)
    spec_json = None if executor is None else _checked_executor(executor, spec)
    if not spec.has_latent_sites:
        raise ValueError(
            "nothing to calibrate: with NNGPPrior and fixed lambda_star and noise_variance the posterior is "
            "exact (Q = I); give lambda_star or noise_variance a prior distribution"
        )
    if progress_bar is None:
        progress_bar = interactive()
    names = _quantity_names(spec)
    num_draws = num_samples // thin
    batch_size = min(num_simulations, 100) if batch_size is None else min(batch_size, num_simulations)
    model_args = spec.model_arguments(data)
    inferred = spec.inferred

    k_prior, _, k_runs, k_ties = jax.random.split(rng_key, 4)
    labels, true_q = _simulate(k_prior, model_args, num_simulations=num_simulations, inferred=inferred)
    accept = jnp.asarray(target_accept_prob, data.dtype)
    settings = {"num_warmup": num_warmup, "thin": thin, "num_draws": num_draws, "max_tree_depth": max_tree_depth,
                "inferred": inferred}
    keys = jax.random.split(k_runs, num_simulations)
    num_batches = math.ceil(num_simulations / batch_size)
    batches: Iterable[int] = range(num_batches)
    if progress_bar:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"SBC ({num_simulations} simulations)", unit="batch")
    indices = [np.arange(b * batch_size, (b + 1) * batch_size) % num_simulations for b in range(num_batches)]
    if executor is None:
        results = []
        for b in batches:
            batch = spread((keys[indices[b]], labels[indices[b]]), batch_size)  # split over the local devices
            qs, div = _run_simulations(*batch, model_args, accept, **settings)
            results.append((np.asarray(qs), np.asarray(div)))
    else:
        try:
            results = _run_on_executor(executor, spec_json, data, keys, labels, indices, target_accept_prob,
                                       settings, progress=batches if progress_bar else None)
        finally:
            if progress_bar:
                batches.close()  # type: ignore[attr-defined]  # the tqdm bar
    keeps = [min(batch_size, num_simulations - b * batch_size) for b in range(num_batches)]  # drop the padding
    draws = np.concatenate([qs[:keep] for (qs, _), keep in zip(results, keeps)])  # (S, M, k)
    divergences = np.concatenate([div[:keep] for (_, div), keep in zip(results, keeps)])
    true_q = np.asarray(true_q)  # (S, k)

    if not np.all(np.isfinite(draws)) or not np.all(np.isfinite(true_q)):
        raise FloatingPointError("non-finite test quantities in SBC; check the configuration's numerical range")
    below = np.sum(draws < true_q[:, None, :], axis=1)
    ties = np.sum(draws == true_q[:, None, :], axis=1)
    tie_break = np.random.default_rng(int(jax.random.randint(k_ties, (), 0, 2**31 - 1)))
    ranks = below + np.floor(tie_break.uniform(size=below.shape) * (ties + 1)).astype(int)
    description = (
        f"{spec.describe()}, P={data.num_obs}, D={data.num_outputs}, dtype={data.dtype}, warmup={num_warmup}, "
        f"samples={num_samples}, thin={thin}"
    )
    seed = int(rng_key[-1])  # the tie-break and band jitter of SBCResult follow the key
    return SBCResult({n: ranks[:, i] for i, n in enumerate(names)}, num_draws, divergences, description, seed)
