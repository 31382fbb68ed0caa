"""Learned kernels: one value-and-gradient of the log-likelihood with respect to an RBF lengthscale
and V-bar, as NUTS evaluates it at every leapfrog step, against the same through a dense Cholesky.

* eigenbasis: `RegressionData.learned_gram(K(ell), Y)` inside the function (an `eigh` of the P x P
  Gram matrix, not differentiated) and `KroneckerNormal(...).log_prob`, whose zero-valued term
  carries the exact gradient with respect to K: O(P^3) for the eigh and two P x P products;
* dense: `MultivariateNormal` with the DP x DP covariance lambda* K (x) Q + sigma^2 I and a
  Cholesky, O(D^3 P^3), differentiated by JAX.

Both must agree (relative differences of value and gradient reported). D = 2, 1-D inputs, float64
and float32. Run with nothing else busy on the machine:

    python benchmarks/learned_kernel.py [--quick]

Writes benchmarks/results/learned_kernel_<platform>.md.
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import best_time, describe
from jax.scipy.stats import multivariate_normal

import deeplinear as dl

D = 2
LAM, NOISE = 1.0, 0.1
REPEATS = 3


def rbf(x, ell):
    return jnp.exp(-0.5 * (x - x.T) ** 2 / ell**2)


def make(P, dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.sort(rng.uniform(-3, 3, size=(P, 1)), axis=0), dtype)
    Y = jnp.asarray(rng.normal(size=(P, D)), dtype)
    vbar = jnp.asarray([[1.0, 0.0], [0.5, 0.8]], dtype)
    return x, Y, vbar


def eigen_logp(params, x, Y):
    ell, vbar = params
    data = dl.RegressionData.learned_gram(rbf(x, ell), Y)
    q = vbar @ vbar.T
    return dl.KroneckerNormal(q, LAM, NOISE, data, root=vbar, labels_are_data=True).log_prob(data.labels)


def dense_logp(params, x, Y):
    ell, vbar = params
    P = x.shape[0]
    cov = LAM * jnp.kron(rbf(x, ell), vbar @ vbar.T) + NOISE * jnp.eye(D * P, dtype=x.dtype)
    return multivariate_normal.logpdf(Y.reshape(-1), jnp.zeros(D * P, x.dtype), cov)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    machine = describe()  # before the run: the load average at start
    sizes = [250, 500, 1000] if args.quick else [250, 500, 1000, 2000, 4000]
    dense_max = 1000 if args.quick else 2000
    rows, reference = [], {}
    for precision in ("float64", "float32"):
        with jax.enable_x64(precision == "float64"):
            eigen = jax.jit(jax.value_and_grad(eigen_logp))
            dense = jax.jit(jax.value_and_grad(dense_logp))
            for P in sizes:
                x, Y, vbar = make(P, precision)
                params = (jnp.asarray(0.7, precision), vbar)
                t_eig = best_time(eigen, params, x, Y, repeats=REPEATS)
                value, grad = eigen(params, x, Y)
                row = {"precision": precision, "P": P, "eigen_s": t_eig, "dense_s": None, "ratio": None,
                       "value_rel": None, "grad_rel": None, "finite": bool(np.isfinite(float(value)))}
                if P <= dense_max:
                    t_dense = best_time(dense, params, x, Y, repeats=REPEATS)
                    ref_value, ref_grad = dense(params, x, Y)
                    row.update(dense_s=t_dense, ratio=t_dense / t_eig,
                               value_rel=abs(float(value) - float(ref_value)) / abs(float(ref_value)),
                               grad_rel=abs(float(grad[0]) - float(ref_grad[0])) / abs(float(ref_grad[0])))
                if precision == "float64":
                    reference[P] = float(grad[0])
                else:  # float32 against the float64 gradient, both routes
                    row["eigen_f32_err"] = abs(float(grad[0]) - reference[P]) / abs(reference[P])
                    if P <= dense_max:
                        row["dense_f32_err"] = abs(float(dense(params, x, Y)[1][0]) - reference[P]) / abs(reference[P])
                rows.append(row)
                print(row, flush=True)
    lines = [
        "# Learned kernel: value and gradient per leapfrog step, eigenbasis vs dense Cholesky",
        "",
        f"Machine: {machine}",
        "",
        f"RBF kernel on P sorted points in [-3, 3], lengthscale 0.7, D = {D}, lambda* = {LAM}, noise {NOISE}; "
        f"best of {REPEATS} jitted `value_and_grad` calls with respect to (lengthscale, V-bar) after a warm-up. "
        "Relative differences between the routes: value, and the lengthscale's gradient component. "
        "float32 rows also give each route's gradient error against the float64 gradient.",
        "",
        "| precision | P | eigenbasis (s) | dense Cholesky (s) | dense / eigenbasis | value rel. diff | "
        "gradient rel. diff | eigenbasis f32 error | dense f32 error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    for r in rows:
        lines.append(f"| {r['precision']} | {r['P']} | {r['eigen_s']:.4f} | {fmt(r['dense_s'], '.4f')} | "
                     f"{fmt(r['ratio'], '.1f')} | {fmt(r['value_rel'], '.1e')} | {fmt(r['grad_rel'], '.1e')} | "
                     f"{fmt(r.get('eigen_f32_err'), '.1e')} | {fmt(r.get('dense_f32_err'), '.1e')} |")
    out = Path(__file__).parent / "results" / f"learned_kernel_{jax.devices()[0].platform}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
