"""Where the test suite's time goes (issue 27): how much of it is XLA compiling, by file, program and test.

    python benchmarks/suite_profile.py        # the whole suite, two workers, about 25 minutes on 2 cores

Runs the README's test command (``python -m pytest``, two xdist workers) with ``--compile-report``
(``tests/conftest.py``): every compilation in the pytest processes, with the test that caused it,
from ``jax.monitoring``'s ``jaxpr_trace_duration``, ``jaxpr_to_mlir_module_duration`` and
``backend_compile_duration`` events (a persistent-cache hit is a short ``backend_compile_duration``),
and every test's seconds (``--durations=0``). Tests that start subprocesses (notebooks, the command
line, fresh processes with several host devices) compile there, out of the events' sight: they are
counted apart.

The floor it reports: the suite's wall time if every in-process compilation took no time and the
two workers stayed evenly loaded, ``(test seconds - compile seconds) / 2``; the subprocess tests are
left whole in it (their own compiling is not seen), so the floor is an upper bound of that kind.

Writes ``benchmarks/results/suite_cpu.md`` (``--out`` to choose a new file; a file the user names is
never replaced). Run it with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "suite_cpu.md"
WORKERS = 2  # the README's command: pytest's addopts run two xdist workers
TOP = 15  # rows per table
BACKEND = "backend_compile_duration"
DURATION = re.compile(r"^([0-9.]+)s (call|setup|teardown)\s+(\S+)", re.M)
SUMMARY = re.compile(r"^(?:=+ )?(\d+ (?:passed|failed)\b.*?) in ([0-9.]+)s", re.M)  # with -q or without


def _run_suite(report: Path) -> dict:
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--durations=0", "--compile-report", str(report)],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if proc.returncode != 0:
        raise SystemExit(f"the suite failed (exit {proc.returncode}); no results written:\n{proc.stdout[-3000:]}")
    summary = SUMMARY.search(proc.stdout)
    return {"wall": wall, "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
            "load_before": load_before, "load_after": load_after, "stdout": proc.stdout,
            "summary": summary.group(1) if summary else "?", "pytest_s": float(summary.group(2)) if summary else wall}


def _tables(run: dict, rows: list) -> str:
    seconds = collections.Counter()
    for secs, _, test in DURATION.findall(run["stdout"]):
        seconds[test] += float(secs)
    backend, other = collections.Counter(), collections.Counter()
    programs, program_count = collections.Counter(), collections.Counter()
    events = collections.Counter()
    for test, event, program, secs in rows:
        events[event] += secs
        (backend if event == BACKEND else other)[test] += secs
        if event == BACKEND:
            programs[program] += secs
            program_count[program] += 1
    compiled = {t: backend[t] + other[t] for t in seconds}
    unseen = [t for t in seconds if compiled[t] == 0 and seconds[t] >= 1.0]  # mostly: compiles in subprocesses
    total, total_compiled = sum(seconds.values()), sum(compiled.values())
    unseen_s = sum(seconds[t] for t in unseen)
    floor = (total - total_compiled) / WORKERS
    by_file = collections.defaultdict(lambda: [0.0, 0.0])
    for t, s in seconds.items():
        by_file[t.split("::")[0]][0] += s
        by_file[t.split("::")[0]][1] += compiled[t]
    lines = [
        "## The run", "",
        f"`python -m pytest` ({WORKERS} workers): **{run['pytest_s'] / 60:.1f} min** of pytest "
        f"({run['summary']}); {run['wall'] / 60:.1f} min wall with start-up; {run['cpu'] / 60:.1f} CPU-minutes "
        f"(all processes), {run['cpu'] / run['wall']:.2f} cores busy on average.", "",
        f"- the tests' own seconds (setup + call + teardown, both workers): **{total:.0f} s**",
        f"- compiling in the pytest processes: **{total_compiled:.0f} s** ({total_compiled / total:.0%}): "
        + ", ".join(f"{e} {s:.0f} s" for e, s in events.most_common()),
        f"- {len(rows)} compile events; {sum(program_count.values())} backend compilations (or cache loads)",
        "- tests of 1 s or more that compile nothing in the pytest processes (most start subprocesses that do: "
        "notebooks, command line, fresh multi-device processes; the documentation build is one of them): "
        f"{len(unseen)}, **{unseen_s:.0f} s** ({unseen_s / total:.0%}); their compiling is not in the events",
        f"- **floor** with no in-process compiling, the workers evenly loaded: {floor / 60:.1f} min "
        f"(the subprocess tests whole in it)", "",
        "## By file", "", "| file | test seconds | compiling (in-process) | share |", "|---|---|---|---|",
    ]
    for f, (s, c) in sorted(by_file.items(), key=lambda kv: -kv[1][0])[:2 * TOP]:
        lines.append(f"| `{f}` | {s:.1f} | {c:.1f} | {c / s if s else 0:.0%} |")
    lines += ["", "## Programs by backend-compile seconds", "", "| program | compilations | seconds |", "|---|---|---|"]
    for p, s in programs.most_common(TOP):
        lines.append(f"| `{p}` | {program_count[p]} | {s:.1f} |")
    lines += ["", "## Slowest tests", "", "| test | seconds | compiling (in-process) |", "|---|---|---|"]
    for t, s in seconds.most_common(2 * TOP):
        lines.append(f"| `{t}` | {s:.1f} | {compiled[t]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help=f"the results file (default: {DEFAULT_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():  # a file the user names is never replaced
        parser.error(f"--out {args.out} already exists; name a new file")
    from deeplinear._files import atomic_write

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "compilations.json"
        run = _run_suite(report)
        rows = json.loads(report.read_text())
    text = (f"# Where the suite's time goes (CPU)\n\nMachine: {describe()}\n\n"
            f"Load (`uptime`) before the run: {run['load_before']}\n\nafter the run: {run['load_after']}\n\n"
            f"Written by `benchmarks/suite_profile.py` (its docstring says what is counted).\n\n" + _tables(run, rows))
    out = args.out or DEFAULT_OUT
    atomic_write(out, lambda tmp: Path(tmp).write_text(text), overwrite=args.out is None)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
