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

Three programs make a run, the first two for one chain (``vectorized``: ``vmap``-ed over the chains):

* :func:`_initial_states` -- the chain's start (the prior's mean, jittered, with uniform
  fallbacks where the density is not finite: :func:`_valid_start`) and NUTS's initial state
  (step size 1, identity mass matrix);
* :func:`_advance` -- NUTS transitions ``start..stop`` (at most :data:`ITERATION_BLOCK`), windowed
  adaptation during the first ``num_warmup`` iterations (Stan's schedule, NumPyro's
  implementation), storing the draws and sample statistics of the sampling iterations in buffers
  of ``ITERATION_BLOCK`` rows, which the host copies out after each call;
* :func:`_constrain` -- the constrained sites and ``Q`` of :data:`CONSTRAIN_BLOCK` draws at a time.

None depends on the number of draws or chains (only ``num_warmup``, which fixes NumPyro's
adaptation schedule, is static), so fits that differ only in those share the programs.

NUTS runs on the flat vector of all unconstrained latents (fewer leaves for NumPyro's tree
building to carry), and on a CPU the chains run one after another through the one-chain
program: a ``vmap``-ed NUTS step costs as much there as the chains' steps one by one (its
while loops run until the longest trajectory is built) and compiles to a larger program. Both
choices are about compile time; the arithmetic of a transition is NumPyro's.

The host calls :func:`_advance` on successive slices of the iterations (the same compiled
program each time: ``start``/``stop`` are data), which also drive the progress bar, so no host
callback sits inside the program and the persistent compilation cache (:mod:`deeplinear.cache`)
can store it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.hmc import HMCState, hmc
from numpyro.infer.util import ParamInfo, constrain_fn, potential_energy

from deeplinear._devices import batch_sharding, padded_blocks, spread
from deeplinear.cache import reuse_traces
from deeplinear.models import model_body

__all__ = ["SamplerRun", "run_nuts", "nuts_kernel", "model_of_arguments", "CHAIN_METHODS"]

CHAIN_METHODS = ("auto", "vectorized", "sequential", "parallel")

PROGRESS_UPDATES = 20  # slices of the run shown by a progress bar
SAMPLE_STATS = ("diverging", "energy", "lp", "acceptance_rate", "n_steps", "step_size")


class SamplerRun(NamedTuple):
    """Output of :func:`run_nuts`: constrained draws (every sample and deterministic site,
    ``(chains, draws, ...)``) and sample statistics (``(chains, draws)``; ArviZ's names:
    ``diverging``, ``energy``, ``lp`` (the log density up to a constant), ``acceptance_rate``,
    ``n_steps`` (leapfrog steps), ``step_size``)."""

    samples: dict
    sample_stats: dict


def model_of_arguments(args: tuple, observed: bool = True, labels: jax.Array | None = None) -> None:
    """The model as a function of one pytree ``(prior, lambda_star, noise_variance, ratio, data, intercept)``
    (:meth:`deeplinear.models.ModelSpec.model_arguments`; the body is
    :func:`deeplinear.models.model_body`), conditioned on ``labels`` when given (simulation-based
    calibration), else on ``data``'s labels; ``observed=False`` samples the labels."""
    model_body(*args, observed=observed, labels=labels)


def _prior_center(site):
    """NumPyro substitution function (used like an ``init_to_*`` strategy): a latent site's prior
    mean where it is finite and in the support, else the image of the unconstrained zero
    (NumPyro's ``init_to_feasible``: e.g. the identity for an LKJ Cholesky factor, 1 for a
    positive site without a finite mean). Draws nothing, so a program that traces it holds no
    sampler (an ``init_to_median`` start sampled every site 15 times, which
    was most of the initial state's compile time for LKJ noise correlations)."""
    if site["type"] != "sample" or site["is_observed"]:
        return None
    fn = site["fn"]
    transform = biject_to(fn.support)
    feasible = transform(jnp.zeros(transform.inverse_shape(fn.shape())))
    try:
        mean = jnp.broadcast_to(fn.mean, fn.shape())
    except (NotImplementedError, AttributeError, ValueError, TypeError):
        return feasible
    usable = jnp.all(jnp.isfinite(mean)) & jnp.all(fn.support(mean))
    return jnp.where(usable, mean, feasible)


