"""BlackJAX's adaptive tempered SMC against the package's AIS (issue 29, item 5).

The question: should ``log_evidence`` use ``blackjax.adaptive_tempered_smc`` instead of its own
annealed importance sampling? Adopt it if it is as accurate at no more than 1.5x the time.

On the three ``D >= 2`` problems of ``benchmarks/evidence.py`` (two with ``D = 2``, one with
``D = 3``), each estimator runs KEYS times (keys 0..KEYS-1) after one warm-up run (compilation
excluded), float64, PARTICLES particles:

* AIS: ``log_evidence(method="ais")`` with its defaults (pilot-tuned schedule and HMC);
* BlackJAX: ``blackjax.inner_kernel_tuning`` around ``blackjax.adaptive_tempered_smc`` (target ESS
  0.5, systematic resampling) with BlackJAX's HMC kernel, NUM_MCMC_STEPS moves of NUM_LEAPFROG
  leapfrog steps per temperature, the inverse mass matrix set to the particles' variances after
  each step (``blackjax.smc.tuning.from_particles``), and the step size adapted from the moves'
  mean acceptance towards TARGET_ACCEPTANCE. Its log evidence is the sum of the steps'
  ``log_likelihood_increment``. The log prior and (relative) log likelihood in unconstrained
  coordinates are the package's own (``deeplinear.evidence._log_parts``), so both estimate the
  same integral; the data constant is added back to both.

Reference: AIS with REFERENCE_PARTICLES particles (another key). Reported: mean of the estimates,
their spread (standard deviation over the keys), RMSE against the reference, mean seconds, and
the time ratio. Writes ``results/evidence_blackjax_<platform>.md``.

    python -m pip install blackjax   # not a dependency of the package
    python benchmarks/evidence_blackjax.py
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import blackjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _machine import describe  # noqa: E402
from blackjax.smc import resampling  # noqa: E402
from blackjax.smc.tuning.from_particles import particles_stds  # noqa: E402
from evidence import problems  # noqa: E402

from deeplinear.evidence import _data_constant, _log_parts, _prior_draw, _structure, log_evidence  # noqa: E402

KEYS = 20
PARTICLES = 1024
REFERENCE_PARTICLES = 4096
NUM_MCMC_STEPS = 10  # BlackJAX's default
NUM_LEAPFROG = 8  # as the package's AIS moves
TARGET_ACCEPTANCE = 0.65
INITIAL_STEP = 0.1


def blackjax_smc(model_args, num_particles):
    """A jitted ``key -> (log evidence less the data constant, number of temperatures)``."""
    supports, unravel, dim = _structure(model_args)

    def log_prior(x):
        return _log_parts(model_args, supports, unravel, x)[0]

    def log_likelihood(x):
        return _log_parts(model_args, supports, unravel, x)[1]

    def run(key):
        k_init, k_run = jax.random.split(key)
        particles = jax.vmap(lambda k: _prior_draw(model_args, k, jnp.float64))(
            jax.random.split(k_init, num_particles))

        def step_with(step_size, inverse_mass, key, state):
            smc = blackjax.adaptive_tempered_smc(
                log_prior, log_likelihood, blackjax.hmc.build_kernel(), blackjax.hmc.init,
                {"step_size": step_size[None], "inverse_mass_matrix": inverse_mass[None],
                 "num_integration_steps": jnp.array([NUM_LEAPFROG])},
                resampling.systematic, 0.5, num_mcmc_steps=NUM_MCMC_STEPS)
            return smc.step(key, state)

        init = blackjax.adaptive_tempered_smc(
            log_prior, log_likelihood, blackjax.hmc.build_kernel(), blackjax.hmc.init, {},
            resampling.systematic, 0.5).init(particles)

        def cond(carry):
            return carry[1].tempering_param < 1

        def body(carry):
            key, state, log_z, step_size, count = carry
            key, sub = jax.random.split(key)
            inverse_mass = particles_stds(state.particles) ** 2
            state, info = step_with(step_size, inverse_mass, sub, state)
            acceptance = jnp.mean(info.update_info.acceptance_rate)
            step_size = step_size * jnp.exp(acceptance - TARGET_ACCEPTANCE)
            return key, state, log_z + info.log_likelihood_increment, step_size, count + 1

        carry = (k_run, init, jnp.zeros(()), jnp.asarray(INITIAL_STEP), jnp.zeros((), jnp.int32))
        _, _, log_z, _, count = jax.lax.while_loop(cond, body, carry)
        return log_z, count

    return jax.jit(run), dim


def main():
    machine = describe()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    sections = []
    for name, data_, spec in problems():
        if spec.num_outputs < 2:
            continue
        args = spec.model_arguments(data_)
        constant = _data_constant(spec, data_)
        ref = log_evidence(data_, spec, method="ais", num_particles=REFERENCE_PARTICLES, key=999, progress_bar=False)
        smc, dim = blackjax_smc(args, PARTICLES)
        rows = {}
        for estimator in ("AIS (deeplinear)", "adaptive tempered SMC (BlackJAX)"):
            values, secs, extra = [], [], []
            for k in [1000, *range(KEYS)]:  # the first is the warm-up (compilation)
                t = time.perf_counter()
                if estimator.startswith("AIS"):
                    est = log_evidence(data_, spec, method="ais", num_particles=PARTICLES, key=k, progress_bar=False)
                    value, note = est.log_evidence, est.standard_error
                else:
                    log_z, count = jax.block_until_ready(smc(jax.random.key(k)))
                    value, note = float(log_z) + constant, int(count)
                if k != 1000:
                    values.append(value)
                    secs.append(time.perf_counter() - t)
                    extra.append(note)
            values = np.asarray(values)
            rmse = float(np.sqrt(np.mean((values - ref.log_evidence) ** 2)))
            rows[estimator] = (values.mean(), values.std(ddof=1), rmse, float(np.mean(secs)), float(np.mean(extra)))
            print(name, estimator, rows[estimator], flush=True)
        ais_time = rows["AIS (deeplinear)"][3]
        lines = [f"### {name}", "", f"{dim} unconstrained dimensions. Reference: {ref.log_evidence:.4f} (AIS, "
                 f"{REFERENCE_PARTICLES} particles, stated SE {ref.standard_error:.4f}).", "",
                 "| estimator | mean | spread over keys (SD) | RMSE | seconds | time / AIS | notes |",
                 "|---|---|---|---|---|---|---|"]
        for estimator, (mean, sd, rmse, sec, note) in rows.items():
            what = (f"mean stated SE {note:.4f}" if estimator.startswith("AIS")
                    else f"{note:.1f} temperatures on average; no error statement")
            lines.append(f"| {estimator} | {mean:.4f} | {sd:.4f} | {rmse:.4f} | {sec:.2f} | {sec / ais_time:.2f} | "
                         f"{what} |")
        sections.append("\n".join(lines))
    header = [
        "# log_evidence: BlackJAX's adaptive tempered SMC against the package's AIS (issue 29)", "",
        f"Machine: {machine}. Commit {commit}. Written by `python benchmarks/evidence_blackjax.py` "
        f"(blackjax {blackjax.__version__}).", "",
        f"{KEYS} keys per estimator after one warm-up run (compilation excluded); {PARTICLES} particles; float64. "
        f"BlackJAX: HMC with {NUM_MCMC_STEPS} moves of {NUM_LEAPFROG} leapfrog steps per temperature, target ESS "
        f"0.5, inverse mass matrix from the particles' variances, step size adapted towards an acceptance of "
        f"{TARGET_ACCEPTANCE}.", ""]
    out = Path(__file__).parent / "results" / f"evidence_blackjax_{jax.devices()[0].platform}.md"
    out.write_text("\n".join(header) + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
