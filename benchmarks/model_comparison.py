"""Issue 31: model comparison on Linnerud by PSIS-LOO, reloo, exact LOO and K-fold, with the time of
each, and the held-out density and evidence beside them.

The models are the demo's: the proportional limit with the ratio inferred and a full noise
covariance, the same with scalar noise, and the NNGP with full noise (500 warm-up steps and 500
draws on 2 chains, target acceptance 0.9), on the 15 standardized training rows. Each refit
repeats the original fit's chains, draws, warm-up and target acceptance (recorded by the fit).
By default the refits run on one thread per core of this process (two here), the first refit of
each training-set size before the others; "one at a time" runs them on a single thread (the
default before), and the pool rows on spawned worker processes. "First" calls compile the refits'
programs (one set per model and training-set size); "warm" calls repeat them in the same process
(or the same pool, whose workers compile and import once). Writes ``results/model_comparison_cpu.md``. Run:
``python benchmarks/model_comparison.py`` (a few minutes on 2 cores), with nothing else busy.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import numpyro.distributions as dist
from _machine import describe

import deeplinear as dl
from deeplinear.app.tables import Standardizer
from deeplinear.datasets import linnerud

SETTINGS = dict(num_warmup=500, num_samples=500, num_chains=2, target_accept_prob=0.9)
FOLDS = 5
WORKERS = 2  # the process pool of the executor rows: one worker per core
D = 3


def _models():
    ds = linnerud(num_test=5, seed=0)
    sx, sy = Standardizer.fit(ds.X_train), Standardizer.fit(ds.Y_train)
    data = dl.RegressionData.linear(sx.transform(ds.X_train), sy.transform(ds.Y_train))
    kw = dict(noise_variance=dist.HalfNormal(1.0), key=0, progress_bar=False, **SETTINGS)
    limit = dl.ProportionalLimitPrior(1.0, D, 32)
    fits = {
        "limit a~LogNormal, full noise": dl.fit(data, limit, ratio=dist.LogNormal(0.0, 1.0), noise_model="full", **kw),
        "limit a~LogNormal, scalar noise": dl.fit(data, limit, ratio=dist.LogNormal(0.0, 1.0), **kw),
        "NNGP, full noise": dl.fit(data, dl.NNGPPrior(D), noise_model="full", **kw),
    }
    return fits, sx.transform(ds.X_test), sy.transform(ds.Y_test)


def _timed(fits, X_test, Y_test, **kw):
    started = time.perf_counter()
    comparison = dl.compare_models(fits, X_test, Y_test, **kw)
    return comparison, time.perf_counter() - started


def main() -> None:
    warnings.simplefilter("ignore", dl.ConvergenceWarning)
    warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
    fits, X_test, Y_test = _models()
    runs = {}
    runs["psis"] = _timed(fits, X_test, Y_test)
    runs["reloo (first)"] = _timed(fits, X_test, Y_test, loo="reloo")
    runs["exact (first)"] = _timed(fits, X_test, Y_test, loo="exact")
    runs["exact (warm)"] = _timed(fits, X_test, Y_test, loo="exact")
    with concurrent.futures.ThreadPoolExecutor(1) as one:
        runs["exact, one at a time (warm)"] = _timed(fits, X_test, Y_test, loo="exact", executor=one)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        runs[f"exact, {WORKERS}-process pool (first)"] = _timed(fits, X_test, Y_test, loo="exact", executor=pool)
        runs[f"exact, {WORKERS}-process pool (warm)"] = _timed(fits, X_test, Y_test, loo="exact", executor=pool)
    runs["kfold (first)"] = _timed(fits, X_test, Y_test, loo="kfold", folds=FOLDS)
    runs["kfold (warm)"] = _timed(fits, X_test, Y_test, loo="kfold", folds=FOLDS)
    evidence, evidence_seconds = _timed(fits, X_test, Y_test, evidence=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    lines = ["# Model comparison on Linnerud (issue 31)", "", f"Machine: {describe()}", "",
             f"Load (`uptime`) at the end: {load}", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| method | seconds | refits | " + " | ".join(fits) + " |",
             "|---|---|---|" + "---|" * len(fits)]
    for method, (comparison, seconds) in runs.items():
        table = comparison.table
        column = "elpd_kfold" if "elpd_kfold" in table.columns else "elpd_loo"
        refits = sum(len(cv.refitted) if hasattr(cv, "refitted") else 0 for cv in comparison.cross_validation.values())
        cells = []
        for m in fits:
            k = table.loc[m, "max_pareto_k"]
            cells.append(f"{table.loc[m, column]:.2f} ± {table.loc[m, column + '_se']:.2f}"
                         + (f" (max k {k:.2f})" if np.isfinite(k) else ""))
        lines.append(f"| {method} | {seconds:.1f} | {refits} | " + " | ".join(cells) + " |")
    table = evidence.table
    lines.append("| held-out lpd (5 rows) | - | - | " + " | ".join(
        f"{table.loc[m, 'heldout_lpd']:.2f} ± {table.loc[m, 'heldout_lpd_se']:.2f}" for m in fits) + " |")
    lines.append(f"| log evidence | {evidence_seconds:.1f} | - | " + " | ".join(
        f"{table.loc[m, 'log_evidence']:.2f} ± {table.loc[m, 'log_evidence_se']:.2f}" for m in fits) + " |")
    refitted = {m: runs["reloo (first)"][0].table.loc[m, "refitted"] for m in fits}
    lines += ["", "Rows refitted by reloo (Pareto k > 0.7): "
              + "; ".join(f"{m}: {r or 'none'}" for m, r in refitted.items()) + ".", ""]
    out = Path(__file__).parent / "results" / "model_comparison_cpu.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
