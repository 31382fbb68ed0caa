import os
import shutil
import tempfile
from pathlib import Path

# On a GPU, JAX preallocates 75% of its memory for the first process: the xdist workers (and the
# tests' subprocesses, which inherit this) allocate as they need instead, so that they share one
# device. Set before JAX starts a backend (importing jax starts none); no effect on CPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

# The command line switches on JAX's persistent compilation cache in the user's cache folder;
# the tests (in-process runs of main() and subprocesses alike) leave the user's folders alone:
# they use the run's own temporary cache (see _share_compiled_programs).

MAPPING_SHARE = 0.5  # clear JAX's caches between test modules above this share of vm.max_map_count


def _mapping_share() -> float:
    """Memory mappings this process holds, as a share of the kernel's limit (0 where unknown)."""
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps", "rb") as maps:
            held = sum(1 for _ in maps)
    except (OSError, ValueError):
        return 0.0
    return held / limit


class _CompiledProgramRelease:
    """Each compiled XLA CPU program holds memory mappings (about ten for a small one) until JAX's
    caches drop it. A pytest-xdist worker runs hundreds of tests in one process and keeps every
    program it compiled, and on Linux a process may hold at most ``vm.max_map_count`` mappings
    (65530 by default): past that, the next compilation segfaults or aborts inside XLA (one worker
    reached 64401 mappings and crashed). So when a test module ends and the worker holds more than
    ``MAPPING_SHARE`` of the limit, JAX's caches are cleared; the next module compiles afresh.
    Clearing only between modules keeps the compile-once tests, which count compilations within a
    module, meaningful. Registered as a plugin (not a hook of this file) so that it also runs after
    the doctests in ``deeplinear/``."""

    @staticmethod
    def pytest_runtest_teardown(item, nextitem):
        if (nextitem is None or nextitem.path != item.path) and _mapping_share() > MAPPING_SHARE:
            jax.clear_caches()


SHARED_CACHE_VARIABLE = "DEEPLINEAR_TEST_JAX_CACHE"  # the run's compilation cache, set by the controller


def _share_compiled_programs(config):
    """One persistent compilation cache for the whole run: the controller (or a run without
    xdist) makes a temporary folder and removes it at the end; xdist workers, started after this
    hook with the controller's environment, find it in ``SHARED_CACHE_VARIABLE``. A program one
    worker compiled is loaded, not compiled, by the other, and by the subprocesses of the tests
    (command line, notebook kernels, executors' and Dask's workers), which inherit JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` and ``DEEPLINEAR_COMPILATION_CACHE``.
    Compile-counting tests count lowerings, which a cache hit does not skip."""
    folder = os.environ.get(SHARED_CACHE_VARIABLE)
    if folder is None:
        folder = tempfile.mkdtemp(prefix="deeplinear-test-jax-cache-")
        os.environ[SHARED_CACHE_VARIABLE] = folder
        config._deeplinear_cache_owner = folder
    os.environ["DEEPLINEAR_COMPILATION_CACHE"] = folder  # the command line and notebooks' enable_compilation_cache()
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder  # every other subprocess: executors' workers, Dask
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# Tests that fit the same Linnerud models (limit with full and scalar noise, NNGP, Wishart; the sampler sees
# only rank-sized summaries, so 15 or 20 men share its programs). Run first, one after another, they
# land in one xdist worker (worksteal hands out the collection in contiguous chunks and steals from the
# end), and each loads from the run's shared cache what the one before compiled, where two workers
# would compile the same programs side by side. Measured one after another in one process (idle
# 2-core EPYC): 112 s, 63 s and 25 s against 109 s, 101 s and 70 s each on its own.
SHARED_PROGRAM_CLUSTER = (
    "tests/test_notebooks.py::test_notebook_executes[04_linnerud]",
    "tests/test_notebooks.py::test_notebook_executes[05_which_depth]",
    "tests/test_cli.py::test_default_run_infers_compares_and_simulates",
)


class _CompileReport:
    """``--compile-report PATH``: every XLA compilation of the run's pytest processes (not of the
    subprocesses tests start), with the test that caused it, written to ``PATH`` as JSON rows
    ``[test, event, program, seconds]`` (``event``: ``jaxpr_trace_duration``,
    ``jaxpr_to_mlir_module_duration`` or ``backend_compile_duration``; a persistent-cache hit is a short
    ``backend_compile_duration``). xdist workers hand their rows to the controller, which writes the
    file. ``benchmarks/suite_profile.py`` runs the suite with it and writes the table."""

    EVENT_PREFIX = "/jax/core/compile/"

    def __init__(self, config, path):
        self.config, self.path, self.rows, self.test = config, path, [], "<collection>"
        self.is_worker = hasattr(config, "workerinput")
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event, seconds, **kwargs):
        if event.startswith(self.EVENT_PREFIX):
            self.rows.append([self.test, event[len(self.EVENT_PREFIX):], kwargs.get("fun_name", "?"), seconds])

    def pytest_runtest_logstart(self, nodeid, location):
        self.test = nodeid

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):  # controller: a worker's rows
        self.rows.extend(node.workeroutput.get("deeplinear_compile_rows", []))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        if self.is_worker:
            self.config.workeroutput["deeplinear_compile_rows"] = self.rows
            return
        import json

        from deeplinear._files import atomic_write

        atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(self.rows)))


def pytest_addoption(parser):
    parser.addoption("--compile-report", metavar="PATH", default=None,
                     help="write every XLA compilation of the run (test, event, program, seconds) to PATH as JSON")


def pytest_collection_modifyitems(session, config, items):
    """Move :data:`SHARED_PROGRAM_CLUSTER` to the front, in its order (the same in every worker)."""
    rank = {nodeid: i for i, nodeid in enumerate(SHARED_PROGRAM_CLUSTER)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))  # stable: the rest keep their order


def pytest_configure(config):
    config.pluginmanager.register(_CompiledProgramRelease(), "deeplinear-compiled-program-release")
    report = config.getoption("compile_report")
    if report is not None:
        if not hasattr(config, "workerinput") and Path(report).exists():
            raise pytest.UsageError(f"--compile-report: {report} already exists; name a new file")
        config.pluginmanager.register(_CompileReport(config, report), "deeplinear-compile-report")
    _share_compiled_programs(config)


def pytest_unconfigure(config):
    folder = getattr(config, "_deeplinear_cache_owner", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run the test in both precisions; float64 through a scoped ``jax.enable_x64``."""
    with jax.enable_x64(request.param == "float64"):
        yield jnp.dtype(request.param)


def mc_mean_and_se(samples, axis=0):
    """Sample mean and its Monte Carlo standard error along ``axis``."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[axis]
    return x.mean(axis), x.std(axis, ddof=1) / np.sqrt(n)
