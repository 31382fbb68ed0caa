"""``pytest --compile-report PATH`` (``tests/conftest.py``), which ``benchmarks/suite_profile.py`` reads:
every compilation of the run, with the test that caused it, handed from an xdist worker to the
controller, which writes the file; a file that exists already is never replaced."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_priors.py::test_finite_mean_q_is_identity[float32-equal]"  # draws Q: compiles a few programs


def _pytest(*args):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_a_worker_reports_each_compilation_with_its_test_and_an_existing_report_is_kept(tmp_path):
    report = tmp_path / "compilations.json"
    proc = _pytest("-n", "1", "--compile-report", str(report), TEST)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(report.read_text())
    events = {event for _, event, _, _ in rows}
    assert {"jaxpr_trace_duration", "backend_compile_duration"} <= events
    assert {test for test, *_ in rows} == {TEST}  # each compilation named by the test that ran it
    assert all(isinstance(program, str) and seconds >= 0 for _, _, program, seconds in rows)

    report.write_text("the user's file")
    again = _pytest("-n", "0", "--compile-report", str(report), TEST)
    assert again.returncode == 4  # pytest's usage error, before any test runs
    assert "already exists" in again.stderr
    assert report.read_text() == "the user's file"
