"""The first fit and the test loop (issue 27): what a user waits for before the first result.

Side by side in one run, every row in fresh processes, one at a time:

* import time: ``import numpyro``; ``import deeplinear``; and ``from deeplinear import fit,
  RegressionData, ProportionalLimitPrior`` (what the quick start imports before its first fit);
* the quick start's first fit (``docs``: P = 20, N0 = 30, D = 2, limit prior with the ratio and
  sigma^2 inferred, 2 chains x (500 + 500), float32, LOO group included) with no compilation
  cache and with a warm one, and the number of XLA programs it built and their compile seconds
  (``jax.monitoring``: ``backend_compile_duration`` events);
* the same model and settings through NumPyro's ``MCMC(NUTS(deep_linear_model))`` (its defaults:
  ``init_to_uniform``, chains one after another on one CPU device), no cache;
* the run time of one leapfrog step: two repeat fits of the same structure (``log_likelihood=False``)
  that differ only in ``num_samples`` (500, 2500) share their warmup and first 500 draws (same key),
  so the extra time over the extra leapfrog steps is the cost of one gradient with NUTS's
  bookkeeping;
* the command-line demo (``deeplinear infer`` + ``simulate``, i.e. ``deeplinear`` with no
  arguments) with a cold and a warm cache;
* with ``--suite``: the test suite's wall time (``pytest``, two workers).

``--baseline REV`` (default: the commit before issue 27) also runs the library rows on that
revision, from a temporary ``git worktree`` in the same run, so the ratios are measured on the
same machine under the same load. Writes ``results/first_fit_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "c986e6e"  # the last commit before issue 27
FIT_REPEATS = 3  # fresh processes per first-fit row (cold, warm); the table gives the medians
TOLERATED_PER_STEP_CHANGE = 0.10  # issue 27: per-gradient run time unchanged within 10 %

QUICK_START = r"""
import numpyro.distributions as dist
from deeplinear.datasets import correlated_outputs
ds = correlated_outputs()
data = dl.RegressionData.linear(ds.X_train, ds.Y_train)
prior = dl.ProportionalLimitPrior(ratio=1.0, num_outputs=2)
"""

COUNTER = r"""
import jax, jax.monitoring
events = {"programs": 0, "compile_s": 0.0}
def _listener(name, secs, **kw):
    if name == "/jax/core/compile/backend_compile_duration":
        events["programs"] += 1
        events["compile_s"] += secs
jax.monitoring.register_event_duration_secs_listener(_listener)
"""

FIRST_FIT = r"""
import json, sys, time
t0 = time.perf_counter()
import deeplinear as dl
if sys.argv[1] != "off":
    dl.enable_compilation_cache(sys.argv[1])
fit = dl.fit
t_import = time.perf_counter() - t0
""" + COUNTER + QUICK_START + r"""
t = time.perf_counter()
post = dl.fit(data, prior, ratio=dist.LogNormal(0, 1), noise_variance=dist.HalfNormal(1.0),
              num_warmup=500, num_samples=500, num_chains=2, progress_bar=False)
t_fit = time.perf_counter() - t
assert post.draws("Q").shape == (1000, 2, 2)
print(json.dumps({"import": t_import, "fit": t_fit, **events}))
"""

NUMPYRO_FIT = r"""
import json, time
t0 = time.perf_counter()
import jax
import deeplinear as dl
from numpyro.infer import MCMC, NUTS
t_import = time.perf_counter() - t0
""" + COUNTER + QUICK_START + r"""
t = time.perf_counter()
mcmc = MCMC(NUTS(dl.deep_linear_model), num_warmup=500, num_samples=500, num_chains=2, progress_bar=False)
mcmc.run(jax.random.key(0), data, prior, ratio=dist.LogNormal(0, 1), noise_variance=dist.HalfNormal(1.0))
q = jax.block_until_ready(mcmc.get_samples()["Q"])
t_fit = time.perf_counter() - t
assert q.shape == (1000, 2, 2)
print(json.dumps({"import": t_import, "fit": t_fit, **events}))
"""

PER_STEP = r"""
import json, time, warnings
import numpy as np
import deeplinear as dl
warnings.simplefilter("ignore")
""" + QUICK_START + r"""
def run(num_samples):
    post = dl.fit(data, prior, ratio=dist.LogNormal(0, 1), noise_variance=dist.HalfNormal(1.0), num_warmup=500,
                  num_samples=num_samples, num_chains=2, progress_bar=False, log_likelihood=False)
    return int(np.asarray(post.datatree["sample_stats"]["n_steps"]).sum())
