"""``deeplinear fit`` and ``deeplinear compare``: users' own CSV/NPY data from the command line.

Both read a training file (one row per observation; ``--inputs``/``--outputs`` choose
columns), standardize with training statistics (unless ``--no-standardize``), and run NUTS
with the chosen prior. ``fit`` prints an ArviZ summary and convergence diagnostics and writes
the posterior (netCDF, :func:`deeplinear.save_fit`) and, with ``--test``, a predictive table
(CSV, original units). ``compare`` fits the chosen prior and the NNGP and prints/saves the
comparison (LOO, held-out log density, predictive correlations) and a figure.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np

from deeplinear.app.cli_args import add_cache_flag, positive_int, seed

__all__ = ["add_parsers", "run_fit", "run_compare"]


def _add_common(p):
    p.add_argument("--data", required=True, type=Path, help="training file (.csv with header, or .npy)")
    p.add_argument("--inputs", required=True, help="comma-separated input columns (names, or indices)")
    p.add_argument("--outputs", required=True, help="comma-separated output columns (the labels)")
    p.add_argument("--test", type=Path, default=None, help="test file with the same columns (labels optional for fit)")
    p.add_argument("--model", type=Path, default=None,
                   help="a model specification in JSON (deeplinear.ModelSpec.to_json); replaces --prior, --depth, "
                   "--width, --ratio, --infer-ratio, --steps, --scheme, --noise, --noise-model, --intercept and "
                   "--lambda-star")
    p.add_argument("--prior", choices=("finite", "limit", "nngp"), default="limit", help="prior over Q (default limit)")
    p.add_argument("--depth", type=positive_int, help="finite: number of hidden layers L")
    p.add_argument("--width", type=positive_int, help="finite: hidden width N (>= number of outputs)")
    p.add_argument("--ratio", type=float, default=1.0, help="limit: depth-to-width ratio a (default 1)")
    p.add_argument("--infer-ratio", action="store_true", help="limit: infer a with a LogNormal(0, 1) prior")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="limit: time steps of the simulator (default 16 with the second-order scheme, 64 with euler)")
    p.add_argument("--scheme", choices=("second-order", "euler"), default="second-order",
                   help="limit: time discretization of the simulator (default second-order; weak error O((a/K)^2))")
    p.add_argument("--noise", type=float, default=None,
                   help="fixed noise variance (standardized units; with --noise-model diagonal or full, every "
                   "output's); default: inferred, HalfNormal(1) prior")
    p.add_argument("--noise-model", choices=("scalar", "diagonal", "full"), default="scalar",
                   help="output noise: one variance for all outputs (default), one per output, or a full "
                   "covariance (per-output variances and an LKJ(1) prior on the noise correlation)")
    p.add_argument("--intercept", action="store_true",
                   help="per-output intercepts with a Normal(0, 1) prior (standardized units); default: none "
                   "(the standardized labels are centred)")
    p.add_argument("--lambda-star", type=float, default=1.0, help="fixed prior scale lambda* (default 1)")
    p.add_argument("--chains", type=positive_int, default=2)
    p.add_argument("--samples", type=positive_int, default=1000, help="posterior draws per chain")
    p.add_argument("--warmup", type=positive_int, default=1000, help="warmup steps per chain")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-standardize", action="store_true", help="use the raw columns (default: z-score)")
    p.add_argument("--output", type=Path, default=Path("."), help="folder for the files written (default .)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing existing output files")
    add_cache_flag(p)


def add_parsers(sub):
    fit = sub.add_parser("fit", help="posterior of a deep linear network on your CSV/NPY data",
                         description=__doc__.split("\n\n")[1])
    _add_common(fit)
    fit.add_argument("--posterior", default="posterior.nc", help="posterior file name in --output")
    fit.add_argument("--predictions", default="predictions.csv", help="predictive table name in --output")
    cmp = sub.add_parser("compare", help="your prior against the NNGP on your data (table and figure)",
                         description="Fits the chosen prior and the NNGP with the same settings; compares PSIS-LOO, "
                         "held-out log predictive density (with --test) and predictive cross-output correlations.")
    _add_common(cmp)


class _Prepared:
    """The training (and test) columns of the files, standardized; rows are observations."""

    def __init__(self, args):
        from deeplinear.app.tables import Standardizer, column_indices, read_table, select_columns

        table = read_table(args.data)
        X = select_columns(table, args.inputs, "inputs", args.data)
        Y = select_columns(table, args.outputs, "outputs", args.data)
        both = set(column_indices(table, args.inputs, "inputs")) & set(column_indices(table, args.outputs, "outputs"))
        if both:
            cols = ", ".join(repr(table.columns[i]) for i in sorted(both))
            raise ValueError(f"--inputs and --outputs share the column(s) {cols}: a label cannot also be an input")
        self.output_names = [table.columns[i] for i in column_indices(table, args.outputs, "outputs")]
        self.X_test = self.Y_test = None
        if args.test is not None:
            test = read_table(args.test)
            self.X_test = select_columns(test, args.inputs, "inputs", args.test)
            if all(n in test.columns for n in self.output_names):
                self.Y_test = select_columns(test, args.outputs, "outputs", args.test)
        fit = Standardizer.identity if args.no_standardize else Standardizer.fit
        self.sx, self.sy = fit(X), fit(Y)
        self.X, self.Y = self.sx.transform(X), self.sy.transform(Y)
        if not args.no_standardize and not np.any(self.X):
            raise ValueError(f"every input column ({args.inputs}) is constant in {args.data}: nothing to learn from")
        if self.X_test is not None:
            self.X_test = self.sx.transform(self.X_test)
        if self.Y_test is not None:
            self.Y_test = self.sy.transform(self.Y_test)


def model_spec(args, num_outputs: int):
    """The :class:`~deeplinear.ModelSpec` of the command line: from ``--model FILE`` (JSON), or
    from the prior flags through :meth:`~deeplinear.ModelSpec.from_dict`."""
    from deeplinear.models import ModelSpec

    if args.model is not None:
        if not args.model.is_file():
            raise FileNotFoundError(f"--model: no such file: {args.model}")
        spec = ModelSpec.from_json(args.model.read_text())
        if spec.num_outputs != num_outputs:
            raise ValueError(
                f"--model {args.model} has num_outputs = {spec.num_outputs}, but --outputs names {num_outputs}"
            )
        return spec
    if args.prior == "finite":
        if args.depth is None or args.width is None:
            raise ValueError("--prior finite needs --depth and --width")
        prior = {"kind": "finite", "depth": args.depth, "width": args.width}
    elif args.prior == "limit":
        prior = {"kind": "limit", "ratio": args.ratio, "num_steps": args.steps, "scheme": args.scheme}
    else:
        prior = {"kind": "nngp"}
    prior["num_outputs"] = num_outputs
    noise = {"distribution": "HalfNormal", "scale": 1.0} if args.noise is None else args.noise
    if args.noise is not None and args.noise_model != "scalar":
        noise = [args.noise] * num_outputs
    infer_ratio = args.infer_ratio and args.prior == "limit"
    ratio = {"distribution": "LogNormal", "loc": 0.0, "scale": 1.0} if infer_ratio else None
    written: dict = {"prior": prior, "lambda_star": args.lambda_star, "noise_variance": noise, "ratio": ratio}
    if args.noise_model != "scalar":
        written["noise_model"] = args.noise_model
    if args.intercept:
        written["intercept"] = {"distribution": "Normal", "loc": 0.0, "scale": 1.0}
    return ModelSpec.from_dict(written)


def _fit_one(args, prep, spec):
    from deeplinear.data import RegressionData
    from deeplinear.inference import fit

    data = RegressionData.linear(prep.X, prep.Y)
    return fit(data, spec, num_warmup=args.warmup, num_samples=args.samples, num_chains=args.chains,
               key=args.seed, output_names=prep.output_names)


def _diagnostics(result):
    d = result.diagnostics()
    if not d.variables:
        return "exact posterior (NNGP with fixed hyperparameters): no MCMC"
    return f"divergences {d.divergences}; max R-hat {d.max_rhat:.3f}; min bulk ESS {d.min_ess_bulk:.0f}"


def run_fit(args) -> int:
    import pandas as pd

    from deeplinear.app.outputs import OutputFiles
    from deeplinear.io import save_fit

    prep = _Prepared(args)
    spec = model_spec(args, prep.Y.shape[1])
    names = [args.posterior] + ([args.predictions] if prep.X_test is not None else [])
    with OutputFiles(args.output, names, overwrite=args.overwrite) as outputs:
        print(f"data: {args.data} — {prep.X.shape[0]} rows, inputs {args.inputs}, outputs {args.outputs}"
              f"{'' if args.no_standardize else ' (standardized)'}; model {spec.describe()}")
        result = _fit_one(args, prep, spec)
        with pd.option_context("display.width", 160, "display.max_columns", 20), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # R-hat of constant draws (exact NNGP) is NaN
            print(result.summary().to_string())
        print(_diagnostics(result))
        result.datatree.attrs["deeplinear_standardization"] = json.dumps({
            "inputs": {"mean": prep.sx.mean.tolist(), "scale": prep.sx.scale.tolist()},
            "outputs": {"mean": prep.sy.mean.tolist(), "scale": prep.sy.scale.tolist()},
        })
        path = outputs.write(args.posterior, lambda tmp: save_fit(result, tmp, overwrite=True))
        print(f"posterior written to {path}")
        if prep.X_test is not None:
            pm = result.predict(prep.X_test)
            table = _prediction_table(pm, prep)
            path = outputs.write(args.predictions, lambda tmp: table.to_csv(tmp, index_label="row"))
            print(f"predictions (original units, for new labels) written to {path}")
            if prep.Y_test is not None:
                print(f"held-out log predictive density (standardized units): "
                      f"{float(pm.log_predictive_density(prep.Y_test)):.3f}")
    return 0


def _prediction_table(pm, prep):
    """Predictive means, standard deviations and cross-output correlations in original units,
    checked finite (a scale near the float64 limit is refused, not written as ``inf``)."""
    import pandas as pd

    mean_std = np.asarray(pm.mean, np.float64)  # (P*, D)
    cov_std = np.asarray(pm.covariance(include_noise=True), np.float64)  # (P*, D, D), standardized
    with np.errstate(over="ignore", invalid="ignore"):
        mean = prep.sy.inverse_mean(mean_std)
        sd = prep.sy.inverse_sd(cov_std)
    sd_std = np.sqrt(np.diagonal(cov_std, axis1=-2, axis2=-1))
    cols = {}
    names = prep.output_names
    for d, n in enumerate(names):
        cols[f"mean_{n}"] = mean[:, d]
        cols[f"sd_{n}"] = sd[:, d]
    for i in range(len(names)):
        for j in range(i):
            cols[f"corr_{names[j]}_{names[i]}"] = cov_std[:, i, j] / (sd_std[:, i] * sd_std[:, j])
    table = pd.DataFrame(cols)
    bad = [c for c in table.columns if not np.all(np.isfinite(table[c].to_numpy()))]
    if bad:
        raise ValueError(
            f"the predictions in original units are not finite in column {bad[0]!r} (the outputs' scale is "
            "beyond float64); rescale the output columns in the file (e.g. divide by a power of ten)"
        )
    return table


def run_compare(args) -> int:
    import pandas as pd

    from deeplinear.app.outputs import OutputFiles
    from deeplinear.comparison import compare_models
    from deeplinear.plotting import plot_predictive_correlations, plot_q_correlations
    from deeplinear.priors import NNGPPrior

    prep = _Prepared(args)
    D = prep.Y.shape[1]
    spec = model_spec(args, D)
    if isinstance(spec.prior, NNGPPrior):
        raise ValueError("compare sets a prior against the NNGP; choose --prior finite or limit")
    with_figure = prep.X_test is not None and D > 1
    names = ["comparison.csv"] + (["comparison.png"] if with_figure else [])
    with OutputFiles(args.output, names, overwrite=args.overwrite) as outputs:
        nngp = dataclasses.replace(spec, prior=NNGPPrior(D), ratio=None)  # the same hyperparameters and noise
        name = {"FiniteWidthPrior": "finite", "ProportionalLimitPrior": "limit"}[type(spec.prior).__name__]
        fits = {name: _fit_one(args, prep, spec), "nngp": _fit_one(args, prep, nngp)}
        comp = compare_models(fits, prep.X_test, prep.Y_test)
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(comp.table.to_string(float_format=lambda v: f"{v:.3f}"))
            print()
            print(comp.loo.to_string(float_format=lambda v: f"{v:.3f}"))
        for name, f in fits.items():
            print(f"{name}: {_diagnostics(f)}")
        path = outputs.write("comparison.csv", lambda tmp: comp.table.to_csv(tmp))
        print(f"table written to {path}")
        if with_figure:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            label_corr = np.corrcoef(prep.Y, rowvar=False)
            fig, (ax_q, ax_p) = plt.subplots(1, 2, figsize=(12, 4.6))
            plot_q_correlations(fits, {"labels' correlation": label_corr}, output_names=prep.output_names, ax=ax_q)
            ax_q.set_title("what each model learned: E[corr(Q) | Y]")
            plot_predictive_correlations(comp, label_corr=float(label_corr[0, 1]), ax=ax_p,
                                         output_names=prep.output_names)
            ax_p.set_title(f"predictive corr({prep.output_names[0]}, {prep.output_names[1]}) at test rows")
            fig.tight_layout()
            path = outputs.write("comparison.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
            plt.close("all")
            print(f"figure written to {path}")
    return 0
