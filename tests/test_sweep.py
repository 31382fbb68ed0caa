"""Sweeps (issue 15, item 1): a grid of 3 ratios x 2 data sets equals the sequential fits; the same
table on a spawned process pool; checkpoints written as results arrive are read back by a rerun
and never overwritten by a different sweep; a fit that fails twice is reported with its inputs."""

import concurrent.futures
import multiprocessing
import warnings

import jax
import numpy as np
import pytest

import deeplinear as dl
from deeplinear.sweep import grid, run_sweep

RATIOS = (0.5, 1.0, 2.0)
SETTINGS = dict(num_warmup=60, num_samples=60, num_chains=1)
KEY = 11


def _data_sets():
    out = {}
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(8, 3))
        Y = X @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(8, 2))
        out[f"data{seed}"] = dl.RegressionData.linear(X, Y)
    return out


def _tasks():
    specs = {f"a={a:g}": dl.ModelSpec(dl.ProportionalLimitPrior(a, 2, num_steps=4), noise_variance=0.1)
             for a in RATIOS}
    return grid(_data_sets(), specs)


@pytest.fixture(scope="module")
def in_process():
    return run_sweep(_tasks(), key=KEY, **SETTINGS)


def test_grid_sweep_equals_sequential_fits(in_process):
    tasks = _tasks()
    assert list(in_process.table.index) == list(tasks) and len(tasks) == 6
    assert not in_process.failures and in_process.reused == ()
    for i, (name, (data, spec)) in enumerate(tasks.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dl.ConvergenceWarning)
            alone = dl.fit(data, spec, key=jax.random.fold_in(jax.random.key(KEY), i), progress_bar=False, **SETTINGS)
        row = in_process.table.loc[name]
        np.testing.assert_allclose(row["E[Q01]"], alone.draws("Q")[:, 0, 1].mean(), rtol=1e-6)
        np.testing.assert_allclose(row["elpd_loo"], dl.loo(alone).elpd, rtol=1e-6)
        assert row["divergences"] == alone.num_divergences


def test_process_pool_gives_the_same_table(in_process):
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = run_sweep(_tasks(), key=KEY, executor=pool, **SETTINGS)
    assert list(pooled.table.index) == list(in_process.table.index)
    np.testing.assert_allclose(pooled.table.drop(columns=["warnings", "errors"]).to_numpy(float),
                               in_process.table.drop(columns=["warnings", "errors"]).to_numpy(float), rtol=1e-6)


def test_checkpoint_is_read_back_and_never_overwritten(in_process, tmp_path, capsys):
    capsys.readouterr()
    first = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, keep_datatrees=True, progress_bar=True, **SETTINGS)
    shown = capsys.readouterr().err  # a bar over the fits, counting each as it arrives
    assert "sweep (6 fits)" in shown and "0/6" in shown and "6/6" in shown, shown[-500:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.startswith("fit-") and f.endswith(".json")]) == 6
    assert len([f for f in files if f.endswith(".nc")]) == 6 and "sweep.json" in files
    again = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, keep_datatrees=True, progress_bar=True, **SETTINGS)
    assert "0/6" not in (shown := capsys.readouterr().err) and "6/6" in shown  # read back: done from the start
    assert again.reused == tuple(_tasks())
    np.testing.assert_allclose(again.table.drop(columns=["warnings", "errors"]).to_numpy(float),
                               first.table.drop(columns=["warnings", "errors"]).to_numpy(float))
    name = next(iter(_tasks()))
    np.testing.assert_array_equal(again.datatrees[name]["posterior"]["Q"].values,
                                  first.datatrees[name]["posterior"]["Q"].values)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="different sweep"):
        run_sweep(_tasks(), key=KEY + 1, checkpoint=tmp_path, **SETTINGS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_datatrees_asked_after_a_run_without_them_are_added(tmp_path):
    rows_only = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, **SETTINGS)
    assert not list(tmp_path.glob("*.nc"))
    with_trees = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, keep_datatrees=True, **SETTINGS)
    assert with_trees.reused == () and len(with_trees.datatrees) == 6 and len(list(tmp_path.glob("*.nc"))) == 6
    np.testing.assert_allclose(with_trees.table.drop(columns=["warnings", "errors"]).to_numpy(float),
                               rows_only.table.drop(columns=["warnings", "errors"]).to_numpy(float))


class _BrokenForOne(concurrent.futures.ThreadPoolExecutor):
    """Every submission of the task named ``broken`` fails."""

    def submit(self, fn, *args, **kwargs):
        if args[0] == "data0 | a=1":
            future = concurrent.futures.Future()
            future.set_exception(MemoryError("out of memory"))
            return future
        return super().submit(fn, *args, **kwargs)


