"""The ``deeplinear`` command line.

``deeplinear fit`` / ``deeplinear compare`` work on users' CSV/NPY files
(:mod:`deeplinear.app.fit`). ``deeplinear`` with no sub-command runs the whole
demonstration on built-in data:
``infer`` (posteriors of the proportional limit and of the NNGP on the Linnerud data,
3 correlated outputs: output correlations learned by ``Q`` against the labels', LOO,
held-out log density and predictive correlations; summary tables and figures), then
``simulate`` (prior laws against theory). Errors on bad arguments are one line on stderr and
exit code 2; :func:`main` returns the exit code (it never calls ``sys.exit``).

Counts: ``--samples`` (posterior draws per chain), ``--warmup``, ``--chains``; ``--prior-samples``
(prior draws per configuration of ``simulate``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
from pathlib import Path

from deeplinear.app.cli_args import add_cache_flag, positive_int, seed

__all__ = ["main"]


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="deeplinear",
        description="Bayesian deep linear networks at any depth-to-width ratio. "
        "With no command, runs the demonstration: `infer`, then `simulate`.",
    )
    sub = parser.add_subparsers(dest="command")
    sim = sub.add_parser(
        "simulate",
        help="prior laws against theory (tables and figures)",
        description="D = 1: log Vbar of finite products (L = aN) against the limit N(-a/2, a/2); "
        "D = 2: E[Q_12^2] against 1/N, finite products vs the limit simulator and closed forms.",
    )
    inf = sub.add_parser(
        "infer",
        help="posterior inference on the built-in Linnerud data, compared with the NNGP",
        description="Linnerud data (3 exercise inputs, 3 correlated physiological outputs; 15 train, "
        "5 held out): NUTS posteriors of the proportional limit (a = 0.5, 2, and a inferred), of the "
        "Wishart baseline (one hidden layer) and of the NNGP, with a full output-noise covariance (and "
        "the inferred-ratio model once more with scalar noise); posterior corr(Q) against the labels' "
        "correlations, LOO, held-out log predictive density, predictive cross-output correlations; figures.",
    )
    from deeplinear.app.fit import add_parsers

    add_parsers(sub)
    for p in (parser, sim, inf):
        p.add_argument("--seed", type=seed, default=0, help="PRNG seed (same seed, same numbers)")
        add_cache_flag(p)
        p.add_argument(
            "--output",
            type=Path,
            default=None,
            help="folder for figures (default: a new deeplinear-output/<timestamp> folder)",
        )
        p.add_argument("--overwrite", action="store_true", help="allow replacing existing figure files")
        p.add_argument("--no-plots", action="store_true", help="print the tables only")
    for p in (parser, sim):
        p.add_argument("--prior-samples", type=positive_int, default=20_000, help="prior draws per configuration")
    for p in (parser, inf):
        p.add_argument("--samples", type=positive_int, default=500, help="posterior draws per chain")
        p.add_argument("--warmup", type=positive_int, default=500, help="warmup steps per chain")
        p.add_argument("--chains", type=positive_int, default=2, help="MCMC chains")
        p.add_argument("--loo", choices=("reloo", "psis", "exact", "kfold"), default="reloo",
                       help="cross-validation: PSIS-LOO with refits where Pareto k > 0.7 (default), PSIS only, "
                       "one refit per man, or 5-fold")
    return parser


def _default_output_folder() -> Path:
    """A new ``deeplinear-output/<timestamp>`` folder name."""
    return Path("deeplinear-output") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _outputs(args, names):
    """The figure files of a demo step, claimed in ``--output`` (:class:`~deeplinear.app.outputs.OutputFiles`)."""
    from deeplinear.app.outputs import OutputFiles

    out = args.output if args.output is not None else _default_output_folder()
    return OutputFiles(out, names, overwrite=args.overwrite, hint="choose another folder")


def _simulate(args):
    with contextlib.ExitStack() as stack:
        outputs = None if args.no_plots else stack.enter_context(_outputs(args, _SIM_FIGURES))
        return _simulate_into(args, outputs)


def _simulate_into(args, outputs):
    import jax

    from deeplinear.app.figures import plot_lognormal_convergence, plot_offdiagonal_variance
    from deeplinear.app.prior_laws import lognormal_convergence, offdiagonal_variance

    figures = _SIM_FIGURES
    key = jax.random.key(args.seed)
    k1, k2 = jax.random.split(key)

    print("D = 1: log Vbar of a depth-L, width-N network (L = aN) vs the proportional limit N(-a/2, a/2)")
    print(f"{'a':>5} {'N':>4} {'L':>4} | {'MC mean':>8} {'exact':>8} {'limit':>8} | "
          f"{'MC var':>7} {'exact':>7} {'limit':>7} | {'KS dist':>7}")
    rows1 = lognormal_convergence(k1, num_samples=args.prior_samples)
    for r in rows1:
        print(f"{r.ratio:5.2f} {r.width:4d} {r.depth:4d} | {r.mc_mean:8.4f} {r.exact_mean:8.4f} "
              f"{r.limit_mean:8.4f} | {r.mc_var:7.4f} {r.exact_var:7.4f} {r.limit_var:7.4f} | "
              f"{r.ks_distance_to_limit:7.4f}")
    print()
    rows2 = offdiagonal_variance(k2, num_samples=args.prior_samples)
    print(f"D = 2, a = 0.5: off-diagonal variance E[Q_12^2] vs width (L = N/2); limit {rows2[0].limit:.4f}")
    print(f"{'N':>6} {'L':>4} | {'MC':>8} {'± SE':>7} | {'exact':>8}")
    for r in rows2:
        name = f"{r.width:6d}" if r.width else " limit"
        exact = f"{r.exact:8.4f}" if r.width else f"{r.limit:8.4f}"
        print(f"{name} {r.depth:4d} | {r.mc:8.4f} {r.mc_se:7.4f} | {exact}")
    print("(E[Q_12^2] is heavy-tailed: MC estimates fluctuate well beyond their SE at large a.)")

    if outputs is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        axes = plot_lognormal_convergence(rows1)
        axes[0].figure.tight_layout()
        ax = plot_offdiagonal_variance(rows2)
        ax.figure.tight_layout()
        for fig, name in ((axes[0].figure, figures[0]), (ax.figure, figures[1])):
            outputs.write(name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=120))
        plt.close("all")
        print(f"\nFigures written to {outputs.folder}/")
    return 0


_INFER_FIGURES = ["predictive_correlations.png", "posterior_correlation_and_ratio.png", "loo_pointwise.png"]
_SIM_FIGURES = ["lognormal_convergence.png", "offdiagonal_variance.png"]


def _infer(args):
    with contextlib.ExitStack() as stack:
        outputs = None if args.no_plots else stack.enter_context(_outputs(args, _INFER_FIGURES))
        return _infer_into(args, outputs)


def _infer_into(args, outputs):
    import pandas as pd

    from deeplinear.app.demo import (
        correlation_table,
        heldout_verdicts,
        inference_demo,
        loo_verdicts,
        noise_effect,
        refitted_summary,
    )

    print("Posterior inference on the Linnerud data (theory.md §4)")
    demo = inference_demo(num_warmup=args.warmup, num_samples=args.samples, num_chains=args.chains, key=args.seed,
                          loo=args.loo)
    inferred = demo.inferred
    print(f"data: {demo.dataset.description}; inputs and labels standardized with the training rows")
    print("noise: a full output-noise covariance (per-output variances, LKJ(3, 1) correlation), as the")
    print("least-squares residuals correlate; one fit repeats the inferred-ratio model with scalar noise")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print("\nOutput correlations: the training labels', the least-squares estimate of Q (Bhat Bhat^T,")
        print("Bhat^T = X^+ Y: what Q models, without the residuals' correlation) and the posterior mean of corr(Q)")
        print(correlation_table(demo).to_string(float_format=lambda v: f"{v:+.2f}"))
        print()
        print("What correlated noise changes: the least-squares residuals' correlation, the posterior noise")
        print("correlation, and corr(Q) of the inferred-ratio model with full and with scalar noise")
        print(noise_effect(demo).to_string(float_format=lambda v: f"{v:+.2f}"))
        print()
        cv_text = {"reloo": "PSIS-LOO over training inputs, each man with Pareto k > 0.7 refitted without him",
                   "psis": "PSIS-LOO over training inputs", "exact": "exact LOO, one refit without each man",
                   "kfold": "5-fold cross-validation by refitting"}[args.loo]
        print(f"Model comparison (elpd: {cv_text}; heldout_lpd: log density of the")
        print("held-out labels in the data's units; pred_corr: predictive cross-output correlation at the")
        print("test inputs; Q corr: posterior mean of |corr(Q)|, averaged over output pairs). The Wishart")
        print("baseline is one hidden layer of width D + 1 (the intrinsic-coregionalization model)")
        print(demo.comparison.table.to_string(float_format=lambda v: f"{v:.3f}"))
        print()
        print("Held-out log density:")
        for line in heldout_verdicts(demo):
            print(f"  {line}.")
        print()
        print("Cross-validation on the training men:")
        for line in loo_verdicts(demo):
            print(f"  {line}.")
        if args.loo in ("reloo", "exact"):
            print("Refitted without themselves:")
            for line in refitted_summary(demo):
                print(f"  {line}.")
        print()
        print(f"arviz.compare ({cv_text}):")
        cols = [c for c in ("rank", "elpd", "elpd_diff", "dse", "weight") if c in demo.comparison.loo.columns]
        print(demo.comparison.loo[cols].to_string(float_format=lambda v: f"{v:.2f}"))
        shaky = demo.comparison.table.index[demo.comparison.table["max_pareto_k"] > 0.7].tolist()
        if shaky:  # only with --loo psis: reloo and exact refit every such man
            print(f"PSIS-LOO is unreliable where a Pareto k exceeds 0.7 ({', '.join(shaky)}): with 15 men one "
                  "influential man moves elpd_loo by nats; --loo reloo refits them.")
        print()
        print("Posterior summary, limit with a inferred:")
        print(demo.fits[inferred].summary().to_string())
    for name, f in demo.fits.items():
        if f.num_divergences:
            print(f"warning: {name}: {f.num_divergences} divergent transitions")
    if outputs is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from deeplinear.app.figures import plot_demo

        for fig, name in zip(plot_demo(demo), _INFER_FIGURES):
            outputs.write(name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=120))
        plt.close("all")
        print(f"\nFigures written to {outputs.folder}/")
    return 0


def _compilation_cache(args) -> None:
    """Switch on JAX's persistent compilation cache (:func:`deeplinear.enable_compilation_cache`:
    the folder ``DEEPLINEAR_COMPILATION_CACHE`` names, else the user's cache folder) unless
    ``--no-compilation-cache`` or ``DEEPLINEAR_COMPILATION_CACHE=off``."""
    from deeplinear.cache import enable_compilation_cache

    if not getattr(args, "no_compilation_cache", False):
        enable_compilation_cache()


def main(argv=None) -> int:
    """Entry point of the ``deeplinear`` program; returns the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad argument (2, message already printed)
        return int(stop.code or 0)
    try:
        _compilation_cache(args)
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "infer":
            return _infer(args)
        if args.command in ("fit", "compare"):
            from deeplinear.app.fit import run_compare, run_fit

            return run_fit(args) if args.command == "fit" else run_compare(args)
        if args.output is None and not args.no_plots:  # one folder for the whole demonstration
            args.output = _default_output_folder()
        _infer(args)
        print("\n" + "=" * 78 + "\n")
        return _simulate(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"deeplinear: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # files being written were removed on the way out; nothing else changed
        print("deeplinear: interrupted; no partial files were left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
