"""Sampling cost of the limit prior's two time discretizations (issue 16, item 2): the
second-order scheme at its default ``K = 16`` against Euler at its default ``K = 64``.

Both have weak errors measured exactly in docs/limit_timestep_error.md: at these defaults the
second-order scheme is 4-12x closer to the limit (a <= 2) with a quarter of the latents. This
benchmark measures what the smaller latent space buys NUTS: the same data, ``dl.fit`` with
``a ~ LogNormal(0, 0.5)`` and ``sigma^2 ~ HalfNormal(1)`` inferred, 2 chains x (WARMUP + SAMPLES),
the same key. Each fit runs twice; the second (compiled program reused) is timed. Reported:
divergences, time, bulk ESS of ``a`` and the smallest bulk ESS over the entries of ``Q`` per
second, and the posterior mean of ``a`` (the two models differ only by their time-step error,
so these should agree within their spread). Writes ``results/limit_scheme_cpu.md``.

    python benchmarks/limit_scheme.py
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import arviz_stats
import jax
import numpy as np
import numpyro.distributions as dist
from _machine import describe

import deeplinear as dl
from deeplinear.datasets import correlated_outputs

WARMUP, SAMPLES, CHAINS = 500, 500, 2
SCHEMES = (("second-order", 16), ("euler", 64))
CASES = ("D = 2, P = 12 (correlated_outputs)", "D = 3, P = 200 (synthetic)")


def problem(case: str) -> dl.RegressionData:
    if case.startswith("D = 2"):
        ds = correlated_outputs()
        return dl.RegressionData.linear(ds.X_train, ds.Y_train)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 8))
    mix = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.3, 0.8]])
    Y = X @ rng.normal(size=(8, 3)) @ mix.T / np.sqrt(8) + 0.3 * rng.normal(size=(200, 3))
    return dl.RegressionData.linear(X, Y)


def one_fit(data, scheme, steps):
    prior = dl.ProportionalLimitPrior(1.0, data.num_outputs, num_steps=steps, scheme=scheme)
    kw = dict(ratio=dist.LogNormal(0.0, 0.5), noise_variance=dist.HalfNormal(1.0), num_warmup=WARMUP,
              num_samples=SAMPLES, num_chains=CHAINS, key=7, progress_bar=False)
    dl.fit(data, prior, **kw)  # compile
    start = time.perf_counter()
    post = dl.fit(data, prior, **kw)
    seconds = time.perf_counter() - start
    tree = post.datatree
    ess = arviz_stats.ess(tree, group="posterior", var_names=["ratio", "Q"], method="bulk")
    ess = ess["posterior"] if "posterior" in getattr(ess, "children", {}) else ess
    ess_a = float(ess["ratio"].values)
    ess_q = float(np.nanmin(np.where(np.tril(np.ones(ess["Q"].shape[-2:])) > 0, ess["Q"].values, np.nan)))
    a = tree["posterior"]["ratio"].values
    div = int(tree["sample_stats"]["diverging"].values.sum())
    return div, seconds, ess_a / seconds, ess_q / seconds, a.mean(), a.std()


def main():
    machine = describe()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for case in CASES:
        data = problem(case)
        for scheme, steps in SCHEMES:
            rows.append((case, scheme, steps, *one_fit(data, scheme, steps)))
            print(rows[-1], flush=True)
    lines = [
        "# The limit prior's time discretizations: NUTS cost at their defaults (CPU)",
        "",
        f"Machine: {machine}",
        "",
        f"Load before the run (`uptime`): {uptime}",
        "",
        f"`dl.fit`, a ~ LogNormal(0, 0.5), sigma^2 ~ HalfNormal(1), {CHAINS} chains x ({WARMUP} + {SAMPLES}), "
        "float32, key 7; the second of two identical fits is timed (warmup and sampling, no compilation). "
        "ESS: bulk; for Q the smallest over its lower-triangular entries.",
        "",
        "| data | scheme | K | latents per draw | divergences | time | ESS(a)/s | min ESS(Q)/s | posterior a |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, scheme, steps, div, s, ea, eq, am, asd in rows:
        D = 2 if case.startswith("D = 2") else 3
        lines.append(f"| {case} | {scheme} | {steps} | {steps * D * (D + 1) // 2} | {div} / {CHAINS * SAMPLES} | "
                     f"{s:.1f} s | {ea:.1f} | {eq:.1f} | {am:.3f} ± {asd:.3f} |")
    speed = {}
    for case, scheme, _steps, _div, _s, ea, eq, *_ in rows:
        speed.setdefault(case, {})[scheme] = (ea, eq)
    lines += ["", "Second order against Euler (ratio of ESS per second, a and min over Q):", ""]
    for case, sp in speed.items():
        lines.append(f"- {case}: {sp['second-order'][0] / sp['euler'][0]:.2f}x and "
                     f"{sp['second-order'][1] / sp['euler'][1]:.2f}x")
    out = Path(__file__).parent / "results" / f"limit_scheme_{jax.devices()[0].platform}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
