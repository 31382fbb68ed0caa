r"""The compiled NUTS sampler: one XLA program per model structure, reused for new data.

NumPyro's ``MCMC`` jits fresh closures with the data baked in as constants, so every fit
compiles again (65--86% of a small fit's time). Here the model is a module-level function of
one pytree argument -- the prior (its ratio is a leaf), the hyperparameters (fixed values as
arrays, priors as NumPyro distributions, whose parameters are leaves) and the
:class:`~deeplinear.data.RegressionData` -- so JAX's own cache keys the compiled programs on
what changes the program: the prior's structure (kind, widths, ``D``, number of steps), which
hyperparameters are inferred and with which distribution family, the data's shapes and
precision, the number of chains and the NUTS settings. A second fit with new labels, a new
kernel, a new ratio or new fixed hyperparameter values of the same shapes compiles nothing.

Two programs make a run:

* :func:`_initial_states` -- for every chain, ``init_to_median`` starting values and NUTS's
  initial state (step size 1, identity mass matrix);
* :func:`_advance` -- NUTS transitions ``start..stop`` for all chains at once (``vmap``: one
  program, not one compilation per chain), windowed adaptation during the first
  ``num_warmup`` iterations (Stan's schedule, NumPyro's implementation), storing the draws
  and sample statistics of the sampling iterations in preallocated buffers.

A progress bar calls :func:`_advance` on successive slices of the iterations (the same
compiled program each time: ``start``/``stop`` are data), so no host callback sits inside
the program and the persistent compilation cache (:mod:`deeplinear.cache`) can store it.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import init_to_median
from numpyro.infer.hmc import hmc
from numpyro.infer.util import ParamInfo, initialize_model

from deeplinear.models import model_body

__all__ = ["SamplerRun", "run_nuts", "nuts_kernel", "model_of_arguments", "CHAIN_METHODS"]

CHAIN_METHODS = ("auto", "vectorized", "sequential", "parallel")

INIT_MEDIAN_SAMPLES = 15  # prior draws whose median starts each chain (NumPyro's init_to_median)
PROGRESS_UPDATES = 20  # slices of the run shown by a progress bar
SAMPLE_STATS = ("diverging", "energy", "lp", "acceptance_rate", "n_steps", "step_size")


class SamplerRun(NamedTuple):
    """Output of :func:`run_nuts`: constrained draws (every sample and deterministic site,
    ``(chains, draws, ...)``) and sample statistics (``(chains, draws)``; ArviZ's names:
    ``diverging``, ``energy``, ``lp`` (the log density up to a constant), ``acceptance_rate``,
    ``n_steps`` (leapfrog steps), ``step_size``)."""

    samples: dict
    sample_stats: dict


def model_of_arguments(args, observed=True, labels=None):
    """The model as a function of one pytree ``(prior, lambda_star, noise_variance, ratio, data, intercept)``
    (:meth:`deeplinear.models.ModelSpec.model_arguments`; the body is
    :func:`deeplinear.models.model_body`), conditioned on ``labels`` when given (simulation-based
    calibration), else on ``data``'s labels; ``observed=False`` samples the labels."""
    model_body(*args, observed=observed, labels=labels)


def nuts_kernel(model_args, key, num_warmup, target_accept_prob, max_tree_depth, init_params=None, labels=None):
    """NumPyro's NUTS functions for :func:`model_of_arguments` and, for one chain, its initial state.

    Returns ``(state, sample, postprocess)``: ``sample(state)`` is one NUTS transition (with
    windowed adaptation during the first ``num_warmup``), ``postprocess(z)`` the constrained
    sites and ``Q``. Without ``init_params`` the chain starts from ``init_to_median``; with
    them (a state's ``ParamInfo``) the initial state is only built to set up ``sample`` (the
    adaptation schedule lives in ``hmc``'s closure) and the caller discards it."""
    k_init, k_kernel = jax.random.split(key)
    kwargs = {"labels": labels}
    info, potential_gen, postprocess_gen, _ = initialize_model(
        k_init, model_of_arguments, init_strategy=init_to_median(num_samples=INIT_MEDIAN_SAMPLES), dynamic_args=True,
        model_args=(model_args,), model_kwargs=kwargs,
    )
    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_gen, algo="NUTS")
    state = init_kernel(
        info if init_params is None else init_params, num_warmup, target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth, model_args=(model_args,), model_kwargs=kwargs, rng_key=k_kernel,
    )
    return (state, lambda st: sample_kernel(st, model_args=(model_args,), model_kwargs=kwargs),
            postprocess_gen(model_args, **kwargs))


@partial(jax.jit, static_argnames=("num_warmup", "max_tree_depth"))
def _initial_states(keys, model_args, target_accept_prob, *, num_warmup, max_tree_depth):
    """NUTS's initial state for each chain (``keys`` ``(C,)``)."""
    return jax.vmap(lambda k: nuts_kernel(model_args, k, num_warmup, target_accept_prob, max_tree_depth)[0])(keys)


def _empty_buffers(states, num_samples):
    """Zero buffers ``(C, num_samples, ...)`` for the unconstrained draws and the sample statistics."""
    C = states.i.shape[0]
    dtype = states.energy.dtype
    z = jax.tree_util.tree_map(lambda x: jnp.zeros((C, num_samples) + x.shape[1:], x.dtype), states.z)
    stats = {name: jnp.zeros((C, num_samples), bool if name == "diverging" else dtype) for name in SAMPLE_STATS}
    stats["n_steps"] = jnp.zeros((C, num_samples), jnp.int32)
    return z, stats