def _prior_center_latents(model_args, labels=None) -> dict:
    """The model's latent sites at :func:`_prior_center`, on the unconstrained scale (one trace of
    the model, with no random draws)."""
    tr = handlers.trace(handlers.substitute(model_of_arguments, substitute_fn=_prior_center)).get_trace(
        model_args, labels=labels)
    return {name: biject_to(site["fn"].support).inv(site["value"]) for name, site in tr.items()
            if site["type"] == "sample" and not site["is_observed"]}


def _unravel_latents(model_args, labels=None):
    """The function that maps the flat unconstrained vector ``z`` (length ``dim``) to the dict of
    the model's unconstrained latent sites (the inverse of ``ravel_pytree``, sites in sorted order)."""
    return ravel_pytree(_prior_center_latents(model_args, labels))[1]


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
INIT_JITTER = 0.1  # first start: the prior's center plus uniform(-INIT_JITTER, INIT_JITTER) per coordinate
INIT_RADIUS = 2.0  # fallback starts: uniform on [-INIT_RADIUS, INIT_RADIUS] per unconstrained coordinate


def _valid_start(key, potential_fn, center):
    r"""``ParamInfo(z, U(z), \nabla U(z))`` at the first start where the potential and its gradient
    are finite: first the prior's center (:func:`_prior_center`, unconstrained, flat) jittered by
    :math:`U(-\epsilon, \epsilon)` per coordinate (``INIT_JITTER``: chains start apart, near the
    prior's bulk, as ``init_to_median``'s noisy medians did), then uniform draws on
    ``[-INIT_RADIUS, INIT_RADIUS]`` per coordinate (NumPyro's ``init_to_uniform``), at most
    ``INIT_TRIES`` in all (the last is returned either way; the first transition then diverges
    and the chain's statistics show it). One evaluation of ``value_and_grad`` in the program,
    inside the loop."""

    def body(carry):
        i, k, _, _, _ = carry
        k, k_uniform = jax.random.split(k)
        u = jax.random.uniform(k_uniform, center.shape, center.dtype, -1.0, 1.0)
        z = jnp.where(i == 0, center + INIT_JITTER * u, INIT_RADIUS * u)
        pe, grad = jax.value_and_grad(potential_fn)(z)
        return i + 1, k, z, pe, grad

    def searching(carry):
        i, _, _, pe, grad = carry
        return (i == 0) | ((i < INIT_TRIES) & ~(jnp.isfinite(pe) & jnp.all(jnp.isfinite(grad))))

    zero = jnp.zeros((), center.dtype)
    _, _, z, pe, grad = jax.lax.while_loop(searching, body, (0, key, center, zero, jnp.zeros_like(center)))
    return ParamInfo(z, pe, grad)


def nuts_kernel(model_args: tuple, key: jax.Array, num_warmup: int, target_accept_prob: float, max_tree_depth: int,
                init_params: ParamInfo | None = None,
                labels: jax.Array | None = None) -> tuple[HMCState, Callable, Callable]:
    """NumPyro's NUTS functions for :func:`model_of_arguments` on the flat unconstrained vector
    ``z`` and, for one chain, its initial state.

    Returns ``(state, sample, postprocess)``: ``sample(state)`` is one NUTS transition (with
    windowed adaptation during the first ``num_warmup``), ``postprocess(z)`` the constrained
    sites and ``Q``. Without ``init_params`` the chain starts near the prior's center
    (:func:`_valid_start`); with them (a state's
    ``ParamInfo``, ``z`` flat) the initial state is only built to set up ``sample`` (the
    adaptation schedule lives in ``hmc``'s closure) and the caller discards it."""
    k_init, k_kernel = jax.random.split(key)
    kwargs = {"labels": labels}
    center, unravel = ravel_pytree(_prior_center_latents(model_args, labels))
    potential_fn_gen, postprocess = _model_functions(model_args, labels, unravel)
    if init_params is None:
        init_params = _valid_start(k_init, potential_fn_gen(model_args, labels), center)
    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
    state = init_kernel(
        init_params, num_warmup, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
        model_args=(model_args,), model_kwargs=kwargs, rng_key=k_kernel,
    )
    return state, lambda st: sample_kernel(st, model_args=(model_args,), model_kwargs=kwargs), postprocess


def _batched(fn, vectorized: bool, in_axes):
    """``fn`` for one chain, or ``vmap``-ed over the leading chain axis of the arguments in ``in_axes``."""
    return jax.vmap(fn, in_axes=in_axes) if vectorized else fn