out = {}
for s in (500, 2500):
    run(s)  # compiles
    best = None
    for _ in range(3):
        t = time.perf_counter(); steps = run(s); dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    out[s] = (best, steps)
(t1, n1), (t2, n2) = out[500], out[2500]
print(json.dumps({"per_step_us": (t2 - t1) / (n2 - n1) * 1e6, "extra_steps": n2 - n1}))
"""

IMPORT = r"""
import json, sys, time
t = time.perf_counter()
exec(sys.argv[1])
print(json.dumps({"import": time.perf_counter() - t}))
"""


def _child(code: str, *args: str, tree: Path = ROOT, env: dict | None = None) -> dict:
    env = dict(os.environ if env is None else env)
    for name in ("DEEPLINEAR_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(tree)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tree)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _import_time(statement: str, tree: Path, repeats: int = 3) -> float:
    """Best of ``repeats`` fresh processes (the first also warms the file system's cache)."""
    _child(IMPORT, statement, tree=tree)
    return min(_child(IMPORT, statement, tree=tree)["import"] for _ in range(repeats))


def _demo(tree: Path, cache: str, workdir: Path) -> float:
    env = dict(os.environ, DEEPLINEAR_COMPILATION_CACHE=cache, PYTHONPATH=str(tree), MPLBACKEND="Agg")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "deeplinear.app"], capture_output=True, text=True, env=env,
                         cwd=workdir)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return time.perf_counter() - t


def _median_of(run, repeats: int = FIT_REPEATS) -> dict:
    """Each of ``repeats`` runs' numbers, with their medians: ``{"fit": median, ..., "runs": [...]}``
    (a single run of a compile-bound row moves by 15-20 % on this machine within a session)."""
    import statistics

    runs = [run() for _ in range(repeats)]
    return {**{k: statistics.median(r[k] for r in runs) for k in runs[0]}, "runs": runs}


def _library_rows(tree: Path, tmp: Path, name: str, demo: bool) -> dict:
    cache = str(tmp / f"{name}-cache")
    row = {
        "import deeplinear": _import_time("import deeplinear", tree),
        "import for the quick start": _import_time(
            "from deeplinear import fit, RegressionData, ProportionalLimitPrior", tree),
        "cold": _median_of(lambda: _child(FIRST_FIT, "off", tree=tree)),
    }
    _child(FIRST_FIT, cache, tree=tree)  # fills the cache
    row["warm"] = _median_of(lambda: _child(FIRST_FIT, cache, tree=tree))
    row["per_step"] = _child(PER_STEP, tree=tree)
    if demo:
        work = tmp / f"{name}-demo"
        work.mkdir()
        demo_cache = str(tmp / f"{name}-demo-cache")
        row["demo_cold"] = _demo(tree, demo_cache, work)
        row["demo_warm"] = _demo(tree, demo_cache, work)
    return row