def _stats_of(state):
    return {
        "diverging": state.diverging,
        "energy": state.energy,
        "lp": -state.potential_energy,
        "acceptance_rate": state.accept_prob.astype(state.energy.dtype),
        "n_steps": state.num_steps.astype(jnp.int32),
        "step_size": state.adapt_state.step_size.astype(state.energy.dtype),
    }


@partial(jax.jit, static_argnames=("num_warmup", "max_tree_depth"), donate_argnames=("buffers",))
def _advance(states, buffers, start, stop, model_args, target_accept_prob, *, num_warmup, max_tree_depth):
    """Iterations ``start..stop`` (warmup first, then sampling) for all chains; sampling
    iterations write their draw into ``buffers`` at ``iteration - num_warmup``."""

    def chain_kernel(state):
        info = ParamInfo(state.z, state.potential_energy, state.z_grad)
        return nuts_kernel(model_args, state.rng_key, num_warmup, target_accept_prob, max_tree_depth, info)[1]

    sample_kernel = chain_kernel(jax.tree_util.tree_map(lambda x: x[0], states))

    def step(i, carry):
        st, (z_buf, stat_buf) = carry
        st = jax.vmap(sample_kernel)(st)
        j = jnp.maximum(i - num_warmup, 0)
        keep = i >= num_warmup

        def put(buf, value):
            return jnp.where(keep, buf.at[:, j].set(value), buf)

        z_buf = jax.tree_util.tree_map(put, z_buf, st.z)
        stat_buf = {k: put(stat_buf[k], v) for k, v in _stats_of(st).items()}
        return st, (z_buf, stat_buf)

    return jax.lax.fori_loop(start, stop, step, (states, buffers))


@partial(jax.jit, static_argnames=("num_warmup", "max_tree_depth"))
def _constrain(states, z, model_args, *, num_warmup, max_tree_depth):
    """Constrained draws and deterministic sites (``Q``) from unconstrained draws ``(C, S, ...)``."""
    first = jax.tree_util.tree_map(lambda x: x[0], states)
    info = ParamInfo(first.z, first.potential_energy, first.z_grad)
    postprocess = nuts_kernel(model_args, first.rng_key, num_warmup, 0.8, max_tree_depth, info)[2]
    return jax.vmap(jax.vmap(postprocess))(z)


def _chain_sharding(num_chains: int, chain_method: str):
    """Where the chains run: ``None`` (the default device) or a sharding of the chain axis over
    ``gcd(num_chains, devices)`` local devices (``"parallel"``; ``"auto"`` when that is more than one)."""
    if chain_method not in ("parallel", "auto"):
        return None
    devices = jax.local_devices()
    n = math.gcd(num_chains, len(devices))
    if n < 2:
        return None
    mesh = jax.sharding.Mesh(np.array(devices[:n]), ("chain",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("chain"))


def _run_chains(keys, model_args, accept, static, num_samples, bounds, sharding, bar):
    """Initial states, the iterations in slices ``bounds``, then the constrained draws, for the chains of ``keys``."""
    if sharding is not None:
        keys = jax.device_put(keys, sharding)
    states = _initial_states(keys, model_args, accept, **static)
    buffers = _empty_buffers(states, num_samples)
    if sharding is not None:
        buffers = jax.device_put(buffers, sharding)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            states, buffers = _advance(states, buffers, jnp.int32(start), jnp.int32(stop), model_args, accept, **static)
            if bar is not None:
                bar.update(int(stop - start))
    z, stats = buffers
    return _constrain(states, z, model_args, **static), stats


def run_nuts(
    model_args, key, *, num_chains: int, num_warmup: int, num_samples: int, target_accept_prob: float,
    max_tree_depth: int, chain_method: str = "auto", progress_bar: bool = False, description: str = "sample",
) -> SamplerRun:
    """Run ``num_chains`` NUTS chains on :func:`model_of_arguments` ``(model_args)``.

    ``model_args`` is the pytree ``(prior, lambda_star, noise_variance, ratio, data, intercept)`` of
    :meth:`deeplinear.models.ModelSpec.model_arguments` (validated by the caller); ``key`` a raw
    PRNG key, split into one key per chain, so a chain's draws do not depend on ``chain_method``
    (:data:`CHAIN_METHODS`; see :func:`deeplinear.inference.fit`). Same key, same draws."""
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")
    keys = jax.random.split(key, num_chains)
    accept = jnp.asarray(target_accept_prob, model_args[4].dtype)  # the data's precision
    static = {"num_warmup": num_warmup, "max_tree_depth": max_tree_depth}
    total = num_warmup + num_samples
    bounds = np.linspace(0, total, PROGRESS_UPDATES + 1 if progress_bar else 2).round().astype(int)
    groups = [keys[c:c + 1] for c in range(num_chains)] if chain_method == "sequential" else [keys]
    sharding = _chain_sharding(num_chains, chain_method)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total * len(groups), desc=f"{description} ({num_chains} chains)", unit="it")
    try:
        runs = [_run_chains(g, model_args, accept, static, num_samples, bounds, sharding, bar) for g in groups]
    finally:
        if bar is not None:
            bar.close()
    runs = jax.device_get(runs)
    samples, stats = (
        {k: np.concatenate([r[i][k] for r in runs]) for k in runs[0][i]} for i in (0, 1)
    )
    return SamplerRun(samples, stats)
