"""Per-input predictions at many test inputs: streamed (this version) against the stored-draws path.

Each configuration runs in a fresh process (peak RSS per configuration): P = 2,000 training
inputs, N0 = 32, D = 3, S = 1,000 posterior draws of Q, float32; P* test inputs from 8,000 to
1,000,000. "streamed": ``PredictiveMixture.mean`` and ``covariance()`` (from the draws' summaries
that do not depend on the test inputs, then batched over test inputs: ``O(S R^2 D^2 + P* R^2 D^2)``;
no ``P* x P*`` matrix). "stored draws": the same moments from ``draw_means``/``draw_covariances``
(``(S, P*, D, D)`` held at once, which is what every prediction did before, on top of the dense
``P* x P*`` test and residual Gram matrices it also built), run only where it fits in memory.
Writes ``results/prediction_memory_cpu.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _machine import describe

SIZES = (8_000, 20_000, 100_000, 1_000_000)
STORED_MAX = 20_000  # (S, P*, D, D) float32 at 20,000 is 0.7 GB; at 100,000 it would be 3.6 GB
NUM_DRAWS, P, N0, D = 1_000, 2_000, 32, 3

CHILD = r"""
import json, resource, sys, time
import numpy as np, jax, jax.numpy as jnp
import deeplinear as dl
num_test, mode = int(sys.argv[1]), sys.argv[2]
S, P, N0, D = (int(a) for a in sys.argv[3:7])
rng = np.random.default_rng(0)
data = dl.RegressionData.linear(rng.normal(size=(P, N0)), rng.normal(size=(P, D)))
A = rng.normal(size=(S, D, D)).astype(np.float32)
q = A @ np.swapaxes(A, -1, -2) / D + 0.1 * np.eye(D, dtype=np.float32)
Xt = rng.normal(size=(num_test, N0))
t0 = time.perf_counter()
pm = dl.PredictiveMixture(q, 1.0, 0.3, data, data.prediction_kernel(Xt))
if mode == "streamed":
    mean, cov = pm.mean, pm.covariance()
else:
    m = pm.draw_means
    dev = m - m.mean(0)
    mean, cov = m.mean(0), pm.draw_covariances.mean(0) + jnp.einsum("sjd,sje->jde", dev, dev) / S
jax.block_until_ready(cov)
wall = time.perf_counter() - t0
ok = bool(np.all(np.isfinite(np.asarray(cov))))
print(json.dumps({"wall": wall, "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "finite": ok}))
"""


def run(num_test: int, mode: str) -> dict:
    sizes = [str(v) for v in (NUM_DRAWS, P, N0, D)]
    out = subprocess.run([sys.executable, "-c", CHILD, str(num_test), mode, *sizes], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for num_test in SIZES:
        streamed = run(num_test, "streamed")
        stored = run(num_test, "stored") if num_test <= STORED_MAX else None

        def fmt(r):
            if r is None:
                return "not run (does not fit)", ""
            if "error" in r:
                return r["error"], ""
            return f"{r['wall']:.1f} s", f"{r['rss_gb']:.2f} GB"

        (sw, sm), (dw, dm) = fmt(streamed), fmt(stored)
        both = stored is not None and "wall" in stored and "wall" in streamed
        ratio = f"{stored['wall'] / streamed['wall']:.1f}x" if both else ""
        rows.append(f"| {num_test:,} | {sw} | {sm} | {dw} | {dm} | {ratio} |")
        print(rows[-1], flush=True)
    text = (
        "# Per-input predictions at many test inputs (CPU)\n\n"
        f"Machine: {describe()}\n\nLoad before the run (`uptime`): {load}\n\n"
        f"P = {P} training inputs, N0 = {N0}, D = {D}, S = {NUM_DRAWS} draws of Q, float32; each cell a fresh "
        "process (wall time of `PredictiveMixture(...)` + mean + per-input covariance, including compilation; "
        "peak RSS of the process, including the ~0.4 GB of an imported JAX).\n\n"
        "| P* | streamed: time | streamed: peak RSS | stored draws: time | stored draws: peak RSS | speed-up |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Before this change every prediction also built the dense P* x P* test and residual Gram matrices "
        "(issue 13 measured 100-121 s and 9.9 GB at 20,000 test inputs and a MemoryError at 100,000); the "
        "'stored draws' column keeps only the (S, P*, D, D) part of that cost.\n"
    )
    out = Path(__file__).parent / "results" / "prediction_memory_cpu.md"
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
