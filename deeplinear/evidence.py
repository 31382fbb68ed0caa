r"""The marginal likelihood (evidence) of a model, for every prior, any ``D`` and every noise model.

.. math:: Z = p(Y \mid \mathcal M) = \int p(Y \mid \theta)\, \pi(\theta)\, d\theta,

where :math:`\theta` is everything the model samples: the prior's latents (Bartlett factors,
Brownian increments) and the inferred hyperparameters (:math:`\lambda_*`, noise, ``a``,
intercepts), taken in NumPyro's unconstrained coordinates :math:`z` (with the Jacobian in
:math:`\pi(z)`). Given :math:`\theta` the likelihood :math:`p(Y \mid \theta)` is the closed-form
Gaussian of :class:`~deeplinear.likelihood.KroneckerNormal`, so the evidence is an integral over
the prior. Two estimators (``method``):

* ``"ais"`` (default) -- **annealed importance sampling** (Neal 2001) along the geometric path
  :math:`\pi_\beta(z) \propto \pi(z)\, p(Y \mid z)^\beta`, :math:`0 = \beta_0 < \dots < \beta_T = 1`:
  each of ``n`` particles starts from the prior, gains :math:`(\beta_t - \beta_{t-1}) \log p(Y \mid
  z_{t-1})` in log weight, then moves by Hamiltonian Monte Carlo that leaves :math:`\pi_{\beta_t}`
  invariant. :math:`\hat Z = \tfrac1n\sum_i w_i` is unbiased and the particles are independent,
  so its error is estimated from the weights themselves (below).
* ``"prior"`` -- **importance sampling from the prior**, :math:`\hat Z = \tfrac1n \sum_i p(Y \mid
  z_i)`, :math:`z_i \sim \pi`: AIS with :math:`T = 1` and no moves. Exact in expectation but its
  variance grows like :math:`e^{\mathrm{KL}}`: fine for a few rows, hopeless for hundreds.

**Standard error.** With weights normalized to mean one, :math:`u_i = w_i/\bar w`,
:math:`\operatorname{SE}(\log \hat Z) \approx \sqrt{\widehat{\operatorname{Var}}(u)/n}` (delta
method); the effective sample size is :math:`(\sum u_i)^2/\sum u_i^2`. The particles being
independent, this is honest as long as the weights' variance is finite and ``n`` large enough to
see it (``tests/test_evidence.py`` checks it across 20 seeds).

**The schedule** comes from an independent pilot run, an adaptive tempered SMC with
``pilot_particles`` particles (each next :math:`\beta` keeps half the particles effective; resampled
every step; a few HMC moves whose step size is tuned to an acceptance of 0.65 and whose mass
matrix is the particles' spread). With :math:`s(\beta)` the standard deviation of
:math:`\log p(Y\mid z)` under :math:`\pi_\beta`, the main run puts its temperatures equally spaced in
the thermodynamic length :math:`\Lambda(\beta) = \int_0^\beta s(b)\,db`, which the pilot measures step
by step as :math:`\Delta\beta\, s \approx \sqrt{-\log(\mathrm{ESS}/n)}` of each step's incremental weights
(exact for a Gaussian log likelihood; robust to a far-out prior draw, which the sample standard
deviation is not). With well-mixed moves
the log weights' variance is then :math:`\sum_t \Delta\beta_t^2 s_t^2 = \Lambda^2/T`, so by default
:math:`T = \lceil \Lambda^2 / 0.1\rceil` (:data:`LOG_WEIGHT_VARIANCE`): real moves do not mix perfectly, and
the log weights' variance came out several times larger than :math:`\Lambda^2/T` (about 2 at a target of
0.5 on ``D = 3``, ``P = 200``), so the target is set low.
The main run reuses the pilot's step sizes and scales, interpolated in :math:`\Lambda`: being fixed
before it starts, they keep its particles independent and :math:`\hat Z` unbiased.

**Which one.** On the four problems of ``benchmarks/evidence.py``
(``benchmarks/results/evidence_cpu.md``; RMSE² × time, lower is better) prior importance sampling
with 65536 draws was 3.5 to 180 times cheaper than AIS where the data say little beyond the prior
(``D = 1``; ``D = 2``, ``P = 100``; ``D = 2``, ``P = 12`` with full noise and ``a`` inferred), and AIS 2
times cheaper on ``D = 3``, ``P = 200`` with :math:`\lambda_*` and :math:`\sigma^2` inferred, where
prior IS kept 16 effective draws of 65536. Prior IS fails without saying so where the posterior is
far from the prior: on ``D = 3``, ``P = 200`` with full noise and ``a`` inferred, 1000 prior draws
missed the AIS value by 22 and 51 nats in two runs while stating a standard error of 1.0. AIS is
the default because its error statement held on every problem; use ``method="prior"`` when its
effective sample size is in the thousands. A tempered SMC (the pilot used alone) was never the
cheapest and states no error (its particles are not independent).

**Why not BlackJAX's tempered SMC.** ``blackjax.adaptive_tempered_smc`` (1.7.1; HMC moves, mass
matrix from the particles, step size adapted to the acceptance, target ESS 0.5, 1024 particles) on
the same log prior and likelihood, against this AIS, 20 keys each, on the ``D = 2`` and ``D = 3``
problems of ``benchmarks/evidence_blackjax.py`` (``benchmarks/results/evidence_blackjax_cpu.md``):
it took 0.33 to 0.74 times AIS's seconds, but its estimates spread 1.7 to 2.4 times more over the
keys (RMSE 1.4 to 2.0 times AIS's), so at equal accuracy it would take 1.3, 1.6 and 1.9 times AIS's
time, and it states no standard error. The rule was to adopt it if as accurate at no more than
1.5 times the time; it is not, and the error statement decides it: AIS stays, written here (with
the pilot as its schedule), with no dependency on BlackJAX.

The likelihood inside the run is the models' ``relative`` one (``O(1)`` near the posterior, so
that float32 resolves it at large ``P``); the data constant it leaves out
(:func:`~deeplinear.likelihood.relative_constant`) is added back in float64.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from deeplinear._devices import padded_blocks, spread
from deeplinear._matmul import full_precision_jit
from deeplinear._precision import warn_if_spec_imprecise
from deeplinear._types import InterceptLike, KeyLike, NoiseCorrelationLike, NoiseVarianceLike, ScaleLike
from deeplinear._validation import check_choice, check_key, check_positive_int, check_progress_bar, raw_key
from deeplinear.data import RegressionData, check_regression_data
from deeplinear.likelihood import relative_constant
from deeplinear.models import ModelSpec
from deeplinear.priors import NNGPPrior, VbarPrior
from deeplinear.sampler import model_of_arguments

if TYPE_CHECKING:  # pandas loads on first use, not on import
    import pandas as pd

__all__ = ["EvidenceEstimate", "evidence_curve", "log_evidence"]

EVIDENCE_METHODS = ("ais", "prior")
DEFAULT_PARTICLES = 1024
DEFAULT_PILOT_PARTICLES = 256
LOG_WEIGHT_VARIANCE = 0.1  # the default schedule's Lambda^2 / T: variance of the log weights under perfect moves
MIN_TEMPERATURES = 16
MAX_TEMPERATURES = 20_000
MAX_PARTICLES = 2**22
MIN_TRUSTED_ESS_FRACTION = 0.01  # final weights with an ESS below this share of the particles: a warning
MAX_LEAPFROG = 256
PILOT_ESS_FRACTION = 0.5  # each pilot temperature keeps this share of the particles effective
PILOT_MOVES = 3  # HMC moves per pilot temperature (the step size is adapted after each)
MAX_PILOT_TEMPERATURES = 2000
TARGET_ACCEPTANCE = 0.65
STEP_ADAPTATION_RATE = 2.0  # step <- step * exp(rate * (acceptance - target)) after each pilot move
INITIAL_STEP = 0.5  # in units of the particles' spread
STEP_JITTER = 0.2  # each particle's step is drawn uniformly in step * [1 - jitter, 1 + jitter]
PARTICLE_BATCH = 256  # particles per call of the start and move programs (the default pilot's number)
SCHEDULE_WINDOW = 32  # temperatures per call of the annealing program (one program for any T)


class EvidenceEstimate(NamedTuple):
    r"""An estimate of :math:`\log p(Y \mid \mathcal M)` and its Monte Carlo standard error.

    Attributes
    ----------
    log_evidence : float
        :math:`\log \hat Z`.
    standard_error : float
        Its standard error (delta method from the normalized weights; 0 when nothing is sampled;
        NaN, with a warning, when the log weights are equal to rounding and say nothing of it).
    effective_sample_size : float
        :math:`(\sum w_i)^2 / \sum w_i^2` of the final weights.
    num_particles, num_temperatures : int
        ``n`` and ``T`` (``T = 1`` for ``"prior"``; ``0`` when the model samples nothing).
    method : str
        ``"ais"``, ``"prior"`` or ``"exact"`` (no latent sites: the likelihood itself).
    acceptance_rate : float
        Mean HMC acceptance over the main run's moves (NaN without moves).
    thermodynamic_length : float
        :math:`\Lambda(1)` measured by the pilot (NaN without one).
    seconds : float
        Wall time, pilot and compilation included.
    """

    log_evidence: float
    standard_error: float
    effective_sample_size: float
    num_particles: int
    num_temperatures: int
    method: str
    acceptance_rate: float
    thermodynamic_length: float
    seconds: float


# -- the model as a function of unconstrained coordinates --------------------------------------------------


def _latent_sites(model_args, key):
    """The model's latent sample sites, drawn from the prior (observed sites stay observed)."""
    tr = handlers.trace(handlers.seed(model_of_arguments, key)).get_trace(model_args)
    return {name: s for name, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}


