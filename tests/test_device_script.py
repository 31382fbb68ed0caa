"""``benchmarks/device.py --smoke``: the GPU loan's one script, at tiny sizes on CPU, so that it cannot rot."""

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device.py"
SECTIONS = ("## Tests marked `device`", "## ESS per second", "## SBC in one program", "## Fit, LOO and predictions",
            "## Exact prior sampling", "## Summary")


def _load_script():
    spec = importlib.util.spec_from_file_location("deeplinear_device_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_workers_share_an_accelerator_without_preallocating_it():
    """Set by conftest before JAX starts a backend, and inherited by the tests' subprocesses."""
    assert os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") == "false"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_device_script_runs_at_smoke_size_and_reports_every_row(tmp_path, capsys):
    script = _load_script()
    out = tmp_path / "device.md"
    assert script.main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for section in SECTIONS:
        assert section in text
    # the device subset was collected and covers every area the issue names
    collected = int(re.search(r"'collected': (\d+)", text).group(1))
    assert collected >= 2 * len(script.AREAS)
    assert "MISSING" not in text
    # every throughput row has both devices, with finite positive numbers
    size = script.SIZES["smoke"]
    for where, chains in (("accelerator", size["chains"]), ("cpu", size["cpu_chains"])):
        rows = re.findall(rf"^\| {where} \|(.*)\|$", text, re.M)
        assert len(rows) == len(chains) + 3  # ESS per chain count, SBC, fit at scale, prior sampling
        assert not any(word in row for row in rows for word in ("nan", "inf"))
    assert text.count("| True |") == 2  # the fits at scale are finite on both devices
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("device tests collected")
    # benchmarks/ must not join sys.path: its distributed.py would shadow Dask's package in this worker and
    # in every process it spawns (the Dask tests failed after this test in the same worker)
    assert not any(Path(p).resolve() == SCRIPT.parent for p in sys.path if p)


def test_the_device_script_never_replaces_a_file_the_user_names(tmp_path, capsys):
    out = tmp_path / "mine.md"
    out.write_text("the user's notes")
    with pytest.raises(SystemExit) as stopped:
        _load_script().main(["--smoke", "--out", str(out)])
    assert stopped.value.code == 2  # argparse's usage error, before any test or sampling runs
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "the user's notes"
