"""Issues 12 and 28's hostile cases: what happened before (as reported in the issues) and what happens now.

Runs every case against the installed deeplinear (issue 28's, on the newer surfaces, are in
``hostile_trust3.py``) and writes ``results/hostile_inputs.md``. "Now" is
measured here: the exception type and the start of its message, the warning raised, or the
finite result. Run: ``python benchmarks/hostile_inputs.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import numpyro.distributions as dist
from _machine import describe
from hostile_trust3 import CASES as TRUST3_CASES

import deeplinear as dl
from deeplinear.app.cli import main

RNG = np.random.default_rng(12)
X = RNG.normal(size=(8, 3))
Y = RNG.normal(size=(8, 2))
DATA = dl.RegressionData.linear(X, Y)
F = RNG.normal(size=(8, 3))
GRAM = dl.RegressionData.from_gram(F @ F.T, Y)
FT = RNG.normal(size=(2, 3))
NNGP = dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, num_samples=2, num_chains=1)
CSV = "a,b,c,y1,y2\n" + "".join(",".join(f"{v:.5f}" for v in r) + "\n" for r in RNG.normal(size=(12, 5)))
FAST = ["--prior", "nngp", "--noise", "0.5", "--samples", "2", "--chains", "1"]


def cli(argv, files=None, prepare=None, inspect=None):
    """Run ``deeplinear argv`` in a fresh folder; report the exit code, stderr's last line and the files left."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, text in (files or {"train.csv": CSV, "test.csv": CSV}).items():
            (tmp / name).write_text(text)
        if prepare:
            prepare(tmp)
        before = {str(p.relative_to(tmp)): p.read_bytes() for p in tmp.rglob("*") if p.is_file()}
        cwd = os.getcwd()
        os.chdir(tmp)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        finally:
            os.chdir(cwd)
        after = {str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()}
        changed = [n for n, b in before.items() if (tmp / n).read_bytes() != b]
        lines = err.getvalue().strip().splitlines()
        new = sorted(after - set(before))
        extra = f"; {inspect(tmp)}" if inspect else ""
        return (f"exit {code}: {lines[-1][:150] if lines else '(no message)'}; new files {new or 'none'}"
                f"{'; CHANGED ' + str(changed) if changed else ''}{extra}")


def save_partial_case():
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mine.nc.partial").write_bytes(b"user data")
        dl.save_fit(NNGP, Path(tmp) / "mine.nc")
        kept = (Path(tmp) / "mine.nc.partial").read_bytes() == b"user data"
        return f"saved; mine.nc.partial byte-identical: {kept}; files {sorted(p.name for p in Path(tmp).iterdir())}"


def failed_save_case():
    import xarray as xr

    real = xr.DataTree.to_netcdf

    def disk_full(self, target, **kw):
        raise OSError(28, "No space left on device")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fit.nc"
        path.write_bytes(b"precious")
        xr.DataTree.to_netcdf = disk_full
        try:
            dl.save_fit(NNGP, path, overwrite=True)
        except OSError as err:
            msg = f"OSError: {err}"
        finally:
            xr.DataTree.to_netcdf = real
        files = sorted(p.name for p in Path(tmp).iterdir())
        return f"{msg}; original byte-identical: {path.read_bytes() == b'precious'}; files {files}"


def two_runs_case():
    from deeplinear._files import claim

    return cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1", *FAST, "--output", "out"],
               prepare=lambda t: ((t / "out").mkdir(), claim(t / "out" / "posterior.nc")))


def huge_column_case(column):
    A = RNG.normal(size=(15, 5))
    A[:, column] *= 1e307
    text = "a,b,c,y1,y2\n" + "".join(",".join(repr(float(v)) for v in r) + "\n" for r in A)
    return cli(["fit", "--data", "train.csv", "--test", "test.csv", "--inputs", "a,b,c", "--outputs", "y1,y2",
                *FAST], files={"train.csv": text, "test.csv": text}, inspect=_predictions)


def _predictions(folder):
    import pandas as pd

    if not (folder / "predictions.csv").exists():
        return "no predictions.csv"
    pred = pd.read_csv(folder / "predictions.csv")
    sd = pred[[c for c in pred.columns if c.startswith("sd_")]].to_numpy()
    finite = bool(np.all(np.isfinite(pred.to_numpy())))
    return f"predictions all finite: {finite}, sd from {sd.min():.3g} to {sd.max():.3g}"