@reuse_traces(static_argnames=("num_warmup", "max_tree_depth", "vectorized"))
def _initial_states(key, chains, model_args, target_accept_prob, *, num_warmup, max_tree_depth, vectorized):
    """NUTS's initial state of chain ``chains`` (an index) or, ``vectorized``, of each chain in
    ``chains`` ``(C,)``; chain ``c`` draws from the key ``fold_in(key, c)``, whatever the method."""

    def one(c):
        return nuts_kernel(model_args, jax.random.fold_in(key, c), num_warmup, target_accept_prob, max_tree_depth)[0]

    return _batched(one, vectorized, 0)(chains)


def _empty_buffers(states, num_samples, vectorized):
    """Zero buffers ``([C,] num_samples, ...)`` for the flat unconstrained draws and the sample
    statistics (made on the host: no program to compile for them)."""
    lead = (states.i.shape[0], num_samples) if vectorized else (num_samples,)
    dtype = np.dtype(states.energy.dtype)
    z = np.zeros(lead + states.z.shape[len(lead) - 1:], states.z.dtype)
    stats = {name: np.zeros(lead, bool if name == "diverging" else dtype) for name in SAMPLE_STATS}
    stats["n_steps"] = np.zeros(lead, np.int32)
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


ITERATION_BLOCK = 100  # NUTS iterations per call of _advance at most: its buffers hold that many draws


@reuse_traces(static_argnames=("num_warmup", "max_tree_depth", "vectorized"), donate_argnames=("buffers",))
def _advance(states, buffers, start, stop, model_args, target_accept_prob, *, num_warmup, max_tree_depth, vectorized):
    """Iterations ``start..stop`` (warmup first, then sampling; at most :data:`ITERATION_BLOCK` of them)
    of one chain or, ``vectorized``, of every chain; a sampling iteration ``i`` writes its draw into
    ``buffers`` (``ITERATION_BLOCK`` rows: the program does not depend on the number of draws) at row
    ``i - max(start, num_warmup)``."""

    def one_chain(state, buffers):
        info = ParamInfo(state.z, state.potential_energy, state.z_grad)
        sample = nuts_kernel(model_args, state.rng_key, num_warmup, target_accept_prob, max_tree_depth, info)[1]
        first = jnp.maximum(start, num_warmup)

        def step(i, carry):
            st, (z_buf, stat_buf) = carry
            st = sample(st)
            j = jnp.maximum(i - first, 0)
            keep = i >= num_warmup

            def put(buf, value):  # a warmup iteration writes back what row 0 holds
                return buf.at[j].set(jnp.where(keep, value, buf[j]))

            stat_buf = {k: put(stat_buf[k], v) for k, v in _stats_of(st).items()}
            return st, (put(z_buf, st.z), stat_buf)

        return jax.lax.fori_loop(start, stop, step, (state, buffers))

    return _batched(one_chain, vectorized, (0, 0))(states, buffers)


@reuse_traces
def _constrain(z, model_args):
    """Constrained draws and deterministic sites (``Q``) from flat unconstrained draws ``(n, dim)``."""
    return jax.vmap(_model_functions(model_args, None, _unravel_latents(model_args))[1])(z)


CONSTRAIN_BLOCK = 256  # draws per call of _constrain: its program does not depend on the number of draws


def _constrain_in_blocks(z: np.ndarray, model_args) -> dict:
    """:func:`_constrain` of the flat draws ``z`` ``(n, dim)`` (NumPy) in blocks of :data:`CONSTRAIN_BLOCK`
    rows (the last padded with copies of its last row, dropped), joined on the host as NumPy arrays."""
    out = []
    for _, count, rows in padded_blocks(z.shape[0], CONSTRAIN_BLOCK):
        block = jax.device_get(_constrain(spread(z[rows], CONSTRAIN_BLOCK), model_args))
        out.append({k: np.asarray(v)[:count] for k, v in block.items()})
    return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def _chain_sharding(num_chains: int, chain_method: str):
    """Where the chains run: ``None`` (the default device) or a sharding of the chain axis over
    ``gcd(num_chains, devices)`` local devices (``"parallel"``; ``"auto"`` when that is more than one)."""
    if chain_method not in ("parallel", "auto"):
        return None
    return batch_sharding(num_chains, "chain")


def _vectorized(chain_method: str, sharding) -> bool:
    """Whether the chains run ``vmap``-ed in one program: ``"vectorized"``, ``"parallel"`` (sharded),
    and ``"auto"`` on an accelerator. On a CPU ``"auto"`` runs the one-chain program chain after
    chain: a batched NUTS step costs as much as the chains' steps one by one there (its while
    loops run until the longest tree is built) and batching makes the program larger."""
    if chain_method == "auto":
        return sharding is not None or jax.default_backend() != "cpu"
    return chain_method != "sequential"