def _structure(model_args):
    """At trace time: the latent sites' supports and the map from a flat vector to the dict of
    unconstrained values (:func:`jax.flatten_util.ravel_pytree`), with the vector's size."""
    sites = _latent_sites(model_args, jax.random.PRNGKey(0))
    supports = {name: s["fn"].support for name, s in sites.items()}
    example = {name: biject_to(supports[name]).inv(s["value"]) for name, s in sites.items()}
    flat, unravel = ravel_pytree(example)
    return supports, unravel, flat.size


def _prior_draw(model_args, key, dtype):
    """One prior draw of every latent site, in unconstrained coordinates, flattened."""
    sites = _latent_sites(model_args, key)
    z = {name: biject_to(s["fn"].support).inv(s["value"]) for name, s in sites.items()}
    return ravel_pytree(z)[0].astype(dtype)


def _log_parts(model_args, supports, unravel, x):
    r"""``(log pi(z), log p(Y | z))`` at the flat unconstrained point ``x``: the prior's log density
    with the Jacobian of the map to constrained values, and the (relative) log likelihood;
    a NaN likelihood counts as :math:`-\infty` (zero weight; HMC rejects moves into it)."""
    values, log_jacobian = {}, 0.0
    for name, u in unravel(x).items():
        transform = biject_to(supports[name])
        values[name] = transform(u)
        log_jacobian = log_jacobian + jnp.sum(transform.log_abs_det_jacobian(u, values[name]))
    tr = handlers.trace(handlers.substitute(model_of_arguments, data=values)).get_trace(model_args)
    log_prior, log_lik = log_jacobian, 0.0
    for site in tr.values():
        if site["type"] != "sample":
            continue
        term = jnp.sum(site["fn"].log_prob(site["value"]))
        if site["is_observed"]:
            log_lik = log_lik + term
        else:
            log_prior = log_prior + term
    dtype = x.dtype
    log_lik = jnp.asarray(log_lik, dtype)
    return jnp.asarray(log_prior, dtype), jnp.where(jnp.isnan(log_lik), -jnp.inf, log_lik)


