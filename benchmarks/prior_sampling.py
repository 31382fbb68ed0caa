"""Exact samples of f(X) per second: Bartlett route vs brute-force networks, same run.

Both produce exact draws of the outputs f(X) of a depth-L, width-N deep linear network
with D outputs at P inputs. The Bartlett route (FiniteWidthPrior.sample_outputs) costs
O(L D^3 + D N0 P) per draw; the brute-force network (sample_network_outputs) draws all
L N^2 weights, O(L N^2 P). Both are jit-compiled and warmed up before timing; the best
of REPEATS timed runs is kept.

    python benchmarks/prior_sampling.py [--quick]

Writes benchmarks/results/prior_sampling_<platform>.md.
"""

import argparse
from pathlib import Path

import jax
import numpy as np
from _machine import best_time, describe

import deeplinear as dl

N0, P, D = 10, 10, 2
REPEATS = 3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sample counts (smoke run)")
    args = parser.parse_args()
    X = np.random.default_rng(0).normal(size=(P, N0))  # rows are inputs
    sizes = [(100, 100), (200, 200)]
    n_net = 50 if args.quick else 200
    n_bar = 20_000 if args.quick else 200_000
    rows = []
    for n, depth in sizes:
        prior = dl.FiniteWidthPrior.from_depth_width(depth, n, D)
        key = jax.random.key(0)
        t_net = best_time(lambda key=key, prior=prior: dl.sample_network_outputs(
            key, X, prior.widths, D, n_net, batch_size=64), repeats=REPEATS)
        t_bar = best_time(lambda key=key, prior=prior: prior.sample_outputs(key, X, n_bar), repeats=REPEATS)
        r_net, r_bar = n_net / t_net, n_bar / t_bar
        rows.append((n, depth, r_net, r_bar, r_bar / r_net))
        print(f"N = L = {n}: network {r_net:,.0f}/s, Bartlett {r_bar:,.0f}/s, ratio {r_bar / r_net:,.0f}x")
    platform = jax.devices()[0].platform
    out = Path(__file__).parent / "results" / f"prior_sampling_{platform}.md"
    lines = [
        "# Prior sampling: Bartlett route vs brute-force networks",
        "",
        f"Machine: {describe()}",
        f"Inputs: N0 = {N0}, P = {P}, D = {D}; float32; best of {REPEATS} runs after warm-up;",
        f"{n_net} networks and {n_bar} Bartlett draws per timing. Command: `python benchmarks/prior_sampling.py"
        f"{' --quick' if args.quick else ''}`.",
        "",
        "| N = L | brute-force networks (draws/s) | Bartlett route (draws/s) | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {a:,.0f} | {b:,.0f} | {r:,.0f}x |" for n, _, a, b, r in rows]
    out.write_text("\n".join(lines) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