def _run_chains(key, chains, model_args, accept, static, num_samples, bounds, sharding, bar, while_running=None):
    """Initial states and the iterations in slices ``bounds`` (each at most :data:`ITERATION_BLOCK`
    long) for the chains ``chains`` (indices; one index when not ``static["vectorized"]``); returns
    the flat unconstrained draws and the statistics (NumPy: each slice's draws are copied out of the
    program's buffers). ``while_running()`` is called once the first slice is compiled and dispatched."""
    vectorized, num_warmup = static["vectorized"], static["num_warmup"]
    if sharding is not None:
        chains = jax.device_put(chains, sharding)
    states = _initial_states(key, chains, model_args, accept, **static)
    draws = _empty_buffers(states, num_samples, vectorized)
    buffers = jax.device_put(_empty_buffers(states, ITERATION_BLOCK, vectorized), sharding)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            states, buffers = _advance(states, buffers, np.int32(start), np.int32(stop), model_args, accept, **static)
            if while_running is not None:  # JAX dispatches asynchronously: the slice runs meanwhile
                while_running()
                while_running = None
            first, last = max(start, num_warmup) - num_warmup, stop - num_warmup
            if last > first:  # the slice's sampling iterations: rows 0 .. last - first - 1 of the buffers
                for out, rows in zip(jax.tree.leaves(draws), jax.tree.leaves(jax.device_get(buffers))):
                    if vectorized:
                        out[:, first:last] = rows[:, :last - first]
                    else:
                        out[first:last] = rows[:last - first]
            if bar is not None:
                bar.update(int(stop - start))
    return draws


def run_nuts(
    model_args: tuple, key: jax.Array, *, num_chains: int, num_warmup: int, num_samples: int,
    target_accept_prob: float, max_tree_depth: int, chain_method: str = "auto", progress_bar: bool = False,
    description: str = "sample", while_running: Callable[[], object] | None = None,
) -> SamplerRun:
    """Run ``num_chains`` NUTS chains on :func:`model_of_arguments` ``(model_args)``.

    ``model_args`` is the pytree ``(prior, lambda_star, noise_variance, ratio, data, intercept)`` of
    :meth:`deeplinear.models.ModelSpec.model_arguments` (validated by the caller); ``key`` a raw
    PRNG key; chain ``c`` uses ``fold_in(key, c)``, so the chains do not depend on ``chain_method``
    (:data:`CHAIN_METHODS`; up to the rounding of the batched against the one-chain program: see
    :func:`deeplinear.inference.fit`). Same key and method, same draws. ``while_running``, a
    function of no arguments, is called once, when the first chains' programs are compiled and
    their first iterations dispatched: host work it starts overlaps the sampling, not the
    compilation (on two cores, a thread importing modules slowed XLA's compilation by a third)."""
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")
    accept = np.asarray(target_accept_prob, model_args[4].dtype)  # the data's precision
    sharding = _chain_sharding(num_chains, chain_method)
    vectorized = _vectorized(chain_method, sharding)
    static = {"num_warmup": num_warmup, "max_tree_depth": max_tree_depth, "vectorized": vectorized}
    total = num_warmup + num_samples
    shown = np.linspace(0, total, PROGRESS_UPDATES + 1 if progress_bar else 2).round().astype(int)
    bounds = np.unique(np.concatenate([shown, np.arange(0, total, ITERATION_BLOCK), [total]]))
    chains = np.arange(num_chains, dtype=np.int32)
    groups = [chains] if vectorized else list(chains)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total * num_chains, desc=f"{description} ({num_chains} chains)", unit="it")
    try:
        runs = [_run_chains(key, g, model_args, accept, static, num_samples, bounds, sharding, bar,
                            while_running if i == 0 else None) for i, g in enumerate(groups)]
    finally:
        if bar is not None:
            bar.close()
    runs = jax.device_get(runs)  # stacked on the host: no program per shape for that
    if vectorized:
        (z, stats), = runs
    else:
        z = np.stack([r[0] for r in runs])
        stats = {k: np.stack([r[1][k] for r in runs]) for k in runs[0][1]}
    samples = _constrain_in_blocks(np.asarray(z).reshape((num_chains * num_samples,) + z.shape[2:]), model_args)
    samples = {k: np.asarray(v).reshape((num_chains, num_samples) + np.shape(v)[1:]) for k, v in samples.items()}
    return SamplerRun(samples, {k: np.asarray(v) for k, v in stats.items()})
