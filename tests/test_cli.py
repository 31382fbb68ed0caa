"""The command line: each program path end to end (the default run, which is ``infer`` then
``simulate``; ``fit``; ``compare``) in-process through ``main(argv)``, which returns the exit
code, so that the fits reuse the programs the worker has compiled; and one subprocess run of the
installed entry point (``python -m deeplinear.app``), which checks that the program starts, runs
and exits like a program."""

import re
import subprocess
import sys

import pytest

from deeplinear.app.cli import main

CLI = [sys.executable, "-m", "deeplinear.app"]


def run(args, cwd):
    return subprocess.run(CLI + args, capture_output=True, text=True, cwd=cwd, timeout=600)


def run_in_process(args, cwd, capsys, monkeypatch):
    """``main(args)`` in ``cwd``: (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_run_infers_compares_and_simulates(tmp_path, capsys, monkeypatch):
    args = ["--prior-samples", "200", "--samples", "60", "--warmup", "60", "--chains", "1",
            "--output", str(tmp_path / "figs")]
    code, stdout, err = run_in_process(args, tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert "Model comparison" in stdout and "NNGP" in stdout and "heldout_lpd" in stdout
    assert "ratio" in stdout  # posterior summary of the inferred depth-to-width ratio
    # Linnerud: corr(Q) per output pair against the labels', and the held-out verdict.
    assert "Weight-Waist" in stdout and "Waist-Pulse" in stdout
    assert "Held-out log density:" in stdout
    # item 6/7 of issue 14: full noise, against the NNGP, the Wishart baseline and scalar noise, each stated
    for other in ("the NNGP", "the Wishart baseline", "the same model with scalar noise"):
        assert re.search(rf"the limit with a inferred \(full noise\) (beats|does not beat) {other}.*nats", stdout)
    assert "What correlated noise changes" in stdout and "corr(Q), scalar noise" in stdout
    # issue 31: the comparison refits every man whose Pareto k exceeds 0.7 and says so; no open caveat
    for other in ("the NNGP", "the Wishart baseline", "the same model with scalar noise"):
        assert re.search(rf"by LOO, the limit with a inferred \(full noise\) (beats|does not beat) {other}.*the "
                         "held-out density (agrees|disagrees)", stdout)
    assert "Refitted without themselves:" in stdout and "PSIS-LOO is unreliable" not in stdout
    assert (tmp_path / "figs" / "predictive_correlations.png").stat().st_size > 0
    assert (tmp_path / "figs" / "posterior_correlation_and_ratio.png").stat().st_size > 0
    assert (tmp_path / "figs" / "loo_pointwise.png").stat().st_size > 0
    assert "N(-a/2, a/2)" in stdout and "E[Q_12^2]" in stdout
    assert (tmp_path / "figs" / "lognormal_convergence.png").stat().st_size > 0
    assert (tmp_path / "figs" / "offdiagonal_variance.png").stat().st_size > 0
    # Never overwrite silently.
    code, _, err = run_in_process(["simulate", "--prior-samples", "200", "--output", str(tmp_path / "figs")],
                                  tmp_path, capsys, monkeypatch)
    assert code == 2 and "--overwrite" in err


@pytest.mark.parametrize(
    "args",
    [["--prior-samples", "0"], ["--samples", "many"], ["simulate", "--seed", "x"], ["infer", "--chains", "0"],
     ["--seed", str(2**64)], ["fit", "--seed", "-1"]],
)
def test_bad_arguments_exit_2_with_one_line(args, tmp_path, capsys, monkeypatch):
    code, _, err = run_in_process(args, tmp_path, capsys, monkeypatch)
    assert code == 2 and "error" in err and "Traceback" not in err


def test_help(tmp_path, capsys, monkeypatch):
    assert run_in_process(["--help"], tmp_path, capsys, monkeypatch)[0] == 0
    assert "simulate" in run_in_process(["--help"], tmp_path, capsys, monkeypatch)[1]
    assert "--prior-samples" in run_in_process(["simulate", "--help"], tmp_path, capsys, monkeypatch)[1]
    assert "--samples" in run_in_process(["infer", "--help"], tmp_path, capsys, monkeypatch)[1]
    assert "--model" in run_in_process(["fit", "--help"], tmp_path, capsys, monkeypatch)[1]


LINNERUD = ["--inputs", "Chins,Situps,Jumps", "--outputs", "Weight,Waist,Pulse"]


def _linnerud_files(tmp_path):
    from deeplinear.datasets import linnerud_path

    lines = linnerud_path().read_text().splitlines()  # header + 20 rows: 15 to train, 5 to test
    (tmp_path / "train.csv").write_text("\n".join(lines[:16]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join([lines[0]] + lines[16:]) + "\n")


def test_program_runs_as_a_subprocess(tmp_path):
    """The entry point as users start it: a short prior simulation, its figures and exit code 0."""
    out = run(["simulate", "--prior-samples", "200", "--output", "figs"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "N(-a/2, a/2)" in out.stdout and "Traceback" not in out.stderr
    assert (tmp_path / "figs" / "lognormal_convergence.png").stat().st_size > 0


def test_fit_on_csv_writes_posterior_and_predictions(tmp_path, capsys, monkeypatch):
    import numpy as np
    import pandas as pd

    import deeplinear as dl

    _linnerud_files(tmp_path)
    args = ["fit", "--data", "train.csv", "--test", "test.csv", *LINNERUD, "--samples", "60", "--warmup", "60",
            "--output", "out"]
    code, stdout, err = run_in_process(args, tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert "Q[Weight, Waist]" in stdout and "max R-hat" in stdout
    assert "Q[Waist, Weight]" not in stdout  # each distinct entry of Q once
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(pred.columns[:3]) == ["row", "mean_Weight", "sd_Weight"] and len(pred) == 5
    assert np.all(pred["sd_Weight"] > 0) and np.all(np.abs(pred["corr_Weight_Waist"]) <= 1)
    loaded = dl.load_fit(tmp_path / "out" / "posterior.nc")
    assert loaded.datatree["posterior"]["Q"].shape[-2:] == (3, 3)
    assert "deeplinear_standardization" in loaded.datatree.attrs
    assert loaded.datatree["observed_data"]["Y"].dims == ("obs", "output")


def test_fit_never_overwrites_and_takes_a_model_file(tmp_path, capsys, monkeypatch):
    import deeplinear as dl

    _linnerud_files(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "posterior.nc").write_text("precious")
    args = ["fit", "--data", "train.csv", *LINNERUD, "--samples", "20", "--warmup", "20", "--output", "out"]
    code, _, err = run_in_process(args, tmp_path, capsys, monkeypatch)
    assert code == 2 and "--overwrite" in err and (tmp_path / "out" / "posterior.nc").read_text() == "precious"
    spec = dl.ModelSpec(dl.NNGPPrior(3), noise_variance=0.5)
    (tmp_path / "model.json").write_text(spec.to_json())
    code, out, err = run_in_process(["fit", "--data", "train.csv", *LINNERUD, "--model", "model.json",
                                     "--output", "nngp"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert dl.load_fit(tmp_path / "nngp" / "posterior.nc").spec.to_dict() == spec.to_dict()


def test_compare_on_csv(tmp_path, capsys, monkeypatch):
    _linnerud_files(tmp_path)
    args = ["compare", "--data", "train.csv", "--test", "test.csv", *LINNERUD, "--prior", "finite", "--depth", "2",
            "--width", "4", "--samples", "60", "--warmup", "60", "--chains", "1", "--output", "cmp"]
    code, stdout, err = run_in_process(args, tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert "heldout_lpd" in stdout and "nngp" in stdout
    assert (tmp_path / "cmp" / "comparison.csv").stat().st_size > 0
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0


def test_fit_errors_are_one_line(tmp_path, capsys, monkeypatch):
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
        (["fit", "--data", "train.csv", *LINNERUD, "--model", "missing.json"], "no such file"),
        (["fit", "--data", "train.csv", *LINNERUD, "--test", "test.csv", "--posterior", "same.out",
          "--predictions", "same.out"],
         "different names"),
    ]
    for args, fragment in cases:
        code, _, err = run_in_process(args, tmp_path, capsys, monkeypatch)
        assert code == 2, (args, err)
        assert fragment in err and "Traceback" not in err, (args, err)


def test_noise_model_and_intercept_flags_build_the_model():
    from deeplinear.app.cli import _build_parser
    from deeplinear.app.fit import model_spec

    base = ["fit", "--data", "train.csv", *LINNERUD]
    full = model_spec(_build_parser().parse_args([*base, "--noise-model", "full", "--intercept"]), 3)
    assert full.noise_model == "full" and full.to_dict()["intercept"]["distribution"] == "Normal"
    assert full.to_dict()["noise_correlation"] == {"distribution": "LKJCholesky", "dimension": 3, "concentration": 1.0}
    fixed = model_spec(_build_parser().parse_args([*base, "--noise-model", "diagonal", "--noise", "0.3"]), 3)
    assert fixed.noise_variance == (0.3, 0.3, 0.3) and fixed.intercept is None
    assert model_spec(_build_parser().parse_args(base), 3).noise_model == "scalar"
