"""Log-likelihood + gradient vs the number of inputs P: eigenbasis vs dense Cholesky.

Linear kernel, N0 = 64 features, D = 3 outputs, P from 1e3 to 1e6. For each P:

* set-up: `RegressionData.linear(X, Y)` (thin SVD of X, O(P N0^2), and the rotation);
* per step: jitted value-and-gradient of `KroneckerNormal(Q, ...).log_prob(Y)` with respect
  to V-bar (Q = V V^T), the quantity NUTS evaluates at every leapfrog step, O(N0 D^3);
* dense: the same value-and-gradient with the full DP x DP covariance
  lambda* Q (x) K + sigma^2 I and a Cholesky (O(D^3 P^3)), where it fits in memory/time.

The two routes must give the same value (relative difference reported).

    python benchmarks/likelihood_scaling.py [--quick]

Writes benchmarks/results/likelihood_scaling_<platform>.md.
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import best_time, describe

import deeplinear as dl

N0, D = 64, 3
LAM, NOISE = 1.0, 0.5
REPEATS = 5


def dense_logp(vbar, X, Y):
    q = vbar @ vbar.T
    K = X.T @ X / X.shape[0]
    P = X.shape[1]
    cov = LAM * jnp.kron(q, K) + NOISE * jnp.eye(D * P, dtype=X.dtype)
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, Y.reshape(-1), lower=True)
    return -0.5 * z @ z - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * D * P * jnp.log(2 * jnp.pi)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    sizes = [1_000, 10_000, 100_000] if args.quick else [1_000, 3_000, 10_000, 100_000, 1_000_000]
    dense_max = 1_000 if args.quick else 3_000
    rng = np.random.default_rng(0)
    vbar = jnp.asarray(np.tril(rng.normal(size=(D, D))) + 2 * np.eye(D))
    rows = []
    for P in sizes:
        X = rng.normal(size=(N0, P))
        Y = rng.normal(size=(D, P))
        t = time.perf_counter()
        data = dl.RegressionData.linear(X.T, Y.T)  # the package takes rows; X, Y here are theory.md's columns
        setup = time.perf_counter() - t

        @jax.jit
        def fast(v, data):
            return jax.value_and_grad(lambda v: dl.KroneckerNormal(v @ v.T, LAM, NOISE, data).log_prob(data.labels))(v)

        step = best_time(fast, vbar, data, repeats=REPEATS)
        value = float(fast(vbar, data)[0])
        row = dict(P=P, setup=setup, step=step, dense=None, rel=None)
        if P <= dense_max:
            Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
            dense = jax.jit(jax.value_and_grad(dense_logp))
            row["dense"] = best_time(dense, vbar, Xj, Yj, repeats=REPEATS)
            row["rel"] = abs(float(dense(vbar, Xj, Yj)[0]) - value) / abs(value)
        rows.append(row)
        d = f"{row['dense'] * 1e3:10.1f} ms" if row["dense"] else "         -"
        print(f"P={P:>9,d} setup {setup:8.3f} s | step {step * 1e6:8.1f} us | dense {d}", flush=True)

    plat = jax.devices()[0].platform
    out = Path(__file__).parent / "results" / f"likelihood_scaling_{plat}.md"
    lines = [
        "# Log-likelihood + gradient vs P: eigenbasis vs dense Cholesky",
        "",
        f"Machine: {describe()}",
        f"Command: `python benchmarks/likelihood_scaling.py{' --quick' if args.quick else ''}` (float64)",
        f"Linear kernel, N0 = {N0}, D = {D}; per step = jitted value_and_grad wrt Vbar, best of {REPEATS}.",
        "",
        "| P | set-up (s) | per step (us) | dense per step (ms) | dense / eigenbasis | rel. difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        dense = f"{r['dense'] * 1e3:.1f}" if r["dense"] else "-"
        ratio = f"{r['dense'] / r['step']:.0f}x" if r["dense"] else "-"
        rel = f"{r['rel']:.1e}" if r["rel"] is not None else "-"
        lines.append(f"| {r['P']:,} | {r['setup']:.3f} | {r['step'] * 1e6:.1f} | {dense} | {ratio} | {rel} |")
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
