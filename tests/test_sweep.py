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
    np.testing.assert_allclose(pooled.table.drop(columns="warnings").to_numpy(float),
                               in_process.table.drop(columns="warnings").to_numpy(float), rtol=1e-6)


def test_checkpoint_is_read_back_and_never_overwritten(in_process, tmp_path):
    first = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, keep_datatrees=True, **SETTINGS)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.endswith(".json")]) == 6 and len([f for f in files if f.endswith(".nc")]) == 6
    again = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, keep_datatrees=True, **SETTINGS)
    assert again.reused == tuple(_tasks())
    np.testing.assert_allclose(again.table.drop(columns="warnings").to_numpy(float),
                               first.table.drop(columns="warnings").to_numpy(float))
    name = next(iter(_tasks()))
    np.testing.assert_array_equal(again.datatrees[name]["posterior"]["Q"].values,
                                  first.datatrees[name]["posterior"]["Q"].values)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="different fit"):
        run_sweep(_tasks(), key=KEY + 1, checkpoint=tmp_path, **SETTINGS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_datatrees_asked_after_a_run_without_them_are_added(tmp_path):
    rows_only = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, **SETTINGS)
    assert not list(tmp_path.glob("*.nc"))
    with_trees = run_sweep(_tasks(), key=KEY, checkpoint=tmp_path, keep_datatrees=True, **SETTINGS)
    assert with_trees.reused == () and len(with_trees.datatrees) == 6 and len(list(tmp_path.glob("*.nc"))) == 6
    np.testing.assert_allclose(with_trees.table.drop(columns="warnings").to_numpy(float),
                               rows_only.table.drop(columns="warnings").to_numpy(float))


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
    assert len(list(folder.glob("*.json"))) == 6
    np.testing.assert_allclose(result.table.drop(columns="warnings").to_numpy(float),
                               in_process.table.drop(columns="warnings").to_numpy(float), rtol=1e-6)