def test_a_fit_failing_twice_is_reported_and_the_others_finish(in_process):
    with _BrokenForOne(2) as pool:
        result = run_sweep(_tasks(), key=KEY, executor=pool, **SETTINGS)
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert failure.name == "data0 | a=1" and failure.index == 1 and (failure.num_obs, failure.num_outputs) == (8, 2)
    assert '"ratio": 1.0' in failure.spec and failure.errors == ("MemoryError: out of memory",) * 2
    assert list(result.table.index) == [n for n in _tasks() if n != "data0 | a=1"]
    np.testing.assert_allclose(result.table.loc["data1 | a=2", "elpd_loo"], in_process.table.loc["data1 | a=2",
                                                                                                 "elpd_loo"])


@pytest.mark.parametrize("tasks,error,match", [
    ({}, TypeError, "non-empty dict"),
    ({"x": ("data", "spec")}, TypeError, "RegressionData"),
    ({"x": (_data_sets()["data0"], dl.NNGPPrior(2))}, TypeError, "ModelSpec"),
    ({"x": (_data_sets()["data0"], dl.ModelSpec(dl.NNGPPrior(3)))}, ValueError, "num_outputs = 3"),
])
def test_bad_tasks_are_refused_before_any_fit(tasks, error, match):
    with pytest.raises(error, match=match):
        run_sweep(tasks)


def test_a_bad_progress_bar_is_refused_before_any_fit(monkeypatch):
    monkeypatch.setattr("deeplinear.sweep.run_with_retry", lambda *a: pytest.fail("fitted before refusing"))
    with pytest.raises(TypeError, match="progress_bar"):
        run_sweep(_tasks(), progress_bar="yes")


def _die_once(marker, fn, *args):
    """Kill this worker process the first time (leaving ``marker``), run ``fn`` the next time."""
    import os
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).write_text("killed once")
        os._exit(1)
    return fn(*args)


class _KillOnce(concurrent.futures.Executor):
    """Submits to ``inner``; the task named ``victim`` kills its worker process on its first run."""

    def __init__(self, inner, marker, victim):
        self.inner, self.marker, self.victim = inner, str(marker), victim

    def submit(self, fn, *args, **kwargs):
        if args[0] == self.victim:
            return self.inner.submit(_die_once, self.marker, fn, *args)
        return self.inner.submit(fn, *args, **kwargs)


def test_a_killed_dask_worker_loses_nothing_and_the_sweep_completes(in_process, tmp_path):
    distributed = pytest.importorskip("distributed")
    marker = tmp_path / "killed"
    folder = tmp_path / "checkpoint"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        result = run_sweep(_tasks(), key=KEY, executor=_KillOnce(client.get_executor(), marker, "data1 | a=0.5"),
                           checkpoint=folder, **SETTINGS)
    assert marker.exists()  # a worker did die mid-sweep
    assert not result.failures and list(result.table.index) == list(_tasks())
    assert len(list(folder.glob("fit-*.json"))) == 6
    np.testing.assert_allclose(result.table.drop(columns=["warnings", "errors"]).to_numpy(float),
                               in_process.table.drop(columns=["warnings", "errors"]).to_numpy(float), rtol=1e-6)


# --- Issue 28: sweeps never lose a finished fit ------------------------------------------------------

POOL_RATIOS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # x 2 data sets: the acceptance's sweep of 12 fits


def _killed_once(marker, fn, *args):
    """SIGKILL this worker process the first time (leaving ``marker``), as the OOM killer would;
    run ``fn`` the next time."""
    import os
    import signal
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(*args)


