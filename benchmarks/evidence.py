"""Which estimator of the log evidence (issue 16, item 1): cost and accuracy on a few problems.

Three estimators of ``log p(Y | model)``, each run REPEATS times with different keys after one
warm-up run (compilation excluded):

* prior importance sampling (``log_evidence(method="prior")``) with PRIOR_DRAWS draws;
* adaptive tempered SMC (the pilot of ``method="ais"`` used as an estimator) with PARTICLES
  particles -- it states no error of its own;
* annealed importance sampling (``method="ais"``) with PARTICLES particles and the default
  schedule.

The reference is exact for D = 1 (``exact_posterior_d1``) and otherwise one AIS run with
REFERENCE_PARTICLES particles (its own standard error is printed). Reported per estimator: mean
wall time, RMSE against the reference, the mean stated standard error, and the work-normalized
variance ``RMSE^2 x time`` relative to AIS (lower is better: the time needed for a given
accuracy). Float64. Writes ``results/evidence_<platform>.md``.

    python benchmarks/evidence.py
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from _machine import describe  # noqa: E402

import deeplinear as dl  # noqa: E402
from deeplinear.evidence import _data_constant, _tempered_smc, log_evidence  # noqa: E402

REPEATS = 5
PARTICLES = 1024
PRIOR_DRAWS = 2**16
REFERENCE_PARTICLES = 4096
NOISE = 0.3


def data(P, D, N0, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P, N0))
    Y = X @ rng.normal(size=(N0, D)) / np.sqrt(N0) + np.sqrt(NOISE) * rng.normal(size=(P, D))
    return dl.RegressionData.linear(X, Y)


def problems():
    """Three easy-to-moderate problems and a hard one, where the posterior is far from the prior."""
    yield "D = 1, limit a = 1.5, P = 30, fixed", data(30, 1, 4, 0), dl.ModelSpec(
        dl.ProportionalLimitPrior(1.5, 1), noise_variance=NOISE)
    yield "D = 2, limit a = 1, P = 100, fixed", data(100, 2, 4, 1), dl.ModelSpec(
        dl.ProportionalLimitPrior(1.0, 2), noise_variance=NOISE)
    yield "D = 3, finite (5, 5), P = 200, lambda and sigma^2 inferred", data(200, 3, 4, 2), dl.ModelSpec(
        dl.FiniteWidthPrior((5, 5), 3), lambda_star=dist.LogNormal(0.0, 1.0), noise_variance=dist.HalfNormal(1.0))
    yield "D = 2, limit a ~ LogNormal(0, 1), P = 12, full noise inferred", data(12, 2, 4, 3), dl.ModelSpec(
        dl.ProportionalLimitPrior(1.0, 2), ratio=dist.LogNormal(0.0, 1.0), noise_model="full",
        noise_variance=dist.HalfNormal(1.0))


def run(estimator, data_, spec, key):
    t = time.perf_counter()
    if estimator == "prior IS":
        est = log_evidence(data_, spec, method="prior", num_particles=PRIOR_DRAWS, key=key)
        value, se, k = est.log_evidence, est.standard_error, est.effective_sample_size
    elif estimator == "tempered SMC":
        args = spec.model_arguments(data_)
        value = _tempered_smc(args, jax.random.key(key), PARTICLES, 8).log_evidence + _data_constant(spec, data_)
        se, k = float("nan"), float("nan")
    else:
        est = log_evidence(data_, spec, method="ais", num_particles=PARTICLES, key=key)
        value, se, k = est.log_evidence, est.standard_error, est.effective_sample_size
    return value, se, time.perf_counter() - t, k


def main():
    machine = describe()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    sections = []
    for name, data_, spec in problems():
        if spec.num_outputs == 1:
            ref = dl.exact_posterior_d1(data_, spec.prior, noise_variance=NOISE).log_evidence
            ref_note = "exact (quadrature)"
        else:
            r = log_evidence(data_, spec, method="ais", num_particles=REFERENCE_PARTICLES, key=999)
            ref, ref_note = r.log_evidence, f"AIS with {REFERENCE_PARTICLES} particles, SE {r.standard_error:.4f}"
        rows = {}
        for estimator in ("prior IS", "tempered SMC", "AIS"):
            run(estimator, data_, spec, 1000)  # warm-up: compile
            out = np.array([run(estimator, data_, spec, k) for k in range(REPEATS)])
            values, ses, secs, ks = out.T
            rmse = float(np.sqrt(np.mean((values - ref) ** 2)))
            rows[estimator] = (secs.mean(), rmse, np.nanmean(ses) if np.isfinite(ses).any() else float("nan"),
                               values.mean() - ref, np.nanmin(ks) if np.isfinite(ks).any() else float("nan"))
            print(name, estimator, rows[estimator], flush=True)
        base = rows["AIS"][1] ** 2 * rows["AIS"][0]
        lines = [f"### {name}", "", f"Reference: {ref:.4f}, {ref_note}.", "",
                 "| estimator | time | RMSE | mean stated SE | mean error | min ESS | RMSE² × time against AIS |",
                 "|---|---|---|---|---|---|---|"]
        for estimator, (sec, rmse, se, bias, k) in rows.items():
            lines.append(f"| {estimator} | {sec:.2f} s | {rmse:.4f} | {se:.4f} | {bias:+.4f} | {k:.0f} | "
                         f"{rmse**2 * sec / base:.3g} |")
        sections.append("\n".join(lines))
    header = [
        "# log_evidence: estimators compared (issue 16, item 1)", "",
        f"Machine: {machine}. Commit {commit}. Written by `python benchmarks/evidence.py`.", "",
        f"{REPEATS} runs per estimator with keys 0..{REPEATS - 1} after one warm-up run (compilation excluded); "
        f"prior IS with {PRIOR_DRAWS} draws, tempered SMC and AIS with {PARTICLES} particles, 8 leapfrog steps per "
        "move; float64. RMSE against the reference; work-normalized variance RMSE² × time relative to AIS (the "
        "time to reach a given accuracy; lower is better).", ""]
    out = Path(__file__).parent / "results" / f"evidence_{jax.devices()[0].platform}.md"
    out.write_text("\n".join(header) + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
