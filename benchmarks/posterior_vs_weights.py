"""ESS per second of the posterior predictive: deeplinear (NUTS on Q's latents) vs NUTS on
every weight of the same network, same data, same run.

Data: N0 = 3 features, P = 8 inputs, D = 2 correlated outputs, sigma^2 = 0.1, lambda* = 1;
one test input. Quantities: the predictive mean of f_d(x*) and its variance
(E[Sigma*] + Var(m*) for deeplinear, Var(f) for the weights), d = 1, 2. Each method runs
twice with identical settings (W warmup + S draws per chain). The first call's wall time
includes everything a user waits for. NumPyro's MCMC re-compiles parts of its sampler on
every call (it jits fresh closures), so from the second call we also subtract the XLA
compilation and lowering time that JAX reports (jax.monitoring events), leaving the cost of
warmup + sampling (and Python tracing). ESS is NumPyro's multi-chain ESS of the second run,
the minimum over the four quantities. The answers must agree within Monte Carlo error.

    python benchmarks/posterior_vs_weights.py [--quick] [--x64]

Writes benchmarks/results/posterior_vs_weights_<platform>.md.
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import describe
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

import deeplinear as dl
from deeplinear.network import weight_space_model

SIZES = [(6, 3), (10, 5), (30, 15)]
N0, P, D, NOISE = 3, 8, 2, 0.1
CHAINS = 2


def data():
    rng = np.random.default_rng(1)
    X, Xt = rng.normal(size=(N0, P)), rng.normal(size=(N0, 1))
    f = rng.normal(size=(1, N0)) @ X / np.sqrt(N0)
    Y = np.vstack([f, 0.8 * f]) + 0.3 * rng.normal(size=(2, P))
    return X, Y, Xt


def summarize(mean_terms, var_terms):
    """Mean, MCSE and ESS of per-draw terms shaped (chain, draw, k)."""
    out = []
    for t in (mean_terms, var_terms):
        ess = effective_sample_size(np.asarray(t, np.float64))
        m = t.mean((0, 1))
        out.append((m, t.std((0, 1)) / np.sqrt(ess), ess))
    return out


_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
_compile_seconds = [0.0]


def _listener(name, duration, **kwargs):
    if name in _COMPILE_EVENTS:
        _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_listener)


def two_runs(fn, *args):
    """(first-call seconds, second-call seconds without XLA compilation, summary of the 2nd run)."""
    t1, _ = fn(*args)
    before = _compile_seconds[0]
    t2, summary = fn(*args)
    return t1, t2 - (_compile_seconds[0] - before), summary


def run_weights(X, Y, Xt, N, L, warmup, draws):
    mcmc = MCMC(NUTS(weight_space_model), num_warmup=warmup, num_samples=draws, num_chains=CHAINS,
                chain_method="sequential", progress_bar=False)
    t = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(0), jnp.asarray(X.T), jnp.asarray(Y.T), widths=(N,) * L, num_outputs=D,
             noise_variance=NOISE, X_test=jnp.asarray(Xt.T))  # rows are observations
    ft = np.asarray(mcmc.get_samples(group_by_chain=True)["f_test"])[..., 0, :]  # (C, S, D)
    jax.block_until_ready(ft)
    wall = time.perf_counter() - t
    return wall, summarize(ft, (ft - ft.mean((0, 1))) ** 2)


def run_deeplinear(X, Y, Xt, N, L, warmup, draws):
    t = time.perf_counter()
    res = dl.fit(dl.RegressionData.linear(X.T, Y.T), dl.FiniteWidthPrior.from_depth_width(L, N, D),
                 noise_variance=NOISE, num_warmup=warmup, num_samples=draws, num_chains=CHAINS,
                 chain_method="sequential", progress_bar=False, log_likelihood=False)
    pm = res.predict(Xt.T)
    md = np.asarray(pm.draw_means)[:, 0, :].reshape(CHAINS, draws, D)
    cd = np.asarray(pm.draw_covariances)[:, 0].reshape(CHAINS, draws, D, D)
    wall = time.perf_counter() - t
    var_terms = np.einsum("csdd->csd", cd) + (md - md.mean((0, 1))) ** 2
    return wall, summarize(md, var_terms)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--x64", action="store_true", help="run in float64")
    args = parser.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    warmup, draws = (200, 300) if args.quick else (1000, 2000)
    ws_warmup, ws_draws = (200, 300) if args.quick else (500, 1000)
    X, Y, Xt = data()
    rows = []
    for N, L in SIZES:
        n_weights = N0 * N + (L - 1) * N * N + N * D
        wt1, wt2, ws = two_runs(run_weights, X, Y, Xt, N, L, ws_warmup, ws_draws)
        dt1, dt2, dls = two_runs(run_deeplinear, X, Y, Xt, N, L, warmup, draws)
        ess_w = min(ws[0][2].min(), ws[1][2].min())
        ess_d = min(dls[0][2].min(), dls[1][2].min())
        z_mean = np.abs(ws[0][0] - dls[0][0]) / np.hypot(ws[0][1], dls[0][1])
        z_var = np.abs(ws[1][0] - dls[1][0]) / np.hypot(ws[1][1], dls[1][1])
        rows.append(dict(N=N, L=L, n_weights=n_weights, wt1=wt1, wt2=wt2, ess_w=ess_w, dt1=dt1, dt2=dt2,
                         ess_d=ess_d, call=(ess_d / dt1) / (ess_w / wt1), steady=(ess_d / dt2) / (ess_w / wt2),
                         z=max(z_mean.max(), z_var.max()),
                         mean_w=ws[0][0], mean_d=dls[0][0], var_w=ws[1][0], var_d=dls[1][0]))
        r = rows[-1]
        print(f"N={N:3d} L={L:3d} weights={n_weights:6d} | weights: {wt1:6.1f}s / {wt2:6.1f}s, ESS {ess_w:6.0f} "
              f"| deeplinear: {dt1:6.1f}s / {dt2:6.1f}s, ESS {ess_d:6.0f} | ESS/s ratio per call "
              f"{r['call']:6.1f}x, without compilation {r['steady']:6.1f}x | max |z| {r['z']:.2f}", flush=True)

    plat = jax.devices()[0].platform
    out = Path(__file__).parent / "results" / f"posterior_vs_weights_{plat}.md"
    lines = [
        "# Posterior predictive: deeplinear vs NUTS on all weights",
        "",
        f"Machine: {describe()}",
        f"Command: `python benchmarks/posterior_vs_weights.py{' --quick' if args.quick else ''}"
        f"{' --x64' if args.x64 else ''}`",
        f"Data: N0={N0}, P={P}, D={D}, sigma^2={NOISE}; {CHAINS} chains each. Weights: {ws_warmup} warmup + "
        f"{ws_draws} draws per chain; deeplinear: {warmup} + {draws}. '1st call' = wall time of a first "
        "fit (compilation, warmup, sampling; for deeplinear also the DataTree and predictive mixture); "
        "'no compile' = a second identical call minus the XLA compile/lowering time JAX reports. "
        "ESS = min over predictive mean and variance of both outputs at the test input (2nd call). "
        "z = largest |difference| / combined MCSE between the two methods.",
        "",
        "| N | L | weights | weights: 1st call s | no compile s | ESS | deeplinear: 1st call s | no compile s "
        "| ESS | ESS/s ratio, 1st call | ESS/s ratio, no compile | max z |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['N']} | {r['L']} | {r['n_weights']} | {r['wt1']:.1f} | {r['wt2']:.1f} | {r['ess_w']:.0f} "
            f"| {r['dt1']:.1f} | {r['dt2']:.1f} | {r['ess_d']:.0f} | {r['call']:.1f}x "
            f"| **{r['steady']:.1f}x** | {r['z']:.2f} |"
        )
    lines += ["", "Predictive mean and variance of (f_1, f_2) at the test input:", ""]
    fmt = lambda v: "[" + ", ".join(f"{float(x):.4f}" for x in v) + "]"  # noqa: E731
    for r in rows:
        lines.append(
            f"- N={r['N']}, L={r['L']}: mean weights {fmt(r['mean_w'])} vs deeplinear {fmt(r['mean_d'])}; "
            f"variance {fmt(r['var_w'])} vs {fmt(r['var_d'])}"
        )
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
