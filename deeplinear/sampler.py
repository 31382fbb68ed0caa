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

Two programs make a run, both for one chain (``vectorized``: ``vmap``-ed over the chains):

* :func:`_initial_states` -- the chain's start (the median of prior draws, NumPyro's
  ``init_to_median``, with uniform fallbacks where the density is not finite) and NUTS's
  initial state (step size 1, identity mass matrix);
* :func:`_advance` -- NUTS transitions ``start..stop``, windowed adaptation during the first
  ``num_warmup`` iterations (Stan's schedule, NumPyro's implementation), storing the draws
  and sample statistics of the sampling iterations in preallocated buffers.

NUTS runs on the flat vector of all unconstrained latents (fewer leaves for NumPyro's tree
building to carry), and on a CPU the chains run one after another through the one-chain
program: a ``vmap``-ed NUTS step costs as much there as the chains' steps one by one (its
while loops run until the longest trajectory is built) and compiles to a larger program. Both
choices are about compile time; the arithmetic of a transition is NumPyro's.

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
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import init_to_median
from numpyro.infer.hmc import hmc
from numpyro.infer.util import ParamInfo, constrain_fn, potential_energy

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


def _unravel_latents(model_args, labels=None):
    """The function that maps the flat unconstrained vector ``z`` (length ``dim``) to the dict of
    the model's unconstrained latent sites (the inverse of ``ravel_pytree``, sites in sorted order).
    Traces the model once for the sites' shapes; the traced draws are dead code in any program."""
    with handlers.trace() as tr, handlers.seed(rng_seed=0):
        model_of_arguments(model_args, labels=labels)
    latents = {name: biject_to(site["fn"].support).inv(site["value"]) for name, site in tr.items()
               if site["type"] == "sample" and not site["is_observed"]}
    return ravel_pytree(latents)[1]


def _model_functions(model_args, labels, unravel):
    """``(potential_fn_gen, postprocess)`` on the flat vector ``z``: the potential energy
    :math:`U(z) = -\\log p(Y, \\theta(z)) - \\log|\\det J_\\theta(z)|` (NumPyro's ``potential_energy``
    of :func:`model_of_arguments`) and the constrained sites with the deterministic ``Q``.

    NUTS on one flat vector rather than the dict of sites: NumPyro's tree building selects,
    adds and stores every leaf of ``z`` separately, so one leaf instead of several compiles to
    a smaller program (the tree's arithmetic is the same)."""

    def potential_fn_gen(args, labels=None):
        kwargs = {"labels": labels}
        return lambda z: potential_energy(model_of_arguments, (args,), kwargs, unravel(z))

    def postprocess(z):
        return constrain_fn(model_of_arguments, (model_args,), {"labels": labels}, unravel(z),
                            return_deterministic=True)

    return potential_fn_gen, postprocess


INIT_TRIES = 100  # starting points tried before giving up (NumPyro's find_valid_initial_params)
INIT_RADIUS = 2.0  # fallback starts: uniform on [-INIT_RADIUS, INIT_RADIUS] per unconstrained coordinate


def _median_start(key, model_args, labels=None):
    """The flat unconstrained point at the median of ``INIT_MEDIAN_SAMPLES`` prior draws of each
    latent site (NumPyro's ``init_to_median``; one trace of the model)."""
    model = handlers.substitute(handlers.seed(model_of_arguments, key),
                                substitute_fn=init_to_median(num_samples=INIT_MEDIAN_SAMPLES))
    tr = handlers.trace(model).get_trace(model_args, labels=labels)
    latents = {name: biject_to(site["fn"].support).inv(site["value"]) for name, site in tr.items()
               if site["type"] == "sample" and not site["is_observed"]}
    return ravel_pytree(latents)[0]