def _hmc_moves(model_args, x, lp, ll, key, beta, step, scale, num_moves, num_leapfrog):
    r"""``num_moves`` HMC moves of one particle leaving :math:`\pi_\beta \propto \pi(z) p(Y\mid z)^\beta`
    invariant: momentum :math:`p \sim N(0, \operatorname{diag}(1/\mathrm{scale}^2))`, ``num_leapfrog``
    leapfrog steps of size ``step`` (jittered per move), Metropolis acceptance. Returns the new
    ``(x, lp, ll)`` and the mean acceptance probability."""
    supports, unravel, _ = _structure(model_args)

    def target(y):
        lp_y, ll_y = _log_parts(model_args, supports, unravel, y)
        return lp_y + beta * ll_y, (lp_y, ll_y)

    value_and_grad = jax.value_and_grad(target, has_aux=True)
    dtype = x.dtype

    def move(carry, k):
        x, lp, ll = carry
        k_p, k_j, k_u = jax.random.split(k, 3)
        eps = step * jax.random.uniform(k_j, (), dtype, 1 - STEP_JITTER, 1 + STEP_JITTER)
        p = jax.random.normal(k_p, x.shape, dtype) / scale
        (_, _), g = value_and_grad(x)
        energy0 = -(lp + beta * ll) + 0.5 * jnp.sum((scale * p) ** 2)

        def leapfrog(state, _):
            y, q, g = state
            q = q + 0.5 * eps * g
            y = y + eps * scale**2 * q
            (_, parts), g = value_and_grad(y)
            q = q + 0.5 * eps * g
            return (y, q, g), parts

        (y, q, _), parts = jax.lax.scan(leapfrog, (x, p, g), None, length=num_leapfrog)
        lp_y, ll_y = parts[0][-1], parts[1][-1]
        energy1 = -(lp_y + beta * ll_y) + 0.5 * jnp.sum((scale * q) ** 2)
        delta = jnp.where(jnp.isfinite(energy0), energy0 - energy1, jnp.inf)
        delta = jnp.where(jnp.isfinite(energy1) & jnp.all(jnp.isfinite(y)), delta, -jnp.inf)
        accept_prob = jnp.exp(jnp.minimum(delta, 0.0))
        accept = jnp.log(jax.random.uniform(k_u, (), dtype)) < delta
        new = (jnp.where(accept, y, x), jnp.where(accept, lp_y, lp), jnp.where(accept, ll_y, ll))
        return new, accept_prob

    (x, lp, ll), probs = jax.lax.scan(move, (x, lp, ll), jax.random.split(key, num_moves))
    return x, lp, ll, jnp.mean(probs)


# -- compiled pieces (per model structure: one start program and one annealing program per move setting) --


@full_precision_jit
def _start_batch(model_args, key, offset):
    """Particles ``offset .. offset + PARTICLE_BATCH - 1``: prior draws (flat, unconstrained) with
    their ``(log prior, log likelihood)``; particle ``i`` draws from ``fold_in(key, i)``."""
    dtype = model_args[4].dtype
    supports, unravel, _ = _structure(model_args)

    def one(i):
        x = _prior_draw(model_args, jax.random.fold_in(key, i), dtype)
        return (x, *_log_parts(model_args, supports, unravel, x))

    return jax.vmap(one)(offset + jnp.arange(PARTICLE_BATCH, dtype=jnp.int32))


