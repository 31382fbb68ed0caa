"""The renormalized kernel against the exact posterior (issue 16, item 3): how far its Gaussian
predictive is from the exact posterior predictive as the width ``N``, the depth ``L`` and the number of
rows ``P`` grow. An accuracy study, not a timing: the numbers do not depend on the machine's load.

A. ``D = 1``, exact reference (``exact_posterior_d1``: FFT convolution of tilted log-Gamma densities):
   ``N`` from 16 to 1024 at ``P/N = 1/2`` and ``P/N0 = 1/2``, ``L = 1, 2, 4``; the NNGP alongside.
B. ``D = 1``, exact reference: ``L`` from 1 to 128 at ``N = 64``, ``P = 32``; the renormalized
   kernel, the NNGP and the proportional-limit prior with ``a = L/N`` (exact by quadrature), each set
   against the finite-width posterior.
C. ``D = 2``, correlated labels, reference: NUTS (``dl.fit``, 4 chains x 2000 draws) on the finite-width
   prior, ``N`` from 16 to 128 at ``P/N = 1/2``, ``L = 2``; the distance of the predictive means and
   covariances and of the predictive output correlation, with the reference's Monte Carlo error.

Distances, over ``P* = 20`` test inputs (``D = 1``: mean error in posterior standard deviations and
relative variance error): ``mean`` = max over test inputs of the Mahalanobis norm of the mean error in the
reference's predictive covariance; ``cov`` = max of the spectral norm of
``Sigma_ref^{-1/2} Sigma Sigma_ref^{-1/2} - I``; ``distance`` = the larger of the two. Averages over
``SEEDS`` data sets. Writes ``results/renormalized_kernel_cpu.md``.

    python benchmarks/renormalized_kernel.py
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from _machine import describe  # noqa: E402

import deeplinear as dl  # noqa: E402
from deeplinear.renormalized import renormalized_kernel  # noqa: E402

NOISE = 0.1
SEEDS = 5
TEST = 20
WIDTHS_A = (16, 32, 64, 128, 256, 512, 1024)
DEPTHS_A = (1, 2, 4)
WIDTH_B, ROWS_B = 64, 32
DEPTHS_B = (1, 2, 4, 8, 16, 32, 64, 128)
WIDTHS_C = (16, 32, 64, 128)
SEEDS_C = 2
NUTS = dict(num_warmup=1000, num_samples=2000, num_chains=4, progress_bar=False)
MIXING = np.array([[1.0, 0.85], [0.0, 0.5]])  # label correlation about 0.86


def arrays(P, N0, D, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P + TEST, N0))
    W = 2.0 * rng.normal(size=(N0, D))
    if D == 2:
        W = W @ MIXING
    Y = X @ W / np.sqrt(N0) + np.sqrt(NOISE) * rng.normal(size=(P + TEST, D))
    return dl.RegressionData.linear(X[:P], Y[:P]), X[P:]


def distances(mean, cov, ref_mean, ref_cov):
    """(mean, cov) distances of the docstring; mean ``(P*, D)``, cov ``(P*, D, D)``."""
    w, v = np.linalg.eigh(ref_cov)
    inv_root = np.einsum("pij,pj,pkj->pik", v, 1 / np.sqrt(w), v)
    err = np.einsum("pij,pj->pi", inv_root, mean - ref_mean)
    white = inv_root @ cov @ inv_root - np.eye(cov.shape[-1])
    return float(np.linalg.norm(err, axis=1).max()), float(np.abs(np.linalg.eigvalsh(white)).max())


def d1_distance(mean, var, exact):
    return distances(mean[:, None], var[:, None, None], exact.pred_mean[:, None], exact.pred_var[:, None, None])


def part_a():
    rows = []
    for L in DEPTHS_A:
        for N in WIDTHS_A:
            rk_d, nn_d = [], []
            for seed in range(SEEDS):
                P = N // 2
                data, Xt = arrays(P, 2 * P, 1, seed)
                prior = dl.FiniteWidthPrior((N,) * L, 1)
                exact = dl.exact_posterior_d1(data, prior, noise_variance=NOISE, X_test=Xt)
                pred = renormalized_kernel(data, prior, noise_variance=NOISE).predict(Xt)
                rk_d.append(d1_distance(np.asarray(pred.mean)[:, 0], np.asarray(pred.covariance())[:, 0, 0], exact))
                nngp = dl.exact_posterior_d1(data, dl.NNGPPrior(1), noise_variance=NOISE, X_test=Xt)
                nn_d.append(d1_distance(nngp.pred_mean, nngp.pred_var, exact))
            rk_d, nn_d = np.array(rk_d), np.array(nn_d)
            rows.append((L, N, N // 2, *rk_d.mean(0), rk_d.max(1).mean() * N, nn_d.max(1).mean()))
            print("A", rows[-1], flush=True)
    return rows


def part_b():
    rows = []
    for L in DEPTHS_B:
        out = {"rk": [], "nngp": [], "limit": []}
        for seed in range(SEEDS):
            data, Xt = arrays(ROWS_B, 2 * ROWS_B, 1, seed)
            prior = dl.FiniteWidthPrior((WIDTH_B,) * L, 1)
            exact = dl.exact_posterior_d1(data, prior, noise_variance=NOISE, X_test=Xt)
            pred = renormalized_kernel(data, prior, noise_variance=NOISE).predict(Xt)
            out["rk"].append(d1_distance(np.asarray(pred.mean)[:, 0], np.asarray(pred.covariance())[:, 0, 0], exact))
            for name, other in (("nngp", dl.NNGPPrior(1)), ("limit", dl.ProportionalLimitPrior(L / WIDTH_B, 1))):
                ref = dl.exact_posterior_d1(data, other, noise_variance=NOISE, X_test=Xt)
                out[name].append(d1_distance(ref.pred_mean, ref.pred_var, exact))
        rows.append((L, L / WIDTH_B, *(float(np.max(out[k], axis=1).mean()) for k in ("rk", "nngp", "limit"))))
        print("B", rows[-1], flush=True)
    return rows


def part_c():
    rows = []
    for N in WIDTHS_C:
        acc = []
        for seed in range(SEEDS_C):
            P = N // 2
            data, Xt = arrays(P, 2 * P, 2, seed)
            prior = dl.FiniteWidthPrior((N, N), 2)
            start = time.perf_counter()
            post = dl.fit(data, prior, noise_variance=NOISE, key=seed, **NUTS)
            seconds = time.perf_counter() - start
            ref = post.predict(Xt)
            ref_mean, ref_cov = np.asarray(ref.mean), np.asarray(ref.covariance())
            draws = np.asarray(ref.draw_means)  # (S, P*, D)
            ess = float(post.summary()["ess_bulk"].min())
            w, v = np.linalg.eigh(ref_cov)
            inv_root = np.einsum("pij,pj,pkj->pik", v, 1 / np.sqrt(w), v)
            mc = float(np.linalg.norm(np.einsum("pij,spj->spi", inv_root, draws).std(0), axis=1).max() / np.sqrt(ess))
            rk = renormalized_kernel(data, prior, noise_variance=NOISE)
            pred = rk.predict(Xt)
            mean, cov = np.asarray(pred.mean), np.asarray(pred.covariance())
            nngp = dl.fit(data, dl.NNGPPrior(2), noise_variance=NOISE, progress_bar=False).predict(Xt)
            ref_corr = np.asarray(dl.correlation_matrix(ref_cov))[:, 0, 1]
            corr_err = float(np.abs(np.asarray(dl.correlation_matrix(cov))[:, 0, 1] - ref_corr).max())
            nn_corr = float(np.abs(ref_corr).max())  # the NNGP's correlation is 0
            q_post = np.asarray(post.draws("Q")).mean(0)
            acc.append((*distances(mean, cov, ref_mean, ref_cov),
                        max(distances(np.asarray(nngp.mean), np.asarray(nngp.covariance()), ref_mean, ref_cov)),
                        corr_err, nn_corr, mc, ess, seconds, rk.q[0, 1], q_post[0, 1]))
        acc = np.array(acc)
        rows.append((N, N // 2, *acc.mean(0)))
        print("C", rows[-1], flush=True)
    return rows


def main():
    machine = describe()
    started = time.perf_counter()
    a, b, c = part_a(), part_b(), part_c()
    total = time.perf_counter() - started
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# The renormalized kernel against the exact posterior",
        "",
        f"`python benchmarks/renormalized_kernel.py` at commit {commit}, {total / 60:.1f} minutes.",
        f"Machine: {machine}.",
        "An accuracy study: nothing here depends on the load. Noise variance 0.1, lambda* = 1, labels from a",
        f"linear teacher of scale 2; {SEEDS} data sets per row (A, B), {SEEDS_C} (C); {TEST} test inputs.",
        "Distances are maxima over the test inputs (benchmark's docstring): `mean` in the reference's predictive",
        "standard deviations, `cov` the relative error of the predictive covariance.",
        "",
        "## A. D = 1, exact reference, N grows at P/N = 1/2, P/N0 = 1/2",
        "",
        "| L | N | P | renormalized: mean | renormalized: cov | N x distance | NNGP: distance |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {L} | {N} | {P} | {m:.2e} | {v:.2e} | {nd:.3f} | {nn:.3f} |" for L, N, P, m, v, nd, nn in a]
    lines += [
        "",
        f"## B. D = 1, exact reference, L grows at N = {WIDTH_B}, P = {ROWS_B}",
        "",
        "Distance of each approximation's predictive from the finite-width posterior's.",
        "",
        "| L | L/N | renormalized kernel | NNGP | proportional limit, a = L/N |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {L} | {r:.3g} | {rk:.3f} | {nn:.3f} | {lim:.3f} |" for L, r, rk, nn, lim in b]
    lines += [
        "",
        "## C. D = 2, correlated labels, NUTS reference, N grows at P/N = 1/2, P/N0 = 1/2, L = 2",
        "",
        "`corr` is the largest error of the predictive output correlation; the NNGP's is the reference's own",
        "correlation (it predicts none). `MC` is the reference's Monte Carlo error of the mean, in the same",
        "units as `mean`: below it, the distance is not resolved.",
        "",
        "| N | P | renormalized: mean | cov | corr | NNGP: distance | corr | MC | min ESS | NUTS s |"
        " Q12: saddle | Q12: posterior mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {N} | {P} | {m:.3f} | {v:.3f} | {ce:.3f} | {nn:.3f} | {nc:.3f} | {mc:.3f} | {ess:.0f} | {s:.0f} |"
              f" {q:.3f} | {qp:.3f} |" for N, P, m, v, nn, ce, nc, mc, ess, s, q, qp in c]
    out = Path(__file__).with_name("results") / "renormalized_kernel_cpu.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