def _valid_start(key, potential_fn, z_median):
    r"""``ParamInfo(z, U(z), \nabla U(z))`` at the first start where the potential and its gradient
    are finite: ``z_median``, then uniform draws on ``[-INIT_RADIUS, INIT_RADIUS]`` per coordinate
    (NumPyro's ``init_to_uniform``), at most ``INIT_TRIES`` in all (the last is returned either way;
    the first transition then diverges and the chain's statistics show it). One evaluation of
    ``value_and_grad`` in the program, inside the loop."""

    def body(carry):
        i, k, _, _, _ = carry
        k, k_uniform = jax.random.split(k)
        uniform = jax.random.uniform(k_uniform, z_median.shape, z_median.dtype, -INIT_RADIUS, INIT_RADIUS)
        z = jnp.where(i == 0, z_median, uniform)
        pe, grad = jax.value_and_grad(potential_fn)(z)
        return i + 1, k, z, pe, grad

    def searching(carry):
        i, _, _, pe, grad = carry
        return (i == 0) | ((i < INIT_TRIES) & ~(jnp.isfinite(pe) & jnp.all(jnp.isfinite(grad))))

    zero = jnp.zeros((), z_median.dtype)
    _, _, z, pe, grad = jax.lax.while_loop(searching, body, (0, key, z_median, zero, jnp.zeros_like(z_median)))
    return ParamInfo(z, pe, grad)


def nuts_kernel(model_args, key, num_warmup, target_accept_prob, max_tree_depth, init_params=None, labels=None):
    """NumPyro's NUTS functions for :func:`model_of_arguments` on the flat unconstrained vector
    ``z`` and, for one chain, its initial state.

    Returns ``(state, sample, postprocess)``: ``sample(state)`` is one NUTS transition (with
    windowed adaptation during the first ``num_warmup``), ``postprocess(z)`` the constrained
    sites and ``Q``. Without ``init_params`` the chain starts at the median of prior draws
    (:func:`_median_start`, or a fallback: :func:`_valid_start`); with them (a state's
    ``ParamInfo``, ``z`` flat) the initial state is only built to set up ``sample`` (the
    adaptation schedule lives in ``hmc``'s closure) and the caller discards it."""
    k_init, k_kernel = jax.random.split(key)
    kwargs = {"labels": labels}
    potential_fn_gen, postprocess = _model_functions(model_args, labels, _unravel_latents(model_args, labels))
    if init_params is None:
        k_median, k_fallback = jax.random.split(k_init)
        z_median = _median_start(k_median, model_args, labels)
        init_params = _valid_start(k_fallback, potential_fn_gen(model_args, labels), z_median)
    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
    state = init_kernel(
        init_params, num_warmup, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
        model_args=(model_args,), model_kwargs=kwargs, rng_key=k_kernel,
    )
    return state, lambda st: sample_kernel(st, model_args=(model_args,), model_kwargs=kwargs), postprocess


def _batched(fn, vectorized: bool, in_axes):
    """``fn`` for one chain, or ``vmap``-ed over the leading chain axis of the arguments in ``in_axes``."""
    return jax.vmap(fn, in_axes=in_axes) if vectorized else fn


@partial(jax.jit, static_argnames=("num_warmup", "max_tree_depth", "vectorized"))
def _initial_states(keys, model_args, target_accept_prob, *, num_warmup, max_tree_depth, vectorized):
    """NUTS's initial state for one chain (``keys`` one key) or, ``vectorized``, for each chain
    (``keys`` ``(C,)``)."""

    def one(k):
        return nuts_kernel(model_args, k, num_warmup, target_accept_prob, max_tree_depth)[0]

    return _batched(one, vectorized, 0)(keys)


def _empty_buffers(states, num_samples, vectorized):
    """Zero buffers ``([C,] num_samples, ...)`` for the flat unconstrained draws and the sample statistics."""
    lead = (states.i.shape[0], num_samples) if vectorized else (num_samples,)
    dtype = states.energy.dtype
    z = jnp.zeros(lead + states.z.shape[len(lead) - 1:], states.z.dtype)
    stats = {name: jnp.zeros(lead, bool if name == "diverging" else dtype) for name in SAMPLE_STATS}
    stats["n_steps"] = jnp.zeros(lead, jnp.int32)
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