class _PoolKillingOne(concurrent.futures.ProcessPoolExecutor):
    """A process pool whose worker running the task named ``victim`` is SIGKILLed the first time."""

    def __init__(self, marker, victim, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker, self.victim = str(marker), victim

    def submit(self, fn, /, *args, **kwargs):
        if args and args[0] == self.victim:
            return super().submit(_killed_once, self.marker, fn, *args)
        return super().submit(fn, *args, **kwargs)


def test_a_sigkilled_pool_worker_loses_nothing(tmp_path):
    """A worker killed mid-sweep breaks a ProcessPoolExecutor: every task it held fails with
    BrokenProcessPool. The sweep moves them to a fresh pool without using their retry: 12 rows,
    no failures, every row on disk once."""
    specs = {f"a={a:g}": dl.ModelSpec(dl.ProportionalLimitPrior(a, 2, num_steps=4), noise_variance=0.1)
             for a in POOL_RATIOS}
    tasks = grid(_data_sets(), specs)
    marker, folder = tmp_path / "killed", tmp_path / "checkpoint"
    with _PoolKillingOne(marker, "data0 | a=1.5", 2, mp_context=multiprocessing.get_context("spawn")) as pool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_sweep(tasks, key=KEY, executor=pool, checkpoint=folder, **SETTINGS)
    assert marker.exists()  # a worker did die mid-sweep
    assert not result.failures and list(result.table.index) == list(tasks) and len(tasks) == 12
    assert any("executor broke" in str(w.message) for w in caught if w.category is RuntimeWarning)
    assert len(list(folder.glob("fit-*.json"))) == 12
    assert np.all(np.isfinite(result.table["elpd_loo"])) and set(result.table["errors"]) == {""}


def _counting_fits(monkeypatch, interrupt_at=None):
    """Count the fits a sweep runs in process (and raise KeyboardInterrupt at fit ``interrupt_at``)."""
    import deeplinear.sweep as sweep

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return dl.fit(*args, **kwargs)

    monkeypatch.setattr(sweep, "fit", counted)
    return calls


def test_a_rerun_after_ctrl_c_neither_refits_nor_duplicates(in_process, tmp_path, monkeypatch):
    calls = _counting_fits(monkeypatch, interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, **SETTINGS)
    assert len(list(tmp_path.glob("fit-*.json"))) == 3  # the three finished fits were written as they finished
    calls = _counting_fits(monkeypatch)
    again = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, **SETTINGS)
    assert len(calls) == 3 and again.reused == tuple(_tasks())[:3]
    assert len(list(tmp_path.glob("fit-*.json"))) == 6 and list(again.table.index) == list(_tasks())
    np.testing.assert_allclose(again.table["elpd_loo"], in_process.table["elpd_loo"], rtol=1e-6)


def test_another_sweep_on_the_folder_is_refused_before_any_fit(tmp_path, monkeypatch):
    tasks = _tasks()
    first = dict(list(tasks.items())[:2])
    run_sweep(first, key=KEY, checkpoint=tmp_path, **SETTINGS)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = _counting_fits(monkeypatch)
    other = dict(list(tasks.items())[2:4])  # other names: no file of the first sweep would be touched
    with pytest.raises(ValueError, match="different sweep"):
        run_sweep(other, key=KEY, checkpoint=tmp_path, **SETTINGS)
    assert calls == [] and {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_unwritable_checkpoint_folder_is_refused_before_any_fit(tmp_path, monkeypatch):
    """A read-only folder (simulated: this suite may run as root, who may write anywhere)."""
    import errno
    import os

    folder = tmp_path / "read-only"
    folder.mkdir()
    original = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    calls = _counting_fits(monkeypatch)
    with pytest.raises(PermissionError, match="cannot be written.*nothing was fitted"):
        run_sweep(dict(list(_tasks().items())[:1]), key=KEY, checkpoint=folder, **SETTINGS)
    assert calls == [] and not list(folder.iterdir())


def test_a_diagnostic_error_goes_into_the_row_not_into_a_refit(in_process, monkeypatch):
    import deeplinear.sweep as sweep

    def broken_loo(result):
        raise ValueError("the ArviZ call failed")

    monkeypatch.setattr(sweep, "loo", broken_loo)
    calls = _counting_fits(monkeypatch)
    name = next(iter(_tasks()))
    result = run_sweep(dict(list(_tasks().items())[:1]), key=KEY, **SETTINGS)
    assert len(calls) == 1 and not result.failures
    row = result.table.loc[name]
    assert row["errors"] == "LOO: ValueError: the ArviZ call failed" and np.isnan(row["elpd_loo"])
    np.testing.assert_allclose(row["E[Q01]"], in_process.table.loc[name, "E[Q01]"], rtol=1e-6)


def test_a_sweep_over_streamed_data_keeps_its_rows(monkeypatch):
    """Data set up by streaming keep no rows for LOO: each fit runs once and its row says so."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3))
    Y = X @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(8, 2))
    streamed = dl.RegressionData.from_chunks(dl.ArrayChunks(X, Y, chunk_rows=4))
    spec = dl.ModelSpec(dl.ProportionalLimitPrior(1.0, 2, num_steps=4), noise_variance=0.1)
    calls = _counting_fits(monkeypatch)
    result = run_sweep({"streamed": (streamed, spec)}, key=KEY, **SETTINGS)
    assert len(calls) == 1 and not result.failures
    row = result.table.loc["streamed"]
    assert "LOO needs the rows" in row["errors"] and np.isnan(row["elpd_loo"]) and np.isfinite(row["E[Q01]"])


def test_damaged_checkpoint_files_are_set_aside_and_their_fits_rerun(tmp_path, monkeypatch):
    tasks = dict(list(_tasks().items())[:3])
    first = run_sweep(tasks, key=KEY, checkpoint=tmp_path, keep_datatrees=True, **SETTINGS)
    rows = sorted(tmp_path.glob("fit-*.json"))
    trees = sorted(tmp_path.glob("fit-*.nc"))
    rows[0].write_text(rows[0].read_text()[:40])  # truncated
    trees[1].write_bytes(b"\x89HDF\r\n garbage")  # unreadable
    rows[2].unlink()  # an interrupt between the DataTree and the row
    calls = _counting_fits(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run_sweep(tasks, key=KEY, checkpoint=tmp_path, keep_datatrees=True, **SETTINGS)
    damaged = sorted(str(w.message) for w in caught if "damaged" in str(w.message))
    assert len(damaged) == 2 and rows[0].name in damaged[0] and trees[1].name in damaged[1]
    assert len(calls) == 3 and again.reused == () and not again.failures
    assert sorted(p.name for p in tmp_path.glob("*.damaged")) == sorted([rows[0].name + ".damaged",
                                                                         trees[1].name + ".damaged"])
    np.testing.assert_allclose(again.table.drop(columns=["warnings", "errors"]).to_numpy(float),
                               first.table.drop(columns=["warnings", "errors"]).to_numpy(float), rtol=1e-6)
    calls = _counting_fits(monkeypatch)
    third = run_sweep(tasks, key=KEY, checkpoint=tmp_path, keep_datatrees=True, **SETTINGS)
    assert calls == [] and third.reused == tuple(tasks)


SIGINT_SWEEP = """
import concurrent.futures, multiprocessing, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see _slow_fits)
sys.path.insert(0, sys.argv[2])
import test_sweep as t
from deeplinear.sweep import run_sweep
with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=t._slow_fits) as pool:
    run_sweep(t._pool_tasks(), key=t.KEY, executor=pool, checkpoint=sys.argv[1], **t.SETTINGS)