def _start(model_args, key, num_particles: int):
    """``num_particles`` prior draws with their ``(log prior, log likelihood)``, :data:`PARTICLE_BATCH`
    at a time through one compiled program (the pilot's and the main run's particle numbers, and
    every other, share it; memory stays bounded for many draws). On the host: the pilot resamples
    them there, and the moves take them in blocks (:func:`_anneal_blocks`), so no other program
    depends on the number of particles."""
    batches = [jax.device_get(_start_batch(model_args, key, np.int32(offset)))
               for offset in range(0, num_particles, PARTICLE_BATCH)]
    return tuple(np.concatenate([np.asarray(b[j]) for b in batches])[:num_particles] for j in range(3))


@full_precision_jit
def _log_likelihood_alone(model_args):
    """``log p(Y)`` of a model that samples nothing (fixed-hyperparameter NNGP): its likelihood."""
    supports, unravel, _ = _structure(model_args)
    return _log_parts(model_args, supports, unravel, jnp.zeros(0, model_args[4].dtype))[1]


def _move_all(model_args, x, lp, ll, key, first, count, beta, step, scale, num_moves, num_leapfrog):
    """:func:`_hmc_moves` for every particle of a block, particle ``first + i`` with the key
    ``fold_in(key, first + i)`` (under JAX's partitionable Threefry, the default, that is
    ``split(key, n)[first + i]`` for any ``n``: blocks of any size draw as one call over all
    particles would); returns ``(x, lp, ll)`` and the summed acceptance of the block's first
    ``count`` rows (the rest pad the block)."""
    index = first + jnp.arange(x.shape[0], dtype=jnp.int32)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    x, lp, ll, acc = jax.vmap(
        lambda *a: _hmc_moves(model_args, *a, beta, step, scale, num_moves, num_leapfrog))(x, lp, ll, keys)
    return x, lp, ll, jnp.sum(jnp.where(index < first + count, acc, 0.0))


@partial(full_precision_jit, static_argnames=("num_moves", "num_leapfrog"), donate_argnames="carry")
def _anneal(carry, model_args, key, betas, steps, scales, start, stop, first, count, *, num_moves, num_leapfrog):
    r"""Temperatures ``start..stop - 1`` (``1 <= t <= T``, at most :data:`SCHEDULE_WINDOW` of them) of the
    annealed run, for one block of particles (``first .. first + count - 1``; the block's program
    is padded to :func:`_block_size` rows): the log weights gain
    :math:`(\beta_t - \beta_{t-1}) \log p(Y \mid z)`, then the particles move at :math:`\beta_t`,
    and the carry's last entry gains their summed acceptance. ``betas``, ``steps`` and ``scales``
    are the schedule's window ``start - 1 .. start - 1 + SCHEDULE_WINDOW`` (padded past ``T``), so the
    program does not depend on ``T``; the moves of temperature ``t`` use the key ``fold_in(key, t)``,
    so windowing and blocking change nothing. The pilot's moves run through this program too (a
    window whose :math:`\beta` does not change), so a model structure compiles one move program."""

    def temperature(t, carry):
        x, lp, ll, log_w, acc = carry
        j = t - start + 1
        log_w = log_w + (betas[j] - betas[j - 1]) * ll
        if num_moves:
            x, lp, ll, a = _move_all(model_args, x, lp, ll, jax.random.fold_in(key, t), first, count, betas[j],
                                     steps[j], scales[j], num_moves, num_leapfrog)
            acc = acc + a
        return x, lp, ll, log_w, acc

    return jax.lax.fori_loop(start, stop, temperature, carry)


def _block_size(*particle_numbers: int) -> int:
    """Rows of the annealing program for runs of these particle numbers (the pilot's and the main
    run's): :data:`PARTICLE_BATCH` when each has that many (a CPU moves 256 particles per call as
    fast per particle as 1024: measured), else the smallest number, so that both runs share one
    program whatever their sizes (a pilot of 256 and a main run of 64 move in blocks of 64)."""
    return min(PARTICLE_BATCH, *particle_numbers)


def _anneal_blocks(carry, model_args, key, window, start, stop, num_moves, num_leapfrog, size):
    """:func:`_anneal` over the particles in blocks of ``size`` rows (:func:`_block_size`; the last
    block padded with copies of its last particle, whose results are dropped); the carry ``(x, lp,
    ll, log_w, acc)`` stays on the host between calls. ``acc`` sums the acceptance over particles."""
    x, lp, ll, log_w, acc = (np.asarray(a) for a in jax.device_get(carry))
    out = [np.empty_like(a) for a in (x, lp, ll, log_w)]
    acc = float(acc)
    for first, count, rows in padded_blocks(x.shape[0], size):
        block = spread(tuple(a[rows] for a in (x, lp, ll, log_w)), size) + (np.zeros((), x.dtype),)
        result = jax.device_get(_anneal(block, model_args, key, *window, np.int32(start), np.int32(stop),
                                        np.int32(first), np.int32(count), num_moves=num_moves,
                                        num_leapfrog=num_leapfrog))
        for o, r in zip(out, result[:4]):
            o[first:first + count] = np.asarray(r)[:count]
        acc += float(result[4])
    return (*out, np.asarray(acc, x.dtype))


