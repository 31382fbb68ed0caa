"""Issue 31, item 2: does moment matching (``arviz_stats.loo_moment_match``) bring Linnerud's Pareto k
below 0.7, before any refit?

Moment matching moves the posterior draws, in the unconstrained space, towards each problematic
leave-one-out posterior and reweights them; it needs the log posterior density and the held-out
term :math:`\\log p(y_i \\mid Y_{-i}, \\theta)` as functions of the unconstrained parameters. Both are
built here from the model with NumPyro's ``unconstrain_fn``/``constrain_fn``/``potential_energy``
(the potential includes the transforms' Jacobians) and the package's exact LOO terms. The models
and settings are ``model_comparison.py``'s. Writes ``results/moment_matching_cpu.md``. Run:
``python benchmarks/moment_matching.py`` with nothing else busy.
"""

from __future__ import annotations

import subprocess
import time
import warnings
from pathlib import Path

import arviz_stats
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from _machine import describe
from jax.flatten_util import ravel_pytree
from model_comparison import _models
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

import deeplinear as dl
from deeplinear.likelihood import loo_log_likelihood_draws


def _latent_sites(fit):
    trace = handlers.trace(handlers.seed(fit.spec.model, 0)).get_trace(fit.data)
    return [n for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]


def moment_match(fit):
    """``(PSIS-LOO, moment-matched LOO, seconds, unconstrained dimensions)`` of one fit."""
    model, data = fit.spec.model, fit.data
    names = _latent_sites(fit)
    post = fit.datatree["posterior"]
    C, S = post.sizes["chain"], post.sizes["draw"]
    constrained = {n: jnp.asarray(post[n].values.reshape(C * S, *post[n].shape[2:])) for n in names}
    unconstrained = jax.vmap(lambda p: unconstrain_fn(model, (data,), {}, p))(constrained)
    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], unconstrained))
    flat = jax.vmap(lambda p: ravel_pytree(p)[0])(unconstrained)
    upars = xr.DataArray(np.asarray(flat).reshape(C, S, -1), dims=("chain", "draw", "upars_dim"))

    @jax.jit
    def log_prob(rows):
        return jax.vmap(lambda r: -potential_energy(model, (data,), {}, unravel(r)))(rows)

    @jax.jit
    def held_out_terms(rows):
        values = jax.vmap(lambda r: constrain_fn(model, (data,), {}, unravel(r), return_deterministic=True))(rows)
        noise = values["noise_covariance"] if "noise_covariance" in values else values["noise_variance"]
        lam = values.get("lambda_star", jnp.full(rows.shape[0], fit.spec.lambda_star, data.dtype))
        if noise.ndim == 3:
            return loo_log_likelihood_draws(values["Q"], lam, None, data, noise_covariance=noise)
        return loo_log_likelihood_draws(values["Q"], lam, noise, data)

    def as_draws(a, ref):
        return xr.DataArray(np.asarray(a, np.float64).reshape(ref.sizes["chain"], ref.sizes["draw"]),
                            dims=("chain", "draw"))

    def log_prob_upars(u):
        return as_draws(log_prob(jnp.asarray(u.values.reshape(-1, u.shape[-1]), data.dtype)), u)

    def log_lik_i_upars(u, i):
        return as_draws(held_out_terms(jnp.asarray(u.values.reshape(-1, u.shape[-1]), data.dtype))[:, i], u)

    psis = dl.loo(fit)
    started = time.perf_counter()
    matched = arviz_stats.loo_moment_match(fit.datatree, psis, log_prob_upars_fn=log_prob_upars,
                                           log_lik_i_upars_fn=log_lik_i_upars, upars=upars, pointwise=True)
    return psis, matched, time.perf_counter() - started, upars.sizes["upars_dim"]


def main() -> None:
    warnings.simplefilter("ignore", dl.ConvergenceWarning)
    warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
    fits, _, _ = _models()
    lines = ["# Moment matching on Linnerud (issue 31, item 2)", "", f"Machine: {describe()}", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| model | unconstrained dims | PSIS elpd | max k | rows with k > 0.7 | moment-matched elpd | max k after "
             "| seconds |", "|---|---|---|---|---|---|---|---|"]
    for name, fit in fits.items():
        psis, matched, seconds, dims = moment_match(fit)
        k0, k1 = np.asarray(psis.pareto_k), np.asarray(matched.pareto_k)
        lines.append(f"| {name} | {dims} | {psis.elpd:.2f} ± {psis.se:.2f} | {k0.max():.2f} | "
                     f"{', '.join(str(i) for i in np.flatnonzero(k0 > 0.7)) or 'none'} | "
                     f"{matched.elpd:.2f} ± {matched.se:.2f} | {k1.max():.2f} | {seconds:.1f} |")
        print(lines[-1], flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines += ["", f"Load (`uptime`) at the end: {load}", ""]
    out = Path(__file__).parent / "results" / "moment_matching_cpu.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
