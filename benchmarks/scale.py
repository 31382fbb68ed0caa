"""End to end at P = 10^6 and 10^7 rows on one machine: streamed set-up, fit, LOO, predict.

N0 = 32, D = 3, limit prior (a = 0.5), sigma^2 inferred (HalfNormal(1)), 2 chains x (500 + 500),
float32. The data are ``.npy`` files on disk read through NumPy memmaps (written first, by a
separate process). Each size runs in a fresh process, stage by stage, recording wall time and the
process's peak RSS so far (``ru_maxrss``; pages of the memmapped files count while mapped, so the
data's own size is reported next to it):

1. set-up: ``RegressionData.from_chunks(ArrayChunks(memmaps, chunk_rows=65536))``;
   for comparison, at 10^6 only, the in-memory ``RegressionData.linear`` on the loaded arrays
   (a separate process; at 10^7 it needs the float64 rows, 2.8 GB, plus the SVD's workspace);
2. fit (the pointwise LOO terms, 10^9 and 10^10 numbers, are beyond the budget and not stored);
3. LOO, subsampled (2,000 inputs; the point approximation streams over all rows again);
4. per-input predictive mean and covariances at 10^6 test inputs.

Writes ``results/scale_cpu.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import describe

SIZES = (1_000_000, 10_000_000)
N0, D, NUM_TEST, CHUNK = 32, 3, 1_000_000, 2**16
IN_MEMORY_MAX = 1_000_000

WRITE = r"""
import sys, numpy as np
P, N0, D, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
W = rng.normal(size=(N0, D)) / np.sqrt(N0)
W[:, 1] = 0.8 * W[:, 0] + 0.6 * W[:, 1]  # correlated outputs
X = np.lib.format.open_memmap(f"{folder}/X.npy", mode="w+", dtype=np.float32, shape=(P, N0))
Y = np.lib.format.open_memmap(f"{folder}/Y.npy", mode="w+", dtype=np.float32, shape=(P, D))
for a in range(0, P, 1_000_000):
    b = min(a + 1_000_000, P)
    x = rng.normal(size=(b - a, N0))
    X[a:b], Y[a:b] = x, x @ W + 0.5 * rng.normal(size=(b - a, D))
X.flush(); Y.flush()
"""

CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np, numpyro.distributions as dist
import deeplinear as dl
folder, mode, chunk, num_test = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = {}
def stage(name, fn):
    t = time.perf_counter()
    value = fn()
    out[name] = {"wall": time.perf_counter() - t, "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    return value
X = np.load(f"{folder}/X.npy", mmap_mode="r")
Y = np.load(f"{folder}/Y.npy", mmap_mode="r")
if mode == "in-memory":
    data = stage("setup", lambda: dl.RegressionData.linear(np.asarray(X), np.asarray(Y)))
else:
    source = dl.ArrayChunks(X, Y, chunk_rows=chunk)
    data = stage("setup", lambda: dl.RegressionData.from_chunks(source))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stage("fit", lambda: dl.fit(data, dl.ProportionalLimitPrior(0.5, Y.shape[1]),
                    noise_variance=dist.HalfNormal(1.0), num_warmup=500, num_samples=500, num_chains=2,
                    progress_bar=False))
    out["divergences"] = res.num_divergences
    out["max_rhat"] = res.diagnostics().max_rhat
    lo = stage("loo", lambda: dl.loo(res, rows=source))
    out["elpd"], out["elpd_se"], out["subsampling_se"] = lo.elpd, lo.se, lo.subsampling_se
    Xt = np.random.default_rng(1).normal(size=(num_test, X.shape[1]))
    def predict():
        pm = res.predict(Xt)
        return np.asarray(pm.mean), np.asarray(pm.covariance())
    mean, cov = stage("predict", predict)
    out["predict_finite"] = bool(np.isfinite(mean).all() and np.isfinite(cov).all())
print(json.dumps(out))
"""


def run(folder: str, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, folder, mode, str(CHUNK), str(NUM_TEST)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = []
    for P in SIZES:
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run([sys.executable, "-c", WRITE, str(P), str(N0), str(D), folder], check=True)
            size_gb = sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**30
            streamed = run(folder, "streamed")
            memory = run(folder, "in-memory") if P <= IN_MEMORY_MAX else None
        print(P, streamed, memory, flush=True)
        if "error" in streamed:
            lines.append(f"| {P:.0e} | {size_gb:.2f} GB | failed: {streamed['error']} | | | | |")
            continue
        cells = [f"{streamed[s]['wall']:.1f} s / {streamed[s]['rss_gb']:.2f} GB" for s in ("setup", "fit", "loo",
                                                                                              "predict")]
        if memory is None:
            mem = "not run"
        elif "error" in memory:
            mem = memory["error"]
        else:
            mem = (f"{memory['setup']['wall']:.1f} s / {memory['setup']['rss_gb']:.2f} GB "
                   f"({memory['setup']['wall'] / streamed['setup']['wall']:.1f}x the streamed time)")
        lines.append(f"| {P:.0e} | {size_gb:.2f} GB | " + " | ".join(cells) + f" | {mem} |")
        lines.append(f"|  | | divergences {streamed['divergences']}, max R-hat {streamed['max_rhat']:.3f} | | "
                     f"elpd {streamed['elpd']:.0f} ± {streamed['elpd_se']:.0f} (subsampling SE "
                     f"{streamed['subsampling_se']:.1f}) | finite: {streamed['predict_finite']} | |")
    text = (
        "# End to end at 10^6 and 10^7 rows (CPU)\n\n"
        f"Machine: {describe()}\n\nLoad before the run (`uptime`): {load}\n\n"
        f"N0 = {N0}, D = {D}, limit prior a = 0.5, sigma^2 ~ HalfNormal(1), 2 chains x (500 + 500), float32; "
        f"data as float32 `.npy` memmaps, chunks of {CHUNK} rows; predictions at {NUM_TEST:,} test inputs.\n"
        "Each cell: wall time / peak RSS of the process so far (memmapped pages of the data count while "
        "mapped; the data's size is in the second column).\n\n"
        "| P | data on disk | streamed set-up | fit | LOO (subsampled) | predict 10^6 | in-memory set-up |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )
    out = Path(__file__).parent / "results" / "scale_cpu.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