def damaged_file(kind):
    with tempfile.TemporaryDirectory() as tmp:
        good = dl.save_fit(NNGP, Path(tmp) / "good.nc").read_bytes()
        bad = Path(tmp) / "bad.nc"
        bad.write_bytes({"empty": b"", "truncated": good[: len(good) // 2]}[kind])
        dl.load_fit(bad)


def edited_file(edit):
    import xarray as xr

    with tempfile.TemporaryDirectory() as tmp:
        good = dl.save_fit(NNGP, Path(tmp) / "good.nc")
        tree = xr.open_datatree(good, engine="h5netcdf").load()
        edit(tree)
        tree.to_netcdf(Path(tmp) / "bad.nc", engine="h5netcdf")
        dl.load_fit(Path(tmp) / "bad.nc")


def float64_without_x64():
    code = (
        "import jax, numpy as np, tempfile, deeplinear as dl\n"
        "rng = np.random.default_rng(0); X = rng.normal(size=(8, 3)); Y = rng.normal(size=(8, 2))\n"
        "d = tempfile.mkdtemp()\n"
        "with jax.enable_x64(True):\n"
        "    f = dl.fit(dl.RegressionData.linear(X, Y, dtype='float64'), dl.NNGPPrior(2), noise_variance=0.5,"
        " num_samples=2, num_chains=1)\n"
        "    p = dl.save_fit(f, d + '/f.nc')\n"
        "try:\n    dl.load_fit(p); print('loaded')\nexcept ValueError as e:\n    print('ValueError:', str(e)[:150])\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()


def collinear_interpolation():
    base = RNG.normal(size=(6, 1))
    Xc = np.hstack([base + 1e-7 * RNG.normal(size=(6, 1)) for _ in range(6)])
    fit = dl.fit(dl.RegressionData.linear(Xc, Y[:6]), dl.NNGPPrior(2), noise_variance=0.0, num_samples=2,
                 num_chains=1)
    return f"min LOO term {fit.datatree['log_likelihood']['Y'].values.min():.3g}"


def nngp_inferred_rhat():
    spec = dl.ModelSpec(dl.NNGPPrior(2), noise_variance=dist.HalfNormal(1.0))
    fit = dl.fit(DATA, spec, num_warmup=30, num_samples=30, num_chains=2, chain_method="sequential",
                 progress_bar=False)
    d = fit.diagnostics()
    return f"max_rhat {d.max_rhat:.3f} over {list(d.variables)}"


def limit_fit(ratio):
    fit = dl.fit(DATA, dl.ProportionalLimitPrior(ratio, 2, num_steps=8), noise_variance=0.5, num_warmup=30,
                 num_samples=30, num_chains=1, progress_bar=False)
    return f"finite Q draws: {bool(np.all(np.isfinite(fit.draws('Q'))))}"


def tail(tree_edit_name, value):
    def edit(tree):
        tree.attrs[tree_edit_name] = value

    return edit


def drop(tree):
    del tree["constant_data"]


CASES = [
    # (item, case, before (the report), callable)
    ("1", "`fit --posterior same.out --predictions same.out`", "posterior overwritten by the predictions, exit 0",
     lambda: cli(["fit", "--data", "train.csv", "--test", "test.csv", "--inputs", "a,b", "--outputs", "y1", *FAST,
                  "--posterior", "same.out", "--predictions", "same.out"])),
    ("1", "`save_fit(fit, path, overwrite=\"no\")` on an existing file", "file replaced",
     lambda: dl.save_fit(NNGP, "/nonexistent/never.nc", overwrite="no")),
    ("1", "`save_fit(fit, \"mine.nc\")` with the user's `mine.nc.partial`", "user's file overwritten and renamed away",
     save_partial_case),
    ("1", "a save that fails while writing", "`.partial` file left behind", failed_save_case),
    ("1", "two runs into one `--output`", "loser fails after sampling (HDF5 lock)", two_runs_case),
    ("1", "`fit(..., log_likelihood=\"no\")`", "taken as true",
     lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, log_likelihood="no")),
    ("2", "output column near 1e307 (command line)", "exit 0, empty means, sd = inf", lambda: huge_column_case(3)),
    ("2", "input column near 1e307 (command line)", "column silently zeroed", lambda: huge_column_case(0)),
    ("2", "`--prior nngp --noise 1e-50`", "exit 0, zero sd, NaN log density",
     lambda: cli(["fit", "--data", "train.csv", "--test", "test.csv", "--inputs", "a,b", "--outputs", "y1",
                  "--prior", "nngp", "--noise", "1e-50"])),
    ("2", "float32 `predict(X_test * 1e20)`", "finite mean, NaN covariance", lambda: NNGP.predict(X[:2] * 1e20)),
    ("2", "`test_gram = -I`", "accepted, positive variances",
     lambda: GRAM.prediction_kernel(cross_gram=F @ FT.T, test_gram=-np.eye(2))),
    ("2", "`cross_gram` that cannot go with `test_gram`", "accepted (negative residual clipped)",
     lambda: GRAM.prediction_kernel(cross_gram=RNG.normal(size=(8, 2)), test_gram=np.eye(2))),
    ("2", "float32 `RegressionData.linear(X * 1e30, Y)`", "infinite eigenvalues; fit fails 25 s later",
     lambda: dl.RegressionData.linear(X * 1e30, Y)),
    ("2", "`ProportionalLimitPrior(50.0, 2)` fit", "fails inside NumPyro (invalid q parameter)",
     lambda: limit_fit(50.0)),
    ("2", "`ProportionalLimitPrior(1e4, 2).sample_q`", "exactly 0, no warning",
     lambda: f"max |Q| {float(np.abs(np.asarray(dl.ProportionalLimitPrior(1e4, 2).sample_q(0, 3))).max())}"),
    ("2", "exact NNGP, sigma^2 = 0, nearly collinear inputs", "LOO terms -1.4e19, no warning", collinear_interpolation),
    ("2", "vector noise to `KroneckerNormal`", "taken as a batch",
     lambda: dl.KroneckerNormal(np.eye(2), 1.0, np.array([0.5, 0.5]), DATA)),
    ("3", "`fit(key=2**32 + 3)`", "same draws as seed 3",
     lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, key=2**32 + 3)),
    ("3", "`fit(key=2**64)`", "bare OverflowError from JAX",
     lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, key=2**64)),
    ("3", "`--seed 2**64`", "traceback, exit 1",
     lambda: cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1", "--seed", str(2**64)])),
    ("4", "NNGP with inferred noise: `diagnostics()`", "max_rhat = nan, no ConvergenceWarning", nngp_inferred_rhat),
    ("5", "square `Y` / `X`", "accepted in either orientation",
     lambda: f"read as rows: {dl.RegressionData.linear(np.eye(4), np.eye(4)[:, :2])!r} (documented)"),
    ("5", "`--outputs` naming an input column", "accepted",
     lambda: cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1,a", *FAST])),
    ("5", "duplicate CSV headers", "first column silently taken",
     lambda: cli(["fit", "--data", "train.csv", "--inputs", "a", "--outputs", "y", *FAST],
                 files={"train.csv": "a,a,y\n1,2,3\n4,5,6\n7,8,9\n"})),
    ("5", "complex `.npy`", "imaginary part dropped (NumPy warning only)",
     lambda: cli(["fit", "--data", "t.npy", "--inputs", "0", "--outputs", "1", *FAST], files={},
                 prepare=lambda t: np.save(t / "t.npy", np.ones((5, 2)) + 1j))),
    ("5", "`output_names=[\"a\", \"a\"]`", "fit works, summary() fails later",
     lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names=["a", "a"])),
    ("5", "`output_names=[(\"a\",), (\"b\",)]`", "xarray error from deep inside",
     lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names=[("a",), ("b",)])),
    ("5", "`output_names=\"ab\"`", "two names 'a', 'b'",
     lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names="ab")),
    ("5", "`output_names=[None, \"b\"]`", "None comes back as nan after save/load",
     lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names=[None, "b"])),
    ("5", "`rtol=2.0`", "misleading \"X is zero\"", lambda: dl.RegressionData.linear(X, Y, rtol=2.0)),
    ("5", "one-row CSV", "\"X is zero\"",
     lambda: cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y", *FAST],
                 files={"train.csv": "a,b,y\n1,2,3\n"})),
    ("5", "`num_steps=10**9`", "accepted", lambda: dl.ProportionalLimitPrior(1.0, 2, num_steps=10**9)),
    ("5", "`widths={3, 4}` / an iterator", "accepted", lambda: dl.FiniteWidthPrior({3, 4}, 1)),
    ("5", "masked array", "mask ignored",
     lambda: dl.RegressionData.linear(np.ma.masked_array(X, mask=np.abs(X) > 1.5), Y)),
    ("5", "`compare_models` on different data of the same shape", "accepted (shape checked only)",
     lambda: dl.compare_models({"a": NNGP, "b": dl.fit(dl.RegressionData.linear(X, Y + 1), dl.NNGPPrior(2),
                                                       noise_variance=0.5, num_samples=2, num_chains=1)})),
    ("6", "`ratio=dist.Normal(0, 1)`", "caught at NUTS start-up, after compilation",
     lambda: dl.fit(DATA, dl.ProportionalLimitPrior(1.0, 2), ratio=dist.Normal(0.0, 1.0))),
    ("6", "`lambda_star=dist.Uniform(-1, 1)`", "caught at NUTS start-up",
     lambda: dl.fit(DATA, dl.NNGPPrior(2), lambda_star=dist.Uniform(-1.0, 1.0))),
    ("7", "empty file", "raw h5py OSError", lambda: damaged_file("empty")),
    ("7", "truncated file", "raw h5py OSError", lambda: damaged_file("truncated")),
    ("7", "file without its data group", "KeyError", lambda: edited_file(drop)),
    ("7", "bad model attribute", "JSONDecodeError", lambda: edited_file(tail("deeplinear_model", "{not json"))),
    ("7", "`int8` dtype attribute", "all-zero predictions", lambda: edited_file(tail("deeplinear_dtype", "int8"))),
    ("7", "D = 3 prior against D = 2 data", "loaded",
     lambda: edited_file(tail("deeplinear_model", dl.ModelSpec(dl.NNGPPrior(3), noise_variance=0.5).to_json()))),
    ("7", "float64 fit loaded without x64", "silently float32", float64_without_x64),
    ("7", "hyperprior in the file", "a repr string; cannot be re-run",
     lambda: dl.ModelSpec(dl.NNGPPrior(2), noise_variance=dist.HalfNormal(0.7)).to_json()),
    ("8", "Ctrl-C during a command-line fit", "full traceback",
     lambda: _ctrl_c()),
]


