"""Beyond one process (issue 15). Simulation-based calibration on an executor: the same ranks as in
process for the same key, on a spawned process pool and on a Dask ``LocalCluster`` with worker
processes; a failed task is retried once, and a batch that fails twice is reported with its
simulations; bad executors and unwritable specifications are refused before anything runs.
Sufficient statistics reduced by Dask from a chunked array of 10^6 rows (and a dask DataFrame)
equal the in-memory set-up to round-off."""

import concurrent.futures
import multiprocessing

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import deeplinear as dl
from deeplinear.sbc import SBCTaskError
from deeplinear.streaming import LinearStatistics

NUM_SIMULATIONS = 8
BATCH = 3  # three tasks, the last one padded


def _problem(dtype="float32"):
    rng = np.random.default_rng(0)
    data = dl.RegressionData.linear(rng.normal(size=(5, 2)), np.zeros((5, 2)), dtype=dtype)
    return data, dl.FiniteWidthPrior.from_depth_width(2, 4, 2)


def _sbc(data, prior, **kw):
    return dl.simulation_based_calibration(data, prior, noise_variance=dist.HalfNormal(1.0),
                                           num_simulations=NUM_SIMULATIONS, num_warmup=40, num_samples=30, thin=3,
                                           batch_size=BATCH, progress_bar=False, key=5, **kw)


def _same(a, b):
    assert list(a.ranks) == list(b.ranks)
    for name in a.ranks:
        np.testing.assert_array_equal(a.ranks[name], b.ranks[name], err_msg=name)
    np.testing.assert_array_equal(a.divergences, b.divergences)


@pytest.fixture(scope="module")
def in_process():
    data, prior = _problem()
    return _sbc(data, prior)


def test_process_pool_gives_the_in_process_ranks(in_process):
    data, prior = _problem()
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        _same(in_process, _sbc(data, prior, executor=pool))