"""
SLOW_FIT_S = 0.5  # each pool fit waits this long first: the sweep is still running when Ctrl-C comes


def _slow_fits():
    """Pool initializer: Ctrl-C raises ``KeyboardInterrupt`` here as in a terminal, and every fit in this
    worker waits ``SLOW_FIT_S`` first, so that the 12 small fits cannot all finish before the test sends
    the SIGINT. Python keeps SIGINT ignored when its parent ignored it, and a shell without job control
    starts background commands that way (``pytest ... &`` in a script): the sweep then ran to the end
    and exited 0 (two failures on 2026-12-07, first blamed on a loaded machine); so the sweep script
    and its workers install Python's default handler, which a process started from a terminal has."""
    import signal
    import time

    import deeplinear.sweep as sweep

    signal.signal(signal.SIGINT, signal.default_int_handler)

    fit = sweep.fit

    def slow(*args, **kwargs):
        time.sleep(SLOW_FIT_S)
        return fit(*args, **kwargs)

    sweep.fit = slow


def _pool_tasks():
    specs = {f"a={a:g}": dl.ModelSpec(dl.ProportionalLimitPrior(a, 2, num_steps=4), noise_variance=0.1)
             for a in POOL_RATIOS}
    return grid(_data_sets(), specs)


def test_a_pool_sweep_interrupted_by_ctrl_c_is_resumed_without_refits_or_duplicates(tmp_path, monkeypatch):
    """Issue 28's acceptance: 12 fits on a 2-worker process pool, Ctrl-C (SIGINT to the process group,
    as a terminal sends it) once the first row is on disk; the rerun fits only what is missing and
    writes every row once."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder = tmp_path / "checkpoint"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen([sys.executable, "-c", SIGINT_SWEEP, str(folder), str(Path(__file__).parent)],
                           env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(folder.glob("fit-*.json")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0 and "KeyboardInterrupt" in err, err[-3000:]
    finished = sorted(p.name for p in folder.glob("fit-*.json"))
    assert 1 <= len(finished) < 12, finished  # interrupted mid-sweep
    print(f"{len(finished)} of 12 rows written before Ctrl-C")
    assert sorted(p.name for p in folder.iterdir()) == sorted(finished + ["sweep.json"])  # no partial file
    calls = _counting_fits(monkeypatch)
    again = run_sweep(_pool_tasks(), key=KEY, checkpoint=folder, **SETTINGS)
    assert len(calls) == 12 - len(finished) and len(again.reused) == len(finished)
    assert len(list(folder.glob("fit-*.json"))) == 12 and list(again.table.index) == list(_pool_tasks())
    assert not again.failures and np.all(np.isfinite(again.table["elpd_loo"]))
