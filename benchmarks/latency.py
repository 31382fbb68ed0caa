"""Latency of a quick-start-sized fit: the compiled sampler against NumPyro's MCMC, with and without
JAX's persistent compilation cache.

The fit: P = 20, N0 = 5, D = 2, proportional limit (a = 1), sigma^2 inferred (HalfNormal(1)),
2 chains x (500 warmup + 500 draws), float32, log-likelihood group included.

* (a) a new process (import included): without the cache, and with a warm cache
  (``dl.enable_compilation_cache``; the first process fills it);
* (b) five fits in one process, each on new data of the same shape: without and with the cache;
* the same five fits with the sampler ``fit`` used before issue 13 -- NumPyro's ``MCMC(NUTS(model))``
  with the data in the model's closure, ``chain_method="sequential"``, ``arviz_base.from_numpyro``
  and the LOO group -- so the ratio is measured in the same run;
* ``deeplinear infer --no-plots`` (four fits of the demo): without and with a warm cache.

Every configuration runs in fresh processes, one at a time. Writes ``results/latency_cpu.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import describe

REPEATS = 5

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, numpyro.distributions as dist
import deeplinear as dl
if sys.argv[1] != "off":
    dl.enable_compilation_cache(sys.argv[1])
t_import = time.perf_counter() - t0
times = []
spec = dl.ModelSpec(dl.ProportionalLimitPrior(1.0, 2), noise_variance=dist.HalfNormal(1.0))
for i in range(int(sys.argv[2])):
    rng = np.random.default_rng(i)
    data = dl.RegressionData.linear(rng.normal(size=(20, 5)), rng.normal(size=(20, 2)))
    t = time.perf_counter()
    if len(sys.argv) > 3:  # the sampler before issue 13
        import arviz_base, jax
        from numpyro.infer import MCMC, NUTS, init_to_median
        from deeplinear.likelihood import loo_log_likelihood_draws
        mcmc = MCMC(NUTS(spec.model, init_strategy=init_to_median(num_samples=15)), num_warmup=500,
                    num_samples=500, num_chains=2, chain_method="sequential", progress_bar=False)
        mcmc.run(jax.random.key(i), data, extra_fields=("diverging",))
        tree = arviz_base.from_numpyro(mcmc, log_likelihood=False)
        s = mcmc.get_samples()
        np.asarray(loo_log_likelihood_draws(s["Q"], 1.0, s["noise_variance"], data))
    else:
        dl.fit(data, spec, num_warmup=500, num_samples=500, num_chains=2, progress_bar=False, key=i)
    times.append(time.perf_counter() - t)
print(json.dumps({"import": t_import, "fits": times, "process": time.perf_counter() - t0}))
"""


def child(cache: str, fits: int, before: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DEEPLINEAR_COMPILATION_CACHE"}
    t = time.perf_counter()
    args = [sys.executable, "-c", CHILD, cache, str(fits)] + (["mcmc"] if before else [])
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = wall  # the whole process, interpreter start-up included
    return result


def infer(cache: str) -> float:
    env = dict(os.environ)
    env["DEEPLINEAR_COMPILATION_CACHE"] = cache
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "deeplinear.app", "infer", "--no-plots"], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return time.perf_counter() - t


def main() -> None:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "jax-cache")
        cold = child("off", 1)
        child(cache, 1)  # fills the cache
        warm = child(cache, 1)
        repeat_off = child("off", REPEATS)
        repeat_on = child(cache, REPEATS)
        before_off = child("off", REPEATS, before=True)
        before_cache = str(Path(tmp) / "before-cache")
        child(before_cache, 1, before=True)  # fills it
        before_on = child(before_cache, REPEATS, before=True)
        infer_off = infer("off")
        infer_cache = str(Path(tmp) / "infer-cache")
        infer(infer_cache)  # fills it
        infer_warm = infer(infer_cache)

    def fits(r):
        return ", ".join(f"{t:.1f}" for t in r["fits"])

    def process(r):
        return f"{r['wall']:.1f} s (fit {r['fits'][0]:.1f} s, import {r['import']:.1f} s)"

    rows = [
        f"| (a) new process, no cache | {process(cold)} |",
        f"| (a) new process, warm cache | {process(warm)} |",
        f"| (b) {REPEATS} fits in one process, no cache | {fits(repeat_off)} s |",
        f"| (b) {REPEATS} fits in one process, cache on (warm) | {fits(repeat_on)} s |",
        f"| before: NumPyro MCMC, {REPEATS} fits in one process, no cache | {fits(before_off)} s |",
        f"| before: NumPyro MCMC, {REPEATS} fits in one process, warm cache | {fits(before_on)} s |",
        f"| ratio, repeats (median, no cache): before / now | "
        f"{np.median(before_off['fits'][1:]) / np.median(repeat_off['fits'][1:]):.1f}x |",
        f"| `deeplinear infer --no-plots`, no cache | {infer_off:.1f} s |",
        f"| `deeplinear infer --no-plots`, warm cache | {infer_warm:.1f} s |",
    ]
    text = (
        "# Latency of a quick-start-sized fit (CPU)\n\n"
        f"Machine: {describe()}\n\nLoad before the run (`uptime`): {load}\n\n"
        "Fit: P = 20, N0 = 5, D = 2, limit prior a = 1, sigma^2 inferred, 2 chains x (500 + 500), float32, "
        "with the LOO group; each row in fresh processes, one at a time. 'before' is the sampler of fit before "
        "issue 13 (NumPyro MCMC, data in the model's closure, sequential chains), run in the same session. "
        "(b) uses new data of the same shape "
        "for every fit. Targets of issue 13: (a) warm <= 6 s including import, (b) <= 1.5 s, infer <= 15 s.\n\n"
        "| configuration | time |\n|---|---|\n" + "\n".join(rows) + "\n"
    )
    out = Path(__file__).parent / "results" / "latency_cpu.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
