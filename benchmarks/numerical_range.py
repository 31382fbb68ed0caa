"""Numerical range: finite answers and the float32-vs-float64 error over the range users reach.

For every configuration (prior, a, D, sigma^2, label scale, lambda*), S prior draws of the
latents are made once in float64 and evaluated in both precisions:

* the model's log density and its gradient in the latents (what NUTS evaluates),
* the predictive mean and per-input covariance at two test inputs (PredictiveMixture),
* the pointwise leave-one-out terms.

Errors are max|x32 - x64| / max|x64| per quantity. lambda* is 1 or scale^2 (the prior scale
matched to the labels, which is where a posterior puts lambda* Q). A PrecisionWarning is
expected exactly where float32 cannot resolve sigma^2 against the labels.

    python benchmarks/numerical_range.py

Writes benchmarks/results/numerical_range_cpu.md (every configuration) and the summary in
docs/numerical_range.md.
"""

import itertools
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import describe
from numpyro.infer.util import log_density

import deeplinear as dl
from deeplinear import PrecisionWarning
from deeplinear._precision import warn_if_unresolvable_in_float32
from deeplinear.likelihood import loo_log_likelihood_draws

jax.config.update("jax_enable_x64", True)

S, N0, P, P_TEST = 20, 4, 20, 2
RATIOS = (0.5, 2.0, 8.0)
OUTPUTS = (1, 3, 8)
NOISES = (1e-6, 1.0, 1e3)
SCALES = (1e-3, 1.0, 1e3)
QUANTITIES = ("logp", "grad", "mean", "cov", "loo")
INACCURATE = 1e-3  # relative float32 error of mean/cov/loo that a PrecisionWarning must announce


def priors():
    for a, D in itertools.product(RATIOS, OUTPUTS):
        yield f"limit a={a:g}", dl.ProportionalLimitPrior(a, D, num_steps=64)
    for (L, N), D in itertools.product([(16, 8), (64, 8)], (1, 8)):
        yield f"finite L={L} N={N}", dl.FiniteWidthPrior.from_depth_width(L, N, D)


def evaluate(prior, scale, noise, lam):
    rng = np.random.default_rng(0)
    D = prior.num_outputs
    X, Xt = rng.normal(size=(N0, P)).T, rng.normal(size=(N0, P_TEST)).T  # rows are observations
    Y = scale * rng.normal(size=(D, P)).T
    latents64 = prior.sample_latents(jax.random.key(1), (S,), dtype=jnp.float64)
    out, warned = {}, False
    for dtype in (jnp.float64, jnp.float32):
        data = dl.RegressionData.linear(X, Y, dtype=dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warn_if_unresolvable_in_float32(data, noise, lam)
        warned |= any(issubclass(w.category, PrecisionWarning) for w in caught)
        lat = {k: v.astype(dtype) for k, v in latents64.items()}

        def logp(latent, data=data):
            kw = dict(noise_variance=noise, lambda_star=lam)
            return log_density(dl.deep_linear_model, (data, prior), kw, latent)[0]

        vals = jax.vmap(logp)(lat)
        grads = jax.vmap(jax.grad(logp))(lat)
        vbar = jax.vmap(prior.vbar_from_latents)(lat)
        q = vbar @ jnp.swapaxes(vbar, -1, -2)
        lams, noises = jnp.full(S, lam, dtype), jnp.full(S, noise, dtype)
        pm = dl.PredictiveMixture(q, lams, noises, data, data.prediction_kernel(Xt))
        loo = loo_log_likelihood_draws(q, lams, noises, data)
        grad = np.concatenate([np.asarray(g, float).reshape(S, -1) for g in grads.values()], 1)
        out[dtype] = [np.asarray(vals, float), grad, np.asarray(pm.mean, float),
                      np.asarray(pm.covariance(), float), np.asarray(loo, float)]
    row = {"warned": warned}
    for name, a, b in zip(QUANTITIES, out[jnp.float64], out[jnp.float32]):
        row[f"{name}_finite64"] = bool(np.all(np.isfinite(a)))
        row[f"{name}_finite32"] = bool(np.all(np.isfinite(b)))
        ok = row[f"{name}_finite64"] and row[f"{name}_finite32"]
        row[name] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300)) if ok else np.nan
    return row


def fmt(x):
    return "NaN" if np.isnan(x) else f"{x:.1e}"