@pytest.fixture(scope="module")
def client():
    """A Dask ``LocalCluster`` with two worker processes, and a client (the current scheduler)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as connected:
        yield connected


def test_dask_local_cluster_gives_the_in_process_ranks_in_float64(client):
    with jax.enable_x64(True):
        data, prior = _problem("float64")
        _same(_sbc(data, prior), _sbc(data, prior, executor=client.get_executor()))


STATS_ROWS = 10**6  # rows of the chunked dask array (issue 15's acceptance)


def test_sufficient_statistics_from_dask_equal_the_in_memory_set_up(client):
    """10^6 rows in 10 dask chunks (labels in 20), reduced on the cluster's worker processes: the
    set-up equals RegressionData.linear on the same rows to round-off; a dask DataFrame too."""
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd

    rng = np.random.default_rng(2)
    X = rng.normal(size=(STATS_ROWS, 5)) * np.array([1.0, 10.0, 0.1, 3.0, 1.0])
    Y = X @ rng.normal(size=(5, 2)) + rng.normal(size=(STATS_ROWS, 2)) + 4.0
    with jax.enable_x64(True):
        whole = dl.RegressionData.linear(X, Y, dtype="float64")
        stats = LinearStatistics.from_dask(da.from_array(X, chunks=(100_000, 5)), da.from_array(Y, chunks=(50_000, 2)))
        frame = dd.from_pandas(pd.DataFrame(np.hstack([X[:1000], Y[:1000]]), columns=list("abcdefg")), npartitions=4)
        small = LinearStatistics.from_dask_dataframe(frame, list("abcde"), ["f", "g"])
        streamed = dl.RegressionData.from_statistics(stats, dtype="float64")
        small_data = dl.RegressionData.from_statistics(small, dtype="float64")
        small_whole = dl.RegressionData.linear(X[:1000], Y[:1000], dtype="float64")
    assert stats.num_rows == STATS_ROWS
    np.testing.assert_allclose(stats.input_sums, X.sum(0), rtol=1e-10)
    for got, want in ((streamed, whole), (small_data, small_whole)):
        np.testing.assert_allclose(got.basis.eigenvalues, want.basis.eigenvalues, rtol=1e-10)
        np.testing.assert_allclose(got.rotated_labels, want.rotated_labels, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(got.null_scatter, want.null_scatter, rtol=1e-9)
        np.testing.assert_allclose(got.intercept_terms.null_mean, want.intercept_terms.null_mean, rtol=1e-9)


def _frame():
    import dask.dataframe as dd
    import pandas as pd

    return dd.from_pandas(pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.5, 1.0, 0.0, 2.0]}), npartitions=2)


def test_bad_dask_input_is_refused():
    pytest.importorskip("dask")
    import dask.array as da

    with pytest.raises(TypeError, match="dask array"):
        LinearStatistics.from_dask(np.ones((4, 2)), da.ones((4, 1)))
    with pytest.raises(ValueError, match="missing"):
        LinearStatistics.from_dask_dataframe(_frame(), ["a", "z"], ["b"])
    with pytest.raises(ValueError, match="both an input and an output"):
        LinearStatistics.from_dask_dataframe(_frame(), ["a"], ["a"])
    with pytest.raises(TypeError, match="from_dask_dataframe"):
        LinearStatistics.from_dask(_frame()[["a"]], da.ones((4, 1)))
    with pytest.raises(ValueError, match="same rows"):
        LinearStatistics.from_dask(da.ones((4, 2)), da.ones((5, 1)))
    with pytest.raises(ValueError, match="split_every"):
        LinearStatistics.from_dask(da.ones((4, 2)), da.ones((4, 1)), split_every=1)


class _FlakyExecutor(concurrent.futures.ThreadPoolExecutor):
    """Fails the first ``failures_per_batch`` submissions of every batch (keyed by its first label)."""

    def __init__(self, failures_per_batch):
        super().__init__(max_workers=2)
        self.failures_per_batch = failures_per_batch
        self.seen = {}

    def submit(self, fn, *args, **kwargs):
        batch = float(np.asarray(args[3]).ravel()[0])  # the batch's labels identify it
        self.seen[batch] = self.seen.get(batch, 0) + 1
        if self.seen[batch] <= self.failures_per_batch:
            future = concurrent.futures.Future()
            future.set_exception(OSError(f"worker lost (try {self.seen[batch]})"))
            return future
        return super().submit(fn, *args, **kwargs)


def test_a_failed_task_is_retried_once(in_process):
    data, prior = _problem()
    with _FlakyExecutor(failures_per_batch=1) as flaky:
        _same(in_process, _sbc(data, prior, executor=flaky))
        assert sorted(flaky.seen.values()) == [2, 2, 2]


def test_a_batch_failing_twice_is_reported_with_its_simulations():
    data, prior = _problem()
    with _FlakyExecutor(failures_per_batch=2) as flaky, pytest.raises(SBCTaskError) as info:
        _sbc(data, prior, executor=flaky)
    message = str(info.value)
    assert "3 of 3 SBC batches failed twice" in message
    assert "simulations 0..2 (batch 0): OSError: worker lost (try 1); retry: OSError: worker lost (try 2)" in message


def test_bad_executor_or_unwritable_specification_is_refused():
    data, prior = _problem()
    with pytest.raises(TypeError, match="concurrent.futures.Executor"):
        _sbc(data, prior, executor="dask")
    unwritable = dist.TransformedDistribution(dist.Normal(0.0, 1.0), dist.transforms.ExpTransform())
    with concurrent.futures.ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="cannot be written"):
        dl.simulation_based_calibration(data, prior, noise_variance=unwritable, num_simulations=2, executor=pool)


def test_dask_frames_filtered_or_of_strings(client):
    """Issue 28: an empty partition (any filtered frame has them) contributes nothing; a column of
    strings is named before anything is read; a bare string is not a list of columns."""
    import dask.dataframe as dd
    import pandas as pd

    rng = np.random.default_rng(3)
    table = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "y"]).assign(row=np.arange(40))
    frame = dd.from_pandas(table, npartitions=4)
    filtered = frame[frame["row"] >= 20]  # the first two partitions are empty
    with jax.enable_x64(True):
        got = LinearStatistics.from_dask_dataframe(filtered, ["a", "b"], ["y"])
        want = LinearStatistics.from_chunk(table.iloc[20:][["a", "b"]].to_numpy(), table.iloc[20:][["y"]].to_numpy())
    assert got.num_rows == 20
    np.testing.assert_allclose(np.abs(got.r_factor), np.abs(want.r_factor), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="every partition is empty"):
        LinearStatistics.from_dask_dataframe(frame[frame["row"] > 100], ["a", "b"], ["y"])
    labelled = dd.from_pandas(table.assign(site=["north", "south"] * 20), npartitions=2)
    with pytest.raises(TypeError, match="'site'"):
        LinearStatistics.from_dask_dataframe(labelled, ["a", "site"], ["y"])
    with pytest.raises(TypeError, match=r"pass \['ab'\]"):
        LinearStatistics.from_dask_dataframe(frame.rename(columns={"a": "ab"}), "ab", ["y"])