@partial(jax.jit, static_argnames=("num_warmup", "max_tree_depth", "vectorized"), donate_argnames=("buffers",))
def _advance(states, buffers, start, stop, model_args, target_accept_prob, *, num_warmup, max_tree_depth, vectorized):
    """Iterations ``start..stop`` (warmup first, then sampling) of one chain or, ``vectorized``, of
    every chain; a sampling iteration writes its draw into ``buffers`` at ``iteration - num_warmup``."""

    def one_chain(state, buffers):
        info = ParamInfo(state.z, state.potential_energy, state.z_grad)
        sample = nuts_kernel(model_args, state.rng_key, num_warmup, target_accept_prob, max_tree_depth, info)[1]

        def step(i, carry):
            st, (z_buf, stat_buf) = carry
            st = sample(st)
            j = jnp.maximum(i - num_warmup, 0)
            keep = i >= num_warmup

            def put(buf, value):  # a warmup iteration writes back what row 0 holds
                return buf.at[j].set(jnp.where(keep, value, buf[j]))

            stat_buf = {k: put(stat_buf[k], v) for k, v in _stats_of(st).items()}
            return st, (put(z_buf, st.z), stat_buf)

        return jax.lax.fori_loop(start, stop, step, (state, buffers))

    return _batched(one_chain, vectorized, (0, 0))(states, buffers)


@jax.jit
def _constrain(z, model_args):
    """Constrained draws and deterministic sites (``Q``) from flat unconstrained draws ``(n, dim)``."""
    return jax.vmap(_model_functions(model_args, None, _unravel_latents(model_args))[1])(z)


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


def _vectorized(chain_method: str, sharding) -> bool:
    """Whether the chains run ``vmap``-ed in one program: ``"vectorized"``, ``"parallel"`` (sharded),
    and ``"auto"`` on an accelerator. On a CPU ``"auto"`` runs the one-chain program chain after
    chain: a batched NUTS step costs as much as the chains' steps one by one there (its while
    loops run until the longest tree is built) and batching makes the program larger."""
    if chain_method == "auto":
        return sharding is not None or jax.default_backend() != "cpu"
    return chain_method != "sequential"


def _run_chains(keys, model_args, accept, static, num_samples, bounds, sharding, bar):
    """Initial states and the iterations in slices ``bounds`` for the chains of ``keys`` (one
    key when not ``static["vectorized"]``); returns the flat unconstrained draws and the statistics."""
    if sharding is not None:
        keys = jax.device_put(keys, sharding)
    states = _initial_states(keys, model_args, accept, **static)
    buffers = _empty_buffers(states, num_samples, static["vectorized"])
    if sharding is not None:
        buffers = jax.device_put(buffers, sharding)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            states, buffers = _advance(states, buffers, jnp.int32(start), jnp.int32(stop), model_args, accept, **static)
            if bar is not None:
                bar.update(int(stop - start))
    return buffers


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
    sharding = _chain_sharding(num_chains, chain_method)
    vectorized = _vectorized(chain_method, sharding)
    static = {"num_warmup": num_warmup, "max_tree_depth": max_tree_depth, "vectorized": vectorized}
    total = num_warmup + num_samples
    bounds = np.linspace(0, total, PROGRESS_UPDATES + 1 if progress_bar else 2).round().astype(int)
    groups = [keys] if vectorized else list(keys)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total * num_chains, desc=f"{description} ({num_chains} chains)", unit="it")
    try:
        runs = [_run_chains(g, model_args, accept, static, num_samples, bounds, sharding, bar) for g in groups]
    finally:
        if bar is not None:
            bar.close()
    if vectorized:
        (z, stats), = runs
    else:
        z = jnp.stack([r[0] for r in runs])
        stats = {k: jnp.stack([r[1][k] for r in runs]) for k in runs[0][1]}
    flat = z.reshape((num_chains * num_samples,) + z.shape[2:])
    samples = jax.device_get(_constrain(flat, model_args))
    samples = {k: np.asarray(v).reshape((num_chains, num_samples) + np.shape(v)[1:]) for k, v in samples.items()}
    return SamplerRun(samples, {k: np.asarray(v) for k, v in jax.device_get(stats).items()})