# -- the pilot: adaptive tempered SMC -----------------------------------------------------------------------


class _Schedule(NamedTuple):
    """What the pilot measured at each of its temperatures."""

    betas: np.ndarray  # (T_p + 1,)
    steps: np.ndarray  # (T_p + 1,)
    scales: np.ndarray  # (T_p + 1, d)
    increments: np.ndarray  # (T_p,) thermodynamic length of each pilot step, sqrt(-log(ESS / n))
    log_evidence: float  # the pilot's own (SMC) estimate, no standard error

    @property
    def thermodynamic_length(self) -> np.ndarray:
        r""":math:`\Lambda(\beta_t) = \int_0^{\beta_t} s(b)\, db` at the pilot's temperatures, each step's
        share :math:`\Delta\beta\, s` estimated as :math:`\sqrt{-\log(\mathrm{ESS}/n)}` of its incremental
        weights (exact for a Gaussian log likelihood, where :math:`\mathrm{ESS}/n = e^{-\Delta\beta^2 s^2}`;
        unlike the sample standard deviation of the log likelihood, it is not blown up by one far-out prior draw)."""
        return np.concatenate([[0.0], np.cumsum(self.increments)])

    def resample(self, num_temperatures: int):
        r"""``num_temperatures`` temperatures equally spaced in :math:`\Lambda`, with the step sizes
        (log-linearly) and scales (linearly) interpolated there."""
        length = self.thermodynamic_length
        grid = np.linspace(0.0, length[-1], num_temperatures + 1)
        if length[-1] > 0:
            betas = np.interp(grid, length, self.betas)
        else:
            betas = np.linspace(0.0, 1.0, num_temperatures + 1)
            grid, length = betas, self.betas
        betas[0], betas[-1] = 0.0, 1.0
        steps = np.exp(np.interp(grid, length, np.log(self.steps)))
        scales = np.stack([np.interp(grid, length, col) for col in self.scales.T], axis=1)
        return betas, steps, scales


def _finite_log_lik(ll) -> np.ndarray:
    ll = np.asarray(ll, np.float64)
    return np.where(np.isfinite(ll), ll, -np.inf)


def _effective_fraction(log_w) -> float:
    """``ESS / n`` of the weights ``exp(log_w)``."""
    w = np.exp(log_w - np.max(log_w))
    return float(w.sum() ** 2 / (w**2).sum() / w.size)


def _next_beta(beta: float, ll: np.ndarray, fraction: float) -> float:
    """The largest next temperature in ``(beta, 1]`` whose incremental weights ``exp(dbeta * ll)``
    keep ``fraction`` of the particles effective (bisection)."""
    if _effective_fraction((1.0 - beta) * ll) >= fraction:
        return 1.0
    lo, hi = 0.0, 1.0 - beta
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _effective_fraction(mid * ll) >= fraction else (lo, mid)
    return beta + max(lo, 1e-12)


def _systematic_resample(rng, log_w) -> np.ndarray:
    w = np.exp(log_w - np.max(log_w))
    cdf = np.cumsum(w / w.sum())
    positions = (rng.uniform() + np.arange(w.size)) / w.size
    return np.minimum(np.searchsorted(cdf, positions), w.size - 1)