def main():
    rows = []
    for (label, prior), noise, scale, lam_kind in itertools.product(
        list(priors()), NOISES, SCALES, ("1", "scale^2")
    ):
        lam = 1.0 if lam_kind == "1" else scale**2
        r = evaluate(prior, scale, noise, lam)
        r.update(prior=label, D=prior.num_outputs, noise=noise, scale=scale, lam=lam_kind)
        rows.append(r)
        print(label, prior.num_outputs, noise, scale, lam_kind, {q: fmt(r[q]) for q in QUANTITIES}, r["warned"],
              flush=True)

    all64 = all(r[f"{q}_finite64"] for r in rows for q in QUANTITIES)
    nan32 = [r for r in rows if not all(r[f"{q}_finite32"] for q in QUANTITIES)]
    unwarned_nan32 = [r for r in nan32 if not r["warned"]]
    inaccurate = [r for r in rows if not all(r[q] <= INACCURATE for q in ("mean", "cov", "loo"))]  # NaN counts
    unwarned_inaccurate = [r for r in inaccurate if not r["warned"]]
    head = [
        f"Machine: {describe()}",
        "",
        f"{len(rows)} configurations; S = {S} prior draws each; N0 = {N0}, P = {P}, {P_TEST} test inputs.",
        f"Every float64 quantity finite: {'yes' if all64 else '**NO**'}. "
        f"Configurations with a non-finite float32 quantity: {len(nan32)}, of which without a "
        f"PrecisionWarning: {len(unwarned_nan32)}. "
        f"Configurations with a float32 prediction or LOO error above {INACCURATE:g}: {len(inaccurate)}, "
        f"of which without a PrecisionWarning: {len(unwarned_inaccurate)}"
        + (f" ({', '.join(sorted({r['prior'] + ' D=' + str(r['D']) for r in unwarned_inaccurate}))})."  # noqa: E501
         if unwarned_inaccurate else "."),
        "",
    ]
    detail = head + [
        "| prior | D | sigma^2 | label scale | lambda* | " + " | ".join(QUANTITIES) + " | warned |",
        "|---|---|---|---|---|" + "---|" * len(QUANTITIES) + "---|",
    ]
    for r in rows:
        detail.append(
            f"| {r['prior']} | {r['D']} | {r['noise']:g} | {r['scale']:g} | {r['lam']} | "
            + " | ".join(fmt(r[q]) for q in QUANTITIES) + f" | {'yes' if r['warned'] else ''} |"
        )
    results = Path(__file__).parent / "results" / "numerical_range_cpu.md"
    results.write_text("# Numerical range: float32 vs float64, every configuration\n\n" + "\n".join(detail) + "\n")

    # summary: worst case over priors, a, D for each (sigma^2, scale, lambda*) cell
    summary = head + [
        "Worst relative float32 error (max over priors, a and D) per noise level and label scale;",
        "`NaN` = some float32 value was not finite (every such cell warned, see the last column).",
        "",
        "| sigma^2 | label scale | lambda* | " + " | ".join(QUANTITIES) + " | NaN in float32 | warned |",
        "|---|---|---|" + "---|" * len(QUANTITIES) + "---|---|",
    ]
    for noise, scale, lam in itertools.product(NOISES, SCALES, ("1", "scale^2")):
        cell = [r for r in rows if r["noise"] == noise and r["scale"] == scale and r["lam"] == lam]
        worst = [max(r[q] for r in cell) if all(not np.isnan(r[q]) for r in cell) else np.nan for q in QUANTITIES]
        n_nan = sum(not all(r[f"{q}_finite32"] for q in QUANTITIES) for r in cell)
        n_warn = sum(r["warned"] for r in cell)
        summary.append(
            f"| {noise:g} | {scale:g} | {lam} | " + " | ".join(fmt(w) for w in worst)
            + f" | {n_nan}/{len(cell)} | {n_warn}/{len(cell)} |"
        )
    docs = Path(__file__).parents[1] / "docs" / "numerical_range.md"
    text = docs.read_text()
    start, end = "<!-- numerical-range-table:start -->", "<!-- numerical-range-table:end -->"
    before, rest = text.split(start)
    _, after = rest.split(end)
    docs.write_text(before + start + "\n" + "\n".join(summary) + "\n" + end + after)
    print(f"wrote {results} and {docs}")


if __name__ == "__main__":
    main()
