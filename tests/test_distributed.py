"""Simulation-based calibration on an executor (issue 15, item 1, first part): the same ranks as in
process for the same key, on a spawned process pool and on a Dask ``LocalCluster`` with worker
processes; a failed task is retried once, and a batch that fails twice is reported with its
simulations; bad executors and unwritable specifications are refused before anything runs."""

import concurrent.futures
import multiprocessing

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import deeplinear as dl
from deeplinear.sbc import SBCTaskError

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


def test_dask_local_cluster_gives_the_in_process_ranks_in_float64():
    distributed = pytest.importorskip("distributed")
    with jax.enable_x64(True):
        data, prior = _problem("float64")
        expected = _sbc(data, prior)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=40) as cluster, distributed.Client(cluster) as client:
            _same(expected, _sbc(data, prior, executor=client.get_executor()))


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