def _tempered_smc(model_args, key, num_particles: int, num_leapfrog: int, bar=None,
                  block: int | None = None) -> _Schedule:
    r"""Adaptive tempered SMC from the prior to the posterior (the pilot; module docstring), moving
    its particles in blocks of ``block`` (default :func:`_block_size` of ``num_particles``).
    Its own estimate :math:`\sum_t \log \tfrac1n \sum_i e^{\Delta\beta_t \ell_i}` is kept for comparison."""
    block = _block_size(num_particles) if block is None else block
    k_start, k_moves, k_resample = jax.random.split(key, 3)
    x, lp, ll = _start(model_args, k_start, num_particles)
    rng = np.random.default_rng(np.asarray(raw_key(k_resample)).astype(np.uint64))
    ll_host = _finite_log_lik(ll)
    if not np.any(np.isfinite(ll_host)):
        raise FloatingPointError("the log likelihood is -inf or NaN at every prior draw; the evidence cannot be "
                                 "estimated (check the data's scale, the noise variance and the precision)")
    dtype = x.dtype
    step, scale = INITIAL_STEP, np.std(np.asarray(x, np.float64), axis=0) + 1e-3
    betas, steps, scales, increments = [0.0], [step], [scale], []
    beta, log_z = 0.0, 0.0
    while beta < 1.0:
        if len(betas) > MAX_PILOT_TEMPERATURES:
            raise RuntimeError(f"the pilot needed more than {MAX_PILOT_TEMPERATURES} temperatures to reach the "
                               "posterior; the posterior is too far from the prior for this estimator")
        new_beta = _next_beta(beta, ll_host, PILOT_ESS_FRACTION)
        inc = (new_beta - beta) * ll_host
        log_z += float(np.logaddexp.reduce(inc) - math.log(num_particles))
        increments.append(math.sqrt(max(-math.log(_effective_fraction(inc)), 0.0)))
        w = np.exp(inc - inc.max())
        w /= w.sum()
        xs = np.asarray(x, np.float64)
        mean = w @ xs
        scale = np.sqrt(np.maximum(w @ (xs - mean) ** 2, 0.0)) + 1e-6 * (np.abs(mean) + 1)
        idx = _systematic_resample(rng, inc)
        x, lp, ll = x[idx], lp[idx], ll[idx]
        beta = new_beta
        for m in range(PILOT_MOVES):  # one move at beta: a window of the annealing program with beta held
            t = len(betas) * PILOT_MOVES + m  # the move's key is fold_in(k_moves, t)
            window = [np.full(SCHEDULE_WINDOW + 1, beta, dtype), np.full(SCHEDULE_WINDOW + 1, step, dtype),
                      np.broadcast_to(np.asarray(scale, dtype), (SCHEDULE_WINDOW + 1, scale.size))]
            x, lp, ll, _, acc = _anneal_blocks((x, lp, ll, np.zeros(num_particles, dtype), 0.0), model_args, k_moves,
                                               window, t, t + 1, 1, num_leapfrog, block)
            step *= math.exp(STEP_ADAPTATION_RATE * (float(acc) / num_particles - TARGET_ACCEPTANCE))
        ll_host = _finite_log_lik(ll)
        betas.append(beta)
        steps.append(step)
        scales.append(scale)
        if bar is not None:
            bar.set_postfix(beta=f"{beta:.3g}")
            bar.update(1)
    return _Schedule(np.array(betas), np.array(steps), np.stack(scales), np.array(increments), log_z)