def _ctrl_c():
    import deeplinear.app.fit as app_fit

    real = app_fit._fit_one

    def interrupted(*a):
        raise KeyboardInterrupt

    app_fit._fit_one = interrupted
    try:
        return cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1", *FAST, "--output", "out"])
    finally:
        app_fit._fit_one = real


def outcome(call) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = call()
        except (ValueError, TypeError, OSError) as err:
            return f"{type(err).__name__}: {str(err)[:160]}"
        except Exception as err:  # reported, not hidden
            return f"UNEXPECTED {type(err).__name__}: {str(err)[:160]}"
    notes = sorted({f"{w.category.__name__}: {str(w.message)[:100]}" for w in caught
                    if issubclass(w.category, (dl.PrecisionWarning, dl.ConvergenceWarning))})
    text = value if isinstance(value, str) else f"returned {type(value).__name__}"
    return text + (f" (warns {'; '.join(notes)})" if notes else "")


def main_() -> None:
    rows = []
    for item, case, before, call in CASES + TRUST3_CASES:
        now = outcome(call).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {item} | {case} | {before} | {now} |")
        print(rows[-1], flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = Path(__file__).parent / "results" / "hostile_inputs.md"
    out.write_text(
        "# Hostile inputs (issues 12 and 28): before and now\n\n"
        f"Machine: {describe()}\n\nLoad (`uptime`): {load}\n\n"
        "\"Before\" is what the issue reported (items 1-8: issue 12, deeplinear 0.2.0-dev; items 28.x: "
        "issue 28, on the sweeps, cache, custom models, evidence, readers and Dask frames); \"now\" is "
        "measured by `benchmarks/hostile_inputs.py` on this commit. Every case is also a test: items 1-8 in "
        "`tests/test_hostile_inputs.py` or `tests/test_bad_input.py` (the error type and that the message "
        "names the argument; for data safety, that the original file is byte-identical and no stray file "
        "remains); items 28.x in `tests/test_sweep.py`, `test_evidence.py`, `test_numerical_range.py`, "
        "`test_learned_kernels.py`, `test_custom_models.py`, `test_hostile_inputs.py`, `test_distributed.py`, "
        "`test_compilation.py` and `test_persistence.py`. `tests/test_fuzz.py` runs 1,000 random data "
        "combinations and 1,000 random argument combinations of `log_evidence`, `renormalized_kernel` and "
        "`run_sweep`.\n\n"
        "| item | case | before | now |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main_()
