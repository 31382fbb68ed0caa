"""The command line, end to end, in a subprocess."""

import subprocess
import sys

CLI = [sys.executable, "-m", "deeplinear.cli"]


def run(args, cwd):
    return subprocess.run(CLI + args, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_default_run_infers_compares_and_simulates(tmp_path):
    args = ["--samples", "2000", "--draws", "100", "--warmup", "100", "--output", str(tmp_path / "figs")]
    out = run(args, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Model comparison" in out.stdout and "NNGP" in out.stdout and "heldout_lpd" in out.stdout
    assert "ratio" in out.stdout  # posterior summary of the inferred depth-to-width ratio
    # Linnerud: corr(Q) per output pair against the labels', and the held-out verdict.
    assert "Weight-Waist" in out.stdout and "Waist-Pulse" in out.stdout
    assert "Held-out log density: the limit with a inferred" in out.stdout
    assert (tmp_path / "figs" / "predictive_correlations.png").stat().st_size > 0
    assert (tmp_path / "figs" / "posterior_correlation_and_ratio.png").stat().st_size > 0
    assert "N(-a/2, a/2)" in out.stdout and "E[Q_12^2]" in out.stdout
    assert (tmp_path / "figs" / "lognormal_convergence.png").stat().st_size > 0
    assert (tmp_path / "figs" / "offdiagonal_variance.png").stat().st_size > 0
    # Never overwrite silently.
    again = run(["simulate", "--samples", "2000", "--output", str(tmp_path / "figs")], tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_bad_arguments_exit_nonzero_without_traceback(tmp_path):
    for args in (["--samples", "0"], ["--samples", "many"], ["simulate", "--seed", "x"], ["infer", "--chains", "0"]):
        out = run(args, tmp_path)
        assert out.returncode == 2 and "error" in out.stderr and "Traceback" not in out.stderr


def test_help(tmp_path):
    assert "simulate" in run(["--help"], tmp_path).stdout
    assert "--samples" in run(["simulate", "--help"], tmp_path).stdout
    assert "--draws" in run(["infer", "--help"], tmp_path).stdout


LINNERUD = ["--inputs", "Chins,Situps,Jumps", "--outputs", "Weight,Waist,Pulse"]


def _linnerud_files(tmp_path):
    from deeplinear.datasets import linnerud_path

    lines = linnerud_path().read_text().splitlines()
    (tmp_path / "train.csv").write_text("\n".join(lines[:16]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join([lines[0]] + lines[16:]) + "\n")


def test_fit_on_csv_writes_posterior_and_predictions(tmp_path):
    import numpy as np
    import pandas as pd

    import deeplinear as dl

    _linnerud_files(tmp_path)
    args = ["fit", "--data", "train.csv", "--test", "test.csv", *LINNERUD, "--draws", "60", "--warmup", "60",
            "--output", "out"]
    out = run(args, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Q[Weight, Waist]" in out.stdout and "max R-hat" in out.stdout
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(pred.columns[:3]) == ["row", "mean_Weight", "sd_Weight"] and len(pred) == 5
    assert np.all(pred["sd_Weight"] > 0) and np.all(np.abs(pred["corr_Weight_Waist"]) <= 1)
    loaded = dl.load_fit(tmp_path / "out" / "posterior.nc")
    assert loaded.datatree["posterior"]["Q"].shape[-2:] == (3, 3)
    assert "deeplinear_standardization" in loaded.datatree.attrs
    again = run(args, tmp_path)  # never overwrite silently
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_compare_on_csv(tmp_path):
    _linnerud_files(tmp_path)
    args = ["compare", "--data", "train.csv", "--test", "test.csv", *LINNERUD, "--prior", "finite", "--depth", "2",
            "--width", "4", "--draws", "60", "--warmup", "60", "--output", "cmp"]
    out = run(args, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "heldout_lpd" in out.stdout and "nngp" in out.stdout
    assert (tmp_path / "cmp" / "comparison.csv").stat().st_size > 0
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0


def test_fit_errors_are_one_line(tmp_path):
    _linnerud_files(tmp_path)
    (tmp_path / "nan.csv").write_text("a,b\n1,2\n,3\n")
    cases = [
        (["fit", "--data", "missing.csv", *LINNERUD], "no such file"),
        (["fit", "--data", "train.csv", "--inputs", "Chins,Nope", "--outputs", "Weight"], "no column 'Nope'"),
        (["fit", "--data", "train.csv", *LINNERUD, "--prior", "finite"], "--depth and --width"),
        (["fit", "--data", "train.csv", *LINNERUD, "--prior", "finite", "--depth", "2", "--width", "2"], "N_l >= D"),
        (["fit", "--data", "nan.csv", "--inputs", "a", "--outputs", "b"], "missing or non-finite"),
        (["fit", "--data", "train.csv", *LINNERUD, "--noise", "-1"], "noise_variance"),
        (["compare", "--data", "train.csv", *LINNERUD, "--prior", "nngp"], "against the NNGP"),
        (["fit", "--data", "train.csv"], "required"),
    ]
    for args, fragment in cases:
        out = run(args, tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert fragment in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