# -- public --------------------------------------------------------------------------------------------------


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` with its last row repeated to ``size`` rows."""
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _weights_summary(log_w: np.ndarray):
    r"""``(log mean w, SE of it, ESS)`` from log weights (delta method; module docstring)."""
    n = log_w.size
    top = np.max(log_w)
    if not np.isfinite(top):
        raise FloatingPointError("every importance weight is zero or NaN: the log likelihood is -inf or NaN at "
                                 "every particle; the evidence cannot be estimated")
    w = np.exp(log_w - top)
    u = w / w.mean()
    estimate = float(top + np.log(w.mean()))
    se = float(np.sqrt(np.var(u, ddof=1) / n)) if n > 1 else float("inf")
    return estimate, se, float(u.sum() ** 2 / (u**2).sum())


def log_evidence(
    data: RegressionData,
    prior: VbarPrior | ModelSpec,
    *,
    lambda_star: ScaleLike = 1.0,
    noise_variance: NoiseVarianceLike = 1.0,
    ratio: dist.Distribution | None = None,
    noise_model: str = "scalar",
    noise_correlation: NoiseCorrelationLike | None = None,
    intercept: InterceptLike | None = None,
    method: str = "ais",
    num_particles: int = DEFAULT_PARTICLES,
    num_temperatures: int | None = None,
    num_leapfrog: int = 8,
    num_moves: int = 1,
    pilot_particles: int = DEFAULT_PILOT_PARTICLES,
    key: KeyLike = 0,
    progress_bar: bool | None = None,
) -> EvidenceEstimate:
    r"""The log marginal likelihood :math:`\log p(Y \mid \mathcal M)` of a model, with its standard error.

    .. math:: p(Y \mid \mathcal M) = \int N(\operatorname{vec} Y^\top; 1\mu^\top, \lambda_* Q \otimes K
        + \Sigma_\varepsilon \otimes I_P)\; \pi(\text{latents}, \theta)\, d(\text{latents}, \theta),

    over the prior's latents (so over :math:`Q`) and every inferred hyperparameter :math:`\theta`;
    fixed hyperparameters are conditioned on. Estimated by annealed importance sampling from
    the prior to the posterior, or by importance sampling from the prior (module docstring for
    the algorithms, the schedule and the error). Compare models by differences of log
    evidence (log Bayes factors) whose standard errors add in quadrature.

    Parameters
    ----------
    data : RegressionData
    prior : FiniteWidthPrior | ProportionalLimitPrior | NNGPPrior | ModelSpec
        As in :func:`~deeplinear.fit`, with the same hyperparameter keywords.
    method : {"ais", "prior"}, default "ais"
    num_particles : int, default 1024
        Independent particles ``n`` (prior draws for ``"prior"``); the standard error falls like
        :math:`1/\sqrt n`.
    num_temperatures : int, optional
        ``T`` for ``"ais"``. Default :math:`\lceil\Lambda^2/0.1\rceil` (at least 16) from the pilot's
        thermodynamic length :math:`\Lambda` (module docstring).
    num_leapfrog, num_moves : int
        Leapfrog steps per HMC move and moves per temperature (``"ais"``).
    pilot_particles : int, default 256
        Particles of the pilot that sets the schedule (``"ais"``).
    key : PRNG key or int, default 0
        Same key, same estimate (on the same device).
    progress_bar : bool, optional
        A bar over the temperatures. Default: on in Jupyter or a terminal, off otherwise.

    Returns
    -------
    EvidenceEstimate

    Examples
    --------
    >>> import numpy as np
    >>> from deeplinear import RegressionData, FiniteWidthPrior
    >>> from deeplinear.evidence import log_evidence
    >>> rng = np.random.default_rng(0)
    >>> data = RegressionData.linear(rng.normal(size=(10, 3)), rng.normal(size=(10, 2)))
    >>> est = log_evidence(data, FiniteWidthPrior((4, 4), 2), noise_variance=0.5, num_particles=256)
    >>> bool(np.isfinite(est.log_evidence) and 0 < est.standard_error < 0.2)
    True
    """
    started = time.perf_counter()
    check_regression_data(data)
    spec = ModelSpec.build(prior, lambda_star, noise_variance, ratio, noise_model, noise_correlation, intercept)
    method = check_choice("method", method, EVIDENCE_METHODS)  # every argument before anything is traced
    num_particles = check_positive_int("num_particles", num_particles, minimum=2, maximum=MAX_PARTICLES)
    if num_temperatures is not None:
        num_temperatures = check_positive_int("num_temperatures", num_temperatures, maximum=MAX_TEMPERATURES)
    num_leapfrog = check_positive_int("num_leapfrog", num_leapfrog, maximum=MAX_LEAPFROG)
    num_moves = check_positive_int("num_moves", num_moves, maximum=MAX_LEAPFROG)
    pilot_particles = check_positive_int("pilot_particles", pilot_particles, minimum=2, maximum=MAX_PARTICLES)
    progress_bar = check_progress_bar(progress_bar)
    key = check_key(key)  # JAX's first work: after every other argument is checked
    model_args = spec.model_arguments(data)
    warn_if_spec_imprecise(spec, data, not isinstance(spec.prior, NNGPPrior), stacklevel=4)  # as in fit
    constant = _data_constant(spec, data)

    if not spec.has_latent_sites:  # NNGP with everything fixed: the evidence is the likelihood
        value = float(_log_likelihood_alone(model_args)) + constant
        _check_finite(value)
        nan = float("nan")
        return EvidenceEstimate(value, 0.0, nan, 0, 0, "exact", nan, nan, time.perf_counter() - started)

    return _estimate(model_args, key, method, num_particles, num_temperatures, num_leapfrog, num_moves,
                     pilot_particles, progress_bar, constant, started)


def _estimate(model_args, key, method, num_particles, num_temperatures, num_leapfrog, num_moves, pilot_particles,
              progress_bar, constant, started) -> EvidenceEstimate:
    """One run of ``"prior"`` or ``"ais"`` (arguments checked by :func:`log_evidence`)."""
    k_pilot, k_start, k_run = jax.random.split(key, 3)
    dtype = model_args[4].dtype
    block = _block_size(num_particles) if method == "prior" else _block_size(num_particles, pilot_particles)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(desc="evidence: pilot", unit="temperature")
    try:
        length = float("nan")
        if method == "prior":
            betas, steps, scales, moves = np.array([0.0, 1.0]), np.ones(2), None, 0
        else:
            schedule = _tempered_smc(model_args, k_pilot, pilot_particles, num_leapfrog, bar, block)
            length = float(schedule.thermodynamic_length[-1])
            if num_temperatures is None:
                wanted = math.ceil(length**2 / LOG_WEIGHT_VARIANCE) if np.isfinite(length) else MAX_TEMPERATURES + 1
                num_temperatures = int(np.clip(wanted, MIN_TEMPERATURES, MAX_TEMPERATURES))
                if wanted > MAX_TEMPERATURES:
                    _distrust(f"the annealing schedule needs about {wanted:.3g} temperatures (thermodynamic length "
                              f"{length:.3g}) but is capped at MAX_TEMPERATURES = {MAX_TEMPERATURES}: the log weights "
                              "vary far more than the standard error assumes. Standardize the labels (raw units "
                              "make the likelihood extreme) or compare with another key")
            betas, steps, scales = schedule.resample(num_temperatures)
            moves = num_moves
        T = len(betas) - 1
        x, lp, ll = _start(model_args, k_start, num_particles)
        if scales is None:
            scales = np.ones((T + 1, x.shape[1]))
        carry = (x, lp, ll, np.zeros(num_particles, dtype), 0.0)
        padded = [_pad_to(a, T + 1 + SCHEDULE_WINDOW) for a in (betas, steps, scales)]
        if bar is not None:
            bar.reset(total=T)
            bar.set_description(f"evidence: {method} ({num_particles} particles)")
        for lo in range(1, T + 1, SCHEDULE_WINDOW):
            hi = min(lo + SCHEDULE_WINDOW, T + 1)
            window = [np.asarray(a[lo - 1:lo + SCHEDULE_WINDOW], dtype) for a in padded]
            carry = _anneal_blocks(carry, model_args, k_run, window, lo, hi, moves, num_leapfrog, block)
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()
    log_w = _finite_log_lik(carry[3])
    estimate, se, ess = _weights_summary(log_w)
    se = _honest_standard_error(np.asarray(carry[3]), se, ess, num_particles)
    acceptance = float(carry[4]) / (T * num_particles) if moves else float("nan")
    value = estimate + constant
    _check_finite(value)
    return EvidenceEstimate(value, se, ess, num_particles, T, method, acceptance, length, time.perf_counter() - started)


def _distrust(message: str) -> None:
    from deeplinear.inference import ConvergenceWarning

    warnings.warn(f"log_evidence: {message}", ConvergenceWarning, stacklevel=4)


def _honest_standard_error(log_w, se: float, ess: float, n: int) -> float:
    """The standard error, checked against what the weights themselves say (issue 28): log weights
    that are all equal to the precision's rounding of their size carry no information on the
    error (a standard error of 0 would be a claim of exactness), so the error is NaN, with a
    warning; an ESS below ``MIN_TRUSTED_ESS_FRACTION`` of the particles warns that the
    delta-method error is itself unreliable."""
    finite = log_w[np.isfinite(log_w)]
    scale = float(np.max(np.abs(finite)))
    resolution = float(np.finfo(log_w.dtype).eps) * scale
    if finite.size == n and float(np.ptp(finite)) <= resolution:
        _distrust(f"the {n} log weights agree to the rounding of {log_w.dtype} at their size ({scale:.3g} nats): "
                  "their spread says nothing about the error, so the standard error is NaN. The log likelihood "
                  "cannot be resolved in this precision: use float64 (jax.config.update('jax_enable_x64', True))")
        return float("nan")
    if ess < MIN_TRUSTED_ESS_FRACTION * n:
        _distrust(f"the final weights have an ESS of {ess:.3g} of {n} particles: the estimate rests on a few "
                  "particles and its standard error is unreliable; use more particles or temperatures")
    return se


def _data_constant(spec: ModelSpec, data: RegressionData) -> float:
    """What the models' relative likelihood leaves out for this specification (float64)."""
    return relative_constant(data, matrix_noise=spec.noise_model != "scalar", intercept=spec.intercept is not None)


def _check_finite(value: float) -> None:
    if not np.isfinite(value):
        raise FloatingPointError(f"the estimated log evidence is not finite ({value}); check the data's scale and "
                                 "the precision (float64 may help)")


def evidence_curve(data: RegressionData, specs: dict[str, ModelSpec | VbarPrior], *, key: KeyLike = 0,
                   **options: Any) -> pd.DataFrame:
    r""":func:`log_evidence` of several models of the same data: an evidence curve over ``a``
    (limit priors), depth at fixed width or width at fixed depth (finite priors), or any other
    family of :class:`~deeplinear.models.ModelSpec`.

    ``specs`` maps names to specifications (or priors, with the default hyperparameters);
    ``options`` go to :func:`log_evidence`. Model ``i`` gets the key ``jax.random.fold_in(key, i)``.
    Priors that differ only in ``ratio`` (or in fixed hyperparameter values) share one compiled
    program. Returns a ``pandas.DataFrame`` indexed by name with the columns of
    :class:`EvidenceEstimate` (less ``method``).

    Examples
    --------
    >>> import numpy as np
    >>> from deeplinear import RegressionData, ProportionalLimitPrior
    >>> from deeplinear.evidence import evidence_curve
    >>> rng = np.random.default_rng(0)
    >>> data = RegressionData.linear(rng.normal(size=(10, 3)), rng.normal(size=(10, 1)))
    >>> curve = evidence_curve(data, {a: ProportionalLimitPrior(a, 1) for a in (0.5, 1.0)}, num_particles=128)
    >>> list(curve.index), bool(curve["standard_error"].max() < 0.1)
    ([0.5, 1.0], True)
    """
    import pandas as pd

    if not isinstance(specs, dict) or not specs:
        raise TypeError(f"specs must be a non-empty dict of name -> ModelSpec or prior, got {type(specs).__name__}")
    check_regression_data(data)
    key = check_key(key)
    built = {name: ModelSpec.build(spec) for name, spec in specs.items()}
    for spec in built.values():
        spec.check_data(data)
    rows = {}
    for i, (name, spec) in enumerate(built.items()):
        est = log_evidence(data, spec, key=jax.random.fold_in(key, i), **options)
        rows[name] = {k: v for k, v in est._asdict().items() if k != "method"}
    return pd.DataFrame.from_dict(rows, orient="index")
