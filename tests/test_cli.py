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
