"""The proportional limit with the ratio ``a`` inferred: the package's parametrization against one
that centres the diagonal's endpoint (issue 13, item 6).

Package (non-centred): ``brownian_diag`` ``xi`` ``(K, D)`` standard normals,
``log Vbar_rr = -r a/2 + sqrt(a/(2K)) sum_k xi_kr``. When the labels pin ``Q`` (large ``P``), the
posterior sits on a curved ridge in ``(a, xi)``: ``sum_k xi_kr = (log Vbar_rr + r a/2) sqrt(2K/a)``
moves non-linearly with ``a``.

Alternative (centred endpoint): an exact reparametrization. The sum direction of each column of
``xi`` is replaced by the endpoint itself, ``u_r = log Vbar_rr ~ N(-r a/2, a/2)`` (its exact
law), and the ``K - 1`` directions orthogonal to the sum by standard normals ``eta`` (a Helmert
basis): ``xi = t/sqrt(K) 1 + H eta`` with ``t_r = (u_r + r a/2)/sqrt(a/2)``. The off-diagonal
latents are unchanged. The labels then inform ``u`` directly, and ``a`` enters through the
Gaussian prior of ``u``.

Both run through NumPyro's NUTS on the same data (P inputs, N0 = 32, D = 2, sigma^2 ~ HalfNormal(1),
a ~ LogNormal(0, 0.5), K = 64), 2 chains x (300 + 300), float32, the same seeds. Reported:
divergences, wall time, the bulk ESS of ``a`` and of ``Q`` per second, and the posterior mean of
``a`` (the two must agree: same model). Writes ``results/limit_ratio_geometry_cpu.md``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import arviz_base
import arviz_stats
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _machine import describe
from numpyro.infer import MCMC, NUTS, init_to_median

import deeplinear as dl
from deeplinear.likelihood import KroneckerNormal
from deeplinear.priors import _lower_triangular, _ordered_product

SIZES = (1_000, 10_000)
N0, D, K, CHAINS, WARMUP, SAMPLES = 32, 2, 64, 2, 300, 300
RATIO_PRIOR = dist.LogNormal(0.0, 0.5)


def helmert(k: int) -> np.ndarray:
    """``(k, k-1)`` orthonormal columns orthogonal to the vector of ones."""
    h = np.zeros((k, k - 1))
    for j in range(1, k):
        h[:j, j - 1] = 1.0
        h[j, j - 1] = -j
        h[:, j - 1] /= np.sqrt(j * (j + 1))
    return h


def centred_endpoint_model(data):
    a = numpyro.sample("ratio", RATIO_PRIOR)
    noise = numpyro.sample("noise_variance", dist.HalfNormal(1.0))
    r = jnp.arange(1, D + 1, dtype=jnp.float32)
    u = numpyro.sample("log_diag_end", dist.Normal(-r * a / 2, jnp.sqrt(a / 2)).to_event(1))
    eta = numpyro.sample("bridge", dist.Normal(jnp.zeros((K - 1, D)), 1.0).to_event(2))
    off = numpyro.sample("brownian_offdiag", dist.Normal(jnp.zeros((K, D * (D - 1) // 2)), 1.0).to_event(2))
    h = a / K
    t = (u + r * a / 2) / jnp.sqrt(a / 2)
    xi = t / np.sqrt(K) + jnp.asarray(helmert(K), jnp.float32) @ eta  # (K, D)
    log_diag = -r * h / 2 + jnp.sqrt(h / 2) * xi
    vbar = _ordered_product(_lower_triangular(jnp.exp(log_diag), jnp.sqrt(h) * off, D))
    q = numpyro.deterministic("Q", vbar @ vbar.T)
    numpyro.sample("Y", KroneckerNormal(q, 1.0, noise, data, root=vbar, labels_are_data=True), obs=data.labels)


def package_model(data):
    spec = dl.ModelSpec(dl.ProportionalLimitPrior(1.0, D, num_steps=K), noise_variance=dist.HalfNormal(1.0),
                        ratio=RATIO_PRIOR)
    spec.model(data)


def run(model, data, seed):
    mcmc = MCMC(NUTS(model, init_strategy=init_to_median(num_samples=15)), num_warmup=WARMUP, num_samples=SAMPLES,
                num_chains=CHAINS, chain_method="vectorized", progress_bar=False)
    mcmc.warmup(jax.random.key(seed), data, collect_warmup=False)  # compile and adapt, not timed below
    t = time.perf_counter()
    mcmc.run(mcmc.post_warmup_state.rng_key, data, extra_fields=("diverging",))
    wall = time.perf_counter() - t
    tree = arviz_base.from_numpyro(mcmc, log_likelihood=False)
    ess = arviz_stats.ess(tree, var_names=["ratio", "Q"])
    return {
        "divergences": int(mcmc.get_extra_fields()["diverging"].sum()),
        "wall": wall,
        "ess_a": float(ess["ratio"]),
        "ess_q": float(np.min(ess["Q"].values)),
        "mean_a": float(tree["posterior"]["ratio"].mean()),
        "sd_a": float(tree["posterior"]["ratio"].std()),
    }


def main() -> None:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for P in SIZES:
        rng = np.random.default_rng(P)
        X = rng.normal(size=(P, N0))
        W = rng.normal(size=(N0, D)) / np.sqrt(N0)
        W[:, 1] = 0.9 * W[:, 0] + 0.44 * W[:, 1]
        data = dl.RegressionData.linear(X, X @ W + 0.5 * rng.normal(size=(P, D)))
        for name, model in (("package (non-centred)", package_model), ("centred endpoint", centred_endpoint_model)):
            r = run(model, data, 0)
            rows.append(
                f"| {P:,} | {name} | {r['divergences']} / {CHAINS * SAMPLES} | {r['wall']:.1f} s | "
                f"{r['ess_a'] / r['wall']:.1f} | {r['ess_q'] / r['wall']:.1f} | {r['mean_a']:.3f} ± {r['sd_a']:.3f} |"
            )
            print(rows[-1], flush=True)
    text = (
        "# The limit prior with the ratio inferred: two parametrizations (CPU)\n\n"
        f"Machine: {describe()}\n\nLoad before the run (`uptime`): {load}\n\n"
        f"N0 = {N0}, D = {D}, K = {K} steps, a ~ LogNormal(0, 0.5), sigma^2 ~ HalfNormal(1); NumPyro NUTS, "
        f"{CHAINS} chains x ({WARMUP} + {SAMPLES}) vectorized, float32, warmup not timed. ESS: bulk; for Q the "
        "smallest over its entries.\n\n"
        "| P | parametrization | divergences | sampling time | ESS(a)/s | min ESS(Q)/s | posterior a |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    out = Path(__file__).parent / "results" / "limit_ratio_geometry_cpu.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