def _suite() -> float:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-3000:])
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="revision to compare with ('' for none)")
    parser.add_argument("--suite", action="store_true", help="also time the test suite")
    parser.add_argument("--no-demo", action="store_true", help="skip the command-line demo rows")
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        numpyro_import = _import_time("import numpyro", ROOT)
        now = _library_rows(ROOT, tmp, "now", not args.no_demo)
        numpyro_fit = _child(NUMPYRO_FIT)
        before = None
        if args.baseline:
            tree = tmp / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                before = _library_rows(tree, tmp, "before", not args.no_demo)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        suite = _suite() if args.suite else None
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    def fit_cell(r):
        cell = f"{r['fit']:.2f} s ({r['programs']:g} programs, {r['compile_s']:.2f} s compiling)"
        if "runs" in r:
            cell += (" [runs: " + ", ".join(f"{x['fit']:.2f}" for x in r["runs"]) + " s; compiling "
                     + ", ".join(f"{x['compile_s']:.2f}" for x in r["runs"]) + " s]")
        return cell

    def col(r, key):
        return fit_cell(r[key]) if r is not None else "-"

    base = f"`{args.baseline}`" if before is not None else "-"
    rows = [
        "| | now | before (" + base + ") |",
        "|---|---|---|",
        f"| `import deeplinear` | {now['import deeplinear']:.2f} s | "
        + (f"{before['import deeplinear']:.2f} s |" if before else "- |"),
        f"| `from deeplinear import fit, RegressionData, ProportionalLimitPrior` | "
        f"{now['import for the quick start']:.2f} s | "
        + (f"{before['import for the quick start']:.2f} s |" if before else "- |"),
        f"| `import numpyro` | {numpyro_import:.2f} s | |",
        f"| first fit, new process, no cache | {col(now, 'cold')} | {col(before, 'cold')} |",
        f"| first fit, new process, warm cache | {col(now, 'warm')} | {col(before, 'warm')} |",
        f"| NumPyro `MCMC(NUTS(deep_linear_model))`, new process, no cache | {fit_cell(numpyro_fit)} | |",
        f"| one leapfrog step (sampling phase) | {now['per_step']['per_step_us']:.1f} us | "
        + (f"{before['per_step']['per_step_us']:.1f} us |" if before else "- |"),
    ]
    if not args.no_demo:
        rows.append(f"| demo (`deeplinear`), cold cache | {now['demo_cold']:.1f} s | "
                    + (f"{before['demo_cold']:.1f} s |" if before else "- |"))
        rows.append(f"| demo (`deeplinear`), warm cache | {now['demo_warm']:.1f} s | "
                    + (f"{before['demo_warm']:.1f} s |" if before else "- |"))
    if suite is not None:
        rows.append(f"| test suite (`pytest`, 2 workers) | {suite / 60:.1f} min | |")
    ratio = now["cold"]["fit"] / numpyro_fit["fit"]
    checks = [
        f"- first fit / NumPyro's: **{ratio:.2f}** (target <= 0.5)",
        f"- warm-cache first fit: **{now['warm']['fit']:.2f} s** (target <= 1.5 s)",
        f"- `import deeplinear`: **{now['import deeplinear']:.2f} s**, "
        f"{now['import deeplinear'] / numpyro_import:.2f}x `import numpyro` (target <= 0.8 s or < 1.2x); "
        f"with the quick start's names: {now['import for the quick start']:.2f} s",
    ]
    if before is not None:
        compile_ratio = now["cold"]["compile_s"] / before["cold"]["compile_s"]
        step_ratio = now["per_step"]["per_step_us"] / before["per_step"]["per_step_us"]
        checks += [
            f"- compile seconds of the first fit, now / before: **{compile_ratio:.2f}** (target <= 1/3)",
            f"- one leapfrog step, now / before: **{step_ratio:.2f}** (target within "
            f"{1 - TOLERATED_PER_STEP_CHANGE:.2f}..{1 + TOLERATED_PER_STEP_CHANGE:.2f}, or faster)",
        ]
    if not args.no_demo:
        checks.append(f"- demo: **{now['demo_cold']:.1f} s** cold, **{now['demo_warm']:.1f} s** warm "
                      "(targets <= 45 s and <= 15 s)")
    text = (
        "# The first fit (CPU)\n\n"
        f"Machine: {describe()}\n\n"
        f"Load (`uptime`) before the run: {load}\n\nafter the run: {load_after}\n\n"
        "Quick start: P = 20, N0 = 30, D = 2, limit prior (ratio ~ LogNormal(0, 1), sigma^2 ~ HalfNormal(1)), "
        "2 chains x (500 warmup + 500 draws), float32; `fit` includes the LOO group, the DataTree and its "
        "checks. Every row in fresh processes, one at a time; 'before' is the library at the baseline "
        "revision, run from a git worktree in the same run. The first-fit rows are medians of "
        f"{FIT_REPEATS} fresh processes (each run in brackets). Programs: XLA compilations "
        "(`backend_compile_duration` events; a warm cache loads them instead).\n\n"
        + "\n".join(rows) + "\n\n" + "\n".join(checks) + "\n"
    )
    out = Path(__file__).parent / "results" / "first_fit_cpu.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
