"""One command for a GPU loan (issue 30): the ``device`` tests, the throughput benchmark, a summary.

    python benchmarks/device.py            # on a machine with an accelerator (about 8 minutes)
    python benchmarks/device.py --smoke    # tiny sizes on CPU: the suite runs this (tests/test_device_script.py)

1. **Tests**: every test marked ``device`` (priors, likelihood, fit, predict, LOO, evidence, the
   renormalized kernel, SBC and the precision of matrix products; float32 and float64), one worker,
   on the default device (the accelerator). With ``--smoke`` the subset is only collected (the suite
   runs those tests itself) and checked to cover every area.
2. **Throughput**, each row measured on the accelerator and on this machine's CPU in the same run
   (``jax.default_device``; programs compiled by a first call, the second call timed):

   - ESS per second of the quick-start fit (limit prior, ``a ~ LogNormal(0, 1)``,
     ``sigma^2 ~ HalfNormal(1)``, ``P = 20``, ``D = 2``) against the number of vectorized chains:
     min bulk ESS over ``Q`` and the hyperparameters (:meth:`PosteriorFit.diagnostics`) over the
     second fit's seconds. The CPU runs up to ``cpu_chains`` chains (its throughput stops growing
     long before 4096, and 4096 CPU chains would take the whole loan); the ratio is the
     accelerator's ESS/s at the most chains over the CPU's best;
   - SBC: ``sbc`` simulations in one program on the accelerator; the CPU runs ``sbc_cpu`` in one
     program and its time is scaled to ``sbc`` (linear in the simulations: they are independent);
   - a fit with its LOO (subsampled) at ``rows`` rows set up in chunks, and predictions (mean and
     covariances) at ``test_rows`` inputs; the CPU at ``cpu_rows`` rows;
   - exact prior sampling at ``N = L = prior_width`` (``FiniteWidthPrior``, ``prior_draws`` draws of ``Q``).
3. Writes ``benchmarks/results/device_<device kind>.md`` (``--out`` to choose; ``--smoke`` writes to a
   temporary folder unless given one) and prints a short summary last.

``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set before JAX starts, so that the tests' subprocess and
this process share the device.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parent.parent
AREAS = ("priors", "likelihood", "inference", "predictive", "evidence", "renormalized", "sbc", "matmul_precision")
SIZES = {
    "full": dict(chains=(1, 8, 64, 512, 4096), cpu_chains=(1, 8, 64), warmup=200, samples=200, sbc=500, sbc_cpu=25,
                 sbc_warmup=200, sbc_samples=200, rows=10_000_000, cpu_rows=1_000_000, test_rows=1_000_000,
                 prior_width=100, prior_draws=1000),
    "smoke": dict(chains=(2,), cpu_chains=(2,), warmup=30, samples=30, sbc=2, sbc_cpu=2, sbc_warmup=4,
                  sbc_samples=20, rows=2000, cpu_rows=2000, test_rows=100, prior_width=4, prior_draws=8),
}
N0, D, CHUNK_ROWS = 32, 2, 2**16


def run_device_tests(smoke: bool) -> dict:
    """The ``device`` subset in a subprocess (one worker); with ``smoke``, only collected. Returns the
    counts, the seconds and the areas covered (test files)."""
    command = [sys.executable, "-m", "pytest", "-m", "device", "-n", "0", "-q", "tests"]
    if smoke:
        command.append("--collect-only")
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    out = proc.stdout + proc.stderr
    files = set(re.findall(r"tests/test_(\w+)\.py::", out))
    outcome = r"(\d+) (passed|failed|errors?|skipped|deselected)"
    counts = {word: int(n) for n, word in re.findall(outcome, out)}
    if smoke:
        counts = {"collected": len(re.findall(r"^tests/\S+::", out, re.M))}
    return {"returncode": proc.returncode, "seconds": seconds, "counts": counts, "areas": sorted(files),
            "missing": [a for a in AREAS if a not in files], "tail": "\n".join(out.strip().splitlines()[-15:])}


def _timed(fn):
    import jax

    started = time.perf_counter()
    value = jax.block_until_ready(fn())
    return value, time.perf_counter() - started


def ess_per_second(device, chains: int, size: dict) -> dict:
    """The quick-start fit with ``chains`` vectorized chains on ``device``: the second fit's seconds and
    its min bulk ESS per second."""
    import jax
    import numpyro.distributions as dist

    import deeplinear as dl
    from deeplinear.datasets import correlated_outputs

    ds = correlated_outputs()
    with jax.default_device(device):
        data = dl.RegressionData.linear(ds.X_train, ds.Y_train)
        prior = dl.ProportionalLimitPrior(ratio=1.0, num_outputs=2)

        def fit(key):
            return dl.fit(data, prior, ratio=dist.LogNormal(0.0, 1.0), noise_variance=dist.HalfNormal(1.0),
                          num_warmup=size["warmup"], num_samples=size["samples"], num_chains=chains,
                          chain_method="vectorized", log_likelihood=False, progress_bar=False, key=key)

        _, first = _timed(lambda: fit(0))
        result, seconds = _timed(lambda: fit(1))
    diagnostics = result.diagnostics()
    return {"chains": chains, "first": first, "seconds": seconds, "ess": diagnostics.min_ess_bulk,
            "ess_per_s": diagnostics.min_ess_bulk / seconds, "divergences": diagnostics.divergences}


def sbc_seconds(device, simulations: int, size: dict) -> dict:
    """``simulations`` SBC simulations of the finite prior (one program: ``batch_size = simulations``)."""
    import jax

    import deeplinear as dl
    from deeplinear.datasets import correlated_outputs

    ds = correlated_outputs()
    with jax.default_device(device):
        data = dl.RegressionData.linear(ds.X_train[:8], ds.Y_train[:8])
        prior = dl.FiniteWidthPrior(widths=(6, 6, 6), num_outputs=D)

        def run(key):
            return dl.simulation_based_calibration(
                data, prior, noise_variance=0.5, num_simulations=simulations, batch_size=simulations,
                num_warmup=size["sbc_warmup"], num_samples=size["sbc_samples"], thin=10, key=key, progress_bar=False)

        _, first = _timed(lambda: run(0))
        result, seconds = _timed(lambda: run(1))
    divergences = int(result.divergences.sum())
    return {"simulations": simulations, "first": first, "seconds": seconds, "divergences": divergences}


def large_fit(device, rows: int, size: dict) -> dict:
    """Fit (2 chains, ``warmup`` + ``samples``), subsampled LOO and predictions at ``test_rows`` inputs, at
    ``rows`` rows set up in chunks; seconds per stage and whether everything is finite."""
    import warnings

    import jax
    import numpy as np
    import numpyro.distributions as dist

    import deeplinear as dl

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((N0, D), dtype=np.float32) / np.float32(np.sqrt(N0))
    X = rng.standard_normal((rows, N0), dtype=np.float32)  # host memory: 136 bytes a row
    Y = X @ weights + np.float32(0.5) * rng.standard_normal((rows, D), dtype=np.float32)
    source = dl.ArrayChunks(X, Y, chunk_rows=CHUNK_ROWS)
    out: dict = {"rows": rows}
    with jax.default_device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, out["setup"] = _timed(lambda: dl.RegressionData.from_chunks(source))
        result, out["fit"] = _timed(lambda: dl.fit(data, dl.ProportionalLimitPrior(0.5, D),
                                                   noise_variance=dist.HalfNormal(1.0), num_warmup=size["warmup"],
                                                   num_samples=size["samples"], num_chains=2, progress_bar=False))
        loo, out["loo"] = _timed(lambda: dl.loo(result, rows=source))
        x_test = rng.normal(size=(size["test_rows"], N0)).astype(np.float32)
        (mean, cov), out["predict"] = _timed(lambda: _moments(result.predict(x_test)))
    out["finite"] = bool(np.isfinite(loo.elpd) and np.isfinite(np.asarray(mean)).all()
                         and np.isfinite(np.asarray(cov)).all())
    return out


def _moments(mixture):
    return mixture.mean, mixture.covariance()


def prior_sampling(device, size: dict) -> dict:
    """Exact draws of ``Q`` at ``N = L = prior_width`` (the Bartlett product of ``L`` factors)."""
    import jax

    import deeplinear as dl

    width, draws = size["prior_width"], size["prior_draws"]
    prior = dl.FiniteWidthPrior(widths=(width,) * width, num_outputs=D)
    with jax.default_device(device):
        _, first = _timed(lambda: prior.sample_q(jax.random.key(0), (draws,)))
        q, seconds = _timed(lambda: prior.sample_q(jax.random.key(1), (draws,)))
    return {"width": width, "draws": draws, "first": first, "seconds": seconds}


def throughput(size: dict) -> dict:
    """Every throughput row on the accelerator (``jax.devices()[0]``) and on the CPU. Where the
    accelerator is the CPU (``--smoke`` on a machine without one), a row of the same size is measured
    once and reported for both."""
    import jax

    accelerator, cpu = jax.devices()[0], jax.devices("cpu")[0]
    measured: dict = {}

    def measure(fn, device, *args):
        key = (fn.__name__, device.id, device.platform, args)
        if key not in measured:
            measured[key] = fn(device, *args, size) if args else fn(device, size)
        return measured[key]

    rows: dict = {"accelerator": str(accelerator.device_kind), "platform": accelerator.platform}
    rows["ess"] = {"accelerator": [measure(ess_per_second, accelerator, c) for c in size["chains"]],
                   "cpu": [measure(ess_per_second, cpu, c) for c in size["cpu_chains"]]}
    rows["sbc"] = {"accelerator": measure(sbc_seconds, accelerator, size["sbc"]),
                   "cpu": measure(sbc_seconds, cpu, size["sbc_cpu"])}
    rows["large"] = {"accelerator": measure(large_fit, accelerator, size["rows"]),
                     "cpu": measure(large_fit, cpu, size["cpu_rows"])}
    rows["prior"] = {"accelerator": measure(prior_sampling, accelerator), "cpu": measure(prior_sampling, cpu)}
    return rows


def ratios(rows: dict, size: dict) -> dict:
    """The acceptance ratios: ESS/s at the most chains over the CPU's best; SBC time per ``sbc``
    simulations (the CPU's scaled linearly) on the CPU over the accelerator."""
    best_cpu = max(r["ess_per_s"] for r in rows["ess"]["cpu"])
    cpu_sbc = rows["sbc"]["cpu"]["seconds"] * size["sbc"] / size["sbc_cpu"]
    return {"ess_per_s": rows["ess"]["accelerator"][-1]["ess_per_s"] / best_cpu,
            "sbc": cpu_sbc / rows["sbc"]["accelerator"]["seconds"]}


def report(machine: str, load: tuple, tests: dict, rows: dict, size: dict, smoke: bool) -> str:
    r = ratios(rows, size)
    lines = [f"# On the device: {rows['accelerator']} ({rows['platform']})" + (" -- smoke run" if smoke else ""), "",
             f"Machine: {machine}", "", f"Load (`uptime`) before the run: {load[0]}", "",
             f"after the run: {load[1]}", "",
             "## Tests marked `device`", "",
             f"{'collected' if smoke else 'ran'} in {tests['seconds']:.1f} s (one worker): {tests['counts']}; "
             f"return code {tests['returncode']}; areas: {', '.join(tests['areas'])}"
             + (f"; MISSING: {tests['missing']}" if tests["missing"] else ""), ""]
    if tests["returncode"] != 0:
        lines += ["```", tests["tail"], "```", ""]
    lines += ["## ESS per second against vectorized chains (quick-start fit)", "",
              f"{size['warmup']} warm-up + {size['samples']} draws per chain; the second fit timed.", "",
              "| device | chains | first fit (s) | fit (s) | min bulk ESS | ESS/s | divergences |",
              "|---|---|---|---|---|---|---|"]
    for where in ("accelerator", "cpu"):
        for e in rows["ess"][where]:
            lines.append(f"| {where} | {e['chains']} | {e['first']:.2f} | {e['seconds']:.2f} | {e['ess']:.0f} | "
                         f"{e['ess_per_s']:.1f} | {e['divergences']} |")
    s = rows["sbc"]
    lines += ["", "## SBC in one program (finite prior, widths (6, 6, 6), P = 8)", "",
              "| device | simulations | first (s) | timed (s) | per 500 (s) |", "|---|---|---|---|---|"]
    for where in ("accelerator", "cpu"):
        lines.append(f"| {where} | {s[where]['simulations']} | {s[where]['first']:.2f} | {s[where]['seconds']:.2f} | "
                     f"{s[where]['seconds'] * 500 / s[where]['simulations']:.2f} |")
    g = rows["large"]
    lines += ["", f"## Fit, LOO and predictions at scale (N0 = {N0}, D = {D}; {g['accelerator']['rows']:,} rows on "
              f"the accelerator, {g['cpu']['rows']:,} on the CPU; {size['test_rows']:,} test inputs)", "",
              "| device | rows | set-up (s) | fit (s) | LOO (s) | predict (s) | finite |",
              "|---|---|---|---|---|---|---|"]
    for where in ("accelerator", "cpu"):
        x = g[where]
        lines.append(f"| {where} | {x['rows']:,} | {x['setup']:.1f} | {x['fit']:.1f} | {x['loo']:.1f} | "
                     f"{x['predict']:.1f} | {x['finite']} |")
    p = rows["prior"]
    lines += ["", f"## Exact prior sampling at N = L = {p['cpu']['width']} ({p['cpu']['draws']} draws of Q)", "",
              "| device | first (s) | timed (s) |", "|---|---|---|"]
    for where in ("accelerator", "cpu"):
        lines.append(f"| {where} | {p[where]['first']:.2f} | {p[where]['seconds']:.3f} |")
    lines += ["", "## Summary", "", summary(tests, rows, r, smoke), ""]
    return "\n".join(lines)


def summary(tests: dict, rows: dict, r: dict, smoke: bool) -> str:
    tested = "collected" if smoke else "passed" if tests["returncode"] == 0 else "FAILED"
    large = rows["large"]["accelerator"]
    return (f"device tests {tested} ({tests['counts']}); ESS/s at {rows['ess']['accelerator'][-1]['chains']} chains "
            f"= {r['ess_per_s']:.1f}x the CPU's best (target 50x); SBC {r['sbc']:.1f}x faster (target 20x); "
            f"{large['rows']:,} rows fitted end to end: {'yes' if large['finite'] else 'NOT FINITE'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU; the tests only collected")
    parser.add_argument("--out", type=Path, help="the results file (default: benchmarks/results/device_<kind>.md)")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():  # a file the user names is never replaced
        parser.error(f"--out {args.out} already exists; name a new file")
    size = SIZES["smoke" if args.smoke else "full"]

    import importlib.util

    import jax

    from deeplinear._files import atomic_write

    # benchmarks/_machine.py by its path: putting benchmarks/ on sys.path would shadow packages for this
    # process and every process it spawns (benchmarks/distributed.py is not Dask's `distributed`)
    path = Path(__file__).with_name("_machine.py")
    spec = importlib.util.spec_from_file_location("deeplinear_benchmarks_machine", path)
    machine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(machine)
    describe = machine.describe
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    tests = run_device_tests(args.smoke)
    rows = throughput(size)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = report(describe(), (load_before, load_after), tests, rows, size, args.smoke)
    out = args.out
    if out is None:
        kind = re.sub(r"[^A-Za-z0-9]+", "_", str(jax.devices()[0].device_kind)).strip("_").lower()
        out = (Path(tempfile.mkdtemp(prefix="deeplinear-device-")) if args.smoke else ROOT / "benchmarks" / "results"
               ) / f"device_{kind}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    # written atomically; the default results file is this script's own record and a rerun replaces it
    atomic_write(out, lambda tmp: Path(tmp).write_text(text), overwrite=args.out is None)
    print(f"wrote {out}")
    print(summary(tests, rows, ratios(rows, size), args.smoke))
    return 0 if tests["returncode"] == 0 and not tests["missing"] and rows["large"]["accelerator"]["finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
