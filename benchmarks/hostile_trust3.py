"""Issue 28's hostile cases on the newer surfaces (sweeps, cache, custom models, evidence, readers,
Dask frames, file modes): what the issue reported before, and what happens now.

Imported by ``hostile_inputs.py``, which runs these cases after issue 12's and writes one table.
Every case is also a named test (the test file is given in the table's notes). A worker process of
the killed-worker case imports this module by name, so it holds no work at import.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SETTINGS = dict(num_warmup=30, num_samples=30, num_chains=1)


def _data(scale=1.0, seed=0, P=8):
    import deeplinear as dl

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P, 3))
    return dl.RegressionData.linear(X, scale * (X @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(P, 2))))


def _tasks(n):
    import deeplinear as dl

    specs = {f"a={a:g}": dl.ModelSpec(dl.ProportionalLimitPrior(a, 2, num_steps=4), noise_variance=0.1)
             for a in (0.5, 1.0, 2.0, 3.0)[:n]}
    return {name: (_data(), spec) for name, spec in specs.items()}


def _sweep(tasks, **kw):
    from deeplinear.sweep import run_sweep

    return run_sweep(tasks, key=3, **SETTINGS, **kw)


def _count_fits(monkey):
    """Count the fits a sweep runs (the sweep's ``fit`` replaced by a counting one)."""
    import deeplinear as dl
    import deeplinear.sweep as sweep

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return dl.fit(*args, **kwargs)

    monkey.append((sweep, "fit", sweep.fit))
    sweep.fit = counted
    return calls


@contextlib.contextmanager
def _patched():
    """Undo the replacements listed in the yielded list on exit."""
    undo = []
    try:
        yield undo
    finally:
        for owner, name, value in reversed(undo):
            setattr(owner, name, value)


# --- 1. Sweeps --------------------------------------------------------------------------------------

def two_sweeps_one_folder():
    with tempfile.TemporaryDirectory() as tmp, _patched() as undo:
        tasks = _tasks(3)
        _sweep(dict(list(tasks.items())[:2]), checkpoint=tmp)
        calls = _count_fits(undo)
        try:
            _sweep(dict(list(tasks.items())[1:]), checkpoint=tmp)
        except (ValueError, TypeError, OSError) as err:
            return f"{type(err).__name__} after {len(calls)} fits: {str(err)[:110]}"
        return f"ran {len(calls)} fits"


def _killed_once(marker, fn, *args):
    """SIGKILL this worker the first time (leaving ``marker``), as the OOM killer would."""
    if not Path(marker).exists():
        Path(marker).write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(*args)


class _PoolKillingOne(concurrent.futures.ProcessPoolExecutor):
    def __init__(self, marker, victim, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker, self.victim = str(marker), victim

    def submit(self, fn, /, *args, **kwargs):
        if args and args[0] == self.victim:
            return super().submit(_killed_once, self.marker, fn, *args)
        return super().submit(fn, *args, **kwargs)


def killed_pool_worker():
    with tempfile.TemporaryDirectory() as tmp:
        tasks = _tasks(4)
        marker = Path(tmp) / "killed"
        context = multiprocessing.get_context("spawn")
        with _PoolKillingOne(marker, "a=1", 2, mp_context=context) as pool, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "the executor broke": reported below
            result = _sweep(tasks, executor=pool, checkpoint=Path(tmp) / "ck")
        rows = len(list((Path(tmp) / "ck").glob("fit-*.json")))
        return (f"worker killed: {marker.exists()}; {len(result.table)} of {len(tasks)} rows, "
                f"{len(result.failures)} failures, {rows} rows on disk")


def unwritable_checkpoint_folder():
    """A read-only folder, simulated (this may run as root, who may write anywhere)."""
    with tempfile.TemporaryDirectory() as tmp, _patched() as undo:
        folder = Path(tmp) / "read-only"
        folder.mkdir()
        original = os.open

        def read_only(path, *args, **kwargs):
            if str(path).startswith(str(folder)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return original(path, *args, **kwargs)

        undo.append((os, "open", original))
        os.open = read_only
        calls = _count_fits(undo)
        try:
            _sweep(_tasks(2), checkpoint=folder)
        except OSError as err:
            return f"{type(err).__name__} after {len(calls)} fits: {str(err)[:110]}"
        return f"ran {len(calls)} fits"


def loo_error_after_a_fit():
    import deeplinear.sweep as sweep

    with _patched() as undo:
        def broken_loo(result):
            raise ValueError("the ArviZ call failed")

        undo.append((sweep, "loo", sweep.loo))
        sweep.loo = broken_loo
        calls = _count_fits(undo)
        result = _sweep(_tasks(1))
        row = result.table.iloc[0]
        return (f"{len(calls)} fit, {len(result.failures)} failures; row kept, errors column: "
                f"{row['errors']!r}, E[Q01] finite: {bool(np.isfinite(row['E[Q01]']))}")


def streamed_data_sweep():
    import deeplinear as dl

    with _patched() as undo:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(8, 3))
        Y = X @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(8, 2))
        streamed = dl.RegressionData.from_chunks(dl.ArrayChunks(X, Y, chunk_rows=4))
        calls = _count_fits(undo)
        result = _sweep({"streamed": (streamed, dl.ModelSpec(dl.ProportionalLimitPrior(1.0, 2, num_steps=4),
                                                             noise_variance=0.1))})
        return (f"{len(calls)} fit, {len(result.table)} row; errors column: "
                f"{result.table.iloc[0]['errors'][:90]!r}")


def damaged_checkpoint_files():
    with tempfile.TemporaryDirectory() as tmp, _patched() as undo:
        tasks = _tasks(3)
        _sweep(tasks, checkpoint=tmp, keep_datatrees=True)
        rows, trees = sorted(Path(tmp).glob("fit-*.json")), sorted(Path(tmp).glob("fit-*.nc"))
        rows[0].write_text(rows[0].read_text()[:40])
        trees[1].write_bytes(b"\x89HDF\r\n garbage")
        rows[2].unlink()
        calls = _count_fits(undo)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = _sweep(tasks, checkpoint=tmp, keep_datatrees=True)
        damaged = [str(w.message) for w in caught if "damaged" in str(w.message)]
        aside = sorted(p.name for p in Path(tmp).glob("*.damaged"))
        return (f"{len(damaged)} warnings naming the files, set aside {aside}; {len(calls)} refits, "
                f"{len(again.table)} rows; first: {damaged[0][:80] if damaged else ''}")


# --- 2. Honest estimates ----------------------------------------------------------------------------

def _warned(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = call()
    import deeplinear as dl

    notes = sorted({f"{w.category.__name__}: {str(w.message)[:90]}" for w in caught
                    if issubclass(w.category, (dl.PrecisionWarning, dl.ConvergenceWarning))})
    return value, notes


def float32_tiny_noise_evidence():
    import deeplinear as dl
    from deeplinear.evidence import log_evidence

    estimate, notes = _warned(lambda: log_evidence(_data(), dl.FiniteWidthPrior((4, 4), 2), noise_variance=1e-9,
                                                   num_particles=16, method="prior"))
    return f"log evidence {estimate.log_evidence:.3g}, SE {estimate.standard_error}; warns {'; '.join(notes)}"


def capped_schedule():
    import deeplinear as dl
    import deeplinear.evidence as evidence

    with _patched() as undo:
        undo.append((evidence, "MAX_TEMPERATURES", evidence.MAX_TEMPERATURES))
        evidence.MAX_TEMPERATURES = 64  # the check at a size that runs in seconds (the real cap: 20,000)
        estimate, notes = _warned(lambda: evidence.log_evidence(
            _data(1e3), dl.ProportionalLimitPrior(1.0, 2), noise_variance=1.0, num_particles=16,
            pilot_particles=16))
    return f"{estimate.num_temperatures} temperatures (cap lowered to 64 here); warns {'; '.join(notes)}"


def learned_gram_not_psd():
    import deeplinear as dl

    return dl.RegressionData.learned_gram(-np.eye(4), np.ones((4, 2)))


def near_singular_noise_correlation():
    import deeplinear as dl

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4))
    Y = X @ rng.normal(size=(4, 1)) + 1e-4 * rng.normal(size=(20, 2))
    near = 1 - 1e-7
    _, notes = _warned(lambda: dl.fit(dl.RegressionData.linear(X, Y), dl.NNGPPrior(2), noise_model="full",
                                      noise_variance=(1.0, 1.0), noise_correlation=((1.0, near), (near, 1.0))))
    return f"warns {'; '.join(notes)}" if notes else "no warning"


# --- 3. The custom-model contract -------------------------------------------------------------------

def _custom(kind):
    import numpyro
    import numpyro.distributions as dist

    import deeplinear as dl

    prior = dl.FiniteWidthPrior((3,), 2)

    def model(data):
        if kind == "discrete":
            numpyro.sample("which", dist.Categorical(probs=np.array([0.5, 0.5])))
        if kind == "nan":
            numpyro.sample("broken", dist.Normal(0.0, 1.0))
            numpyro.factor("nan_term", np.nan)
        lam = numpyro.sample("lambda_star", dist.LogNormal(0.0, 1.0))
        numpyro.deterministic("noise_variance", 0.5)
        if kind == "root":
            vbar = prior.numpyro_vbar(prefix="net_")
            q = numpyro.deterministic("Q", vbar @ vbar.T)
            likelihood = dl.KroneckerNormal(q, lam, 0.5, data, root=2.0 * vbar, labels_are_data=True)
        else:
            likelihood = dl.KroneckerNormal(dl.numpyro_q(prior), lam, 0.5, data, labels_are_data=True)
        numpyro.sample("Y", likelihood, obs=data.labels)

    return lambda: dl.fit(_data(), model=model, num_warmup=1, num_samples=1, progress_bar=False)


# --- 4. Readers -------------------------------------------------------------------------------------

def _cli(argv, files):
    from deeplinear.app.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        cwd = os.getcwd()
        os.chdir(tmp)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        finally:
            os.chdir(cwd)
        lines = err.getvalue().strip().splitlines()
        return f"exit {code}: {lines[-1][:140] if lines else '(no message)'}"


FAST = ["--prior", "nngp", "--noise", "0.5", "--samples", "2", "--chains", "1"]


def trailing_comma_csv():
    return _cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1", *FAST],
                {"train.csv": "a,b,y1\n1,2,3,\n4,5,6,\n7,8,9,\n1,0,2,\n"})


def wide_csv():
    """10 rows x 100,000 columns, --inputs naming 99,998 of them: the time to a fitted posterior."""
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(99_998)] + ["y1", "y2"]
    body = "\n".join(",".join(f"{v:.3f}" for v in row) for row in rng.normal(size=(10, len(names))))
    started = time.perf_counter()
    out = _cli(["fit", "--data", "train.csv", "--inputs", ",".join(names[:-2]), "--outputs", "y1,y2", *FAST],
               {"train.csv": ",".join(names) + "\n" + body + "\n"})
    return f"{out}; {time.perf_counter() - started:.1f} s in all"


def _dask_frame(**extra):
    import dask.dataframe as dd
    import pandas as pd

    rng = np.random.default_rng(3)
    table = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "y"]).assign(row=np.arange(40), **extra)
    return dd.from_pandas(table, npartitions=4)


def dask_bare_string():
    from deeplinear.streaming import LinearStatistics

    frame = _dask_frame()
    return LinearStatistics.from_dask_dataframe(frame.rename(columns={"a": "abc"}), "abc", ["y"])


def dask_empty_partition():
    import dask

    from deeplinear.streaming import LinearStatistics

    frame = _dask_frame()
    with dask.config.set(scheduler="synchronous"):
        stats = LinearStatistics.from_dask_dataframe(frame[frame["row"] >= 20], ["a", "b"], ["y"])
    return f"read {stats.num_rows} rows (the first two partitions are empty)"


def dask_string_column():
    import dask

    from deeplinear.streaming import LinearStatistics

    with dask.config.set(scheduler="synchronous"):
        return LinearStatistics.from_dask_dataframe(_dask_frame(site=["north", "south"] * 20), ["a", "site"], ["y"])


# --- 5. Optional speed-ups never block --------------------------------------------------------------

def _python(code, env_changes, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPLINEAR_COMPILATION", "JAX_COMPILATION"))}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)


def read_only_home():
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.write_text("not a folder")  # its .cache cannot be made, as on a read-only file system
        out = _python("import sys; from deeplinear.app.cli import main; sys.exit(main(sys.argv[1:]))",
                      {"HOME": str(home), "XDG_CACHE_HOME": ""}, "simulate", "--prior-samples", "200", "--output",
                      str(Path(tmp) / "figs"))
        warned = [line.split("CacheWarning: ")[-1] for line in out.stderr.splitlines() if "Warning" in line]
        return f"exit {out.returncode}; {len(warned)} warning: {warned[0][:100] if warned else ''}"


def unwritable_cache_folder():
    import deeplinear as dl

    with tempfile.TemporaryDirectory() as tmp:
        blocker = Path(tmp) / "a-file"
        blocker.write_text("not a folder")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folder = dl.enable_compilation_cache(blocker / "cache")
        return f"returned {folder}; {len(caught)} warning: {caught[0].category.__name__}: {str(caught[0].message)[:90]}"


CACHE_RUN = ("import warnings, sys\nwarnings.simplefilter('always')\nimport jax, jax.numpy as jnp, deeplinear as dl\n"
             "dl.enable_compilation_cache(sys.argv[1], min_compile_time_secs=0.0)\n"
             "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()\n")


def corrupt_cache_entries():
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cache"
        _python(CACHE_RUN, {}, str(folder))
        long_ago = time.time() - 3600
        entries = sorted(folder.glob("*-cache"))
        for entry in entries:
            entry.write_bytes(b"garbage")
            os.utime(entry, (long_ago, long_ago))
        (folder / ".deeplinear-verified").unlink()
        second = _python(CACHE_RUN, {}, str(folder)).stderr
        for entry in folder.glob("*-cache"):
            os.utime(entry, (long_ago, long_ago))
        os.utime(folder / ".deeplinear-verified", (long_ago - 1, long_ago - 1))
        third = _python(CACHE_RUN, {}, str(folder)).stderr
        jax_warnings = [second.count("Error reading persistent compilation cache"),
                        third.count("Error reading persistent compilation cache")]
        removed = [line.split("CacheWarning: ")[-1][:60] for line in second.splitlines() if "CacheWarning" in line]
        return (f"{len(entries)} damaged entries; next run: {removed}, JAX warnings {jax_warnings[0]}; "
                f"the run after: {jax_warnings[1]} JAX warnings, {third.count('Warning')} warnings in all")


def relative_xdg():
    from deeplinear.cache import default_cache_directory

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = "relative/cache"
    try:
        return f"cache folder {default_cache_directory()} (absolute: {default_cache_directory().is_absolute()})"
    finally:
        if old is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = old


# --- 6. Files keep the user's umask -----------------------------------------------------------------

def save_fit_mode():
    import deeplinear as dl

    fit = dl.fit(_data(), dl.NNGPPrior(2), noise_variance=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        old = os.umask(0o022)
        try:
            path = dl.save_fit(fit, Path(tmp) / "fit.nc")
        finally:
            os.umask(old)
        return f"umask 022: mode {oct(path.stat().st_mode & 0o777)}"


CASES = [
    ("28.1", "two different sweeps on one checkpoint folder", "second returns normally; its rows never written",
     two_sweeps_one_folder),
    ("28.1", "a pool worker SIGKILLed mid-sweep (4 fits, 2 workers)", "BrokenProcessPool aborts the sweep; "
     "finished fits lost", killed_pool_worker),
    ("28.1", "read-only checkpoint folder", "every fit computed, then refitted, then in table and `failures`",
     unwritable_checkpoint_folder),
    ("28.1", "LOO raises an ArviZ error after a fit", "refitted, then listed as failed; row gone",
     loo_error_after_a_fit),
    ("28.1", "sweep over streamed data (`from_chunks`)", "every fit runs twice, then discarded; empty table",
     streamed_data_sweep),
    ("28.1", "truncated row, garbage `.nc`, `.nc` without its row", "raw JSONDecodeError / h5py OSError; the "
     "orphan refitted on every rerun", damaged_checkpoint_files),
    ("28.2", "float32 `log_evidence` with `noise_variance=1e-9`", "SE 0, ESS n; 1.3e6 nats off float64",
     float32_tiny_noise_evidence),
    ("28.2", "AIS on labels in raw units (schedule capped)", "silently capped; SE under a nat, keys 6e6 nats apart",
     capped_schedule),
    ("28.2", "`learned_gram(-I, Y)`", "clipped to the zero kernel", learned_gram_not_psd),
    ("28.2", "full noise, correlation 1 - 1e-7, float32", "held-out log density 37% off, no warning",
     near_singular_noise_correlation),
    ("28.3", "custom model: `root` not a factor of its `Q`", "accepted; NUTS and predict use different models",
     _custom("root")),
    ("28.3", "custom model with a discrete site", "ImportError asking for funsor", _custom("discrete")),
    ("28.3", "custom model with a NaN log density", "\"Cannot find valid initial parameters\"", _custom("nan")),
    ("28.4", "CSV rows with a field more than the header", "every column shifted, exit 0", trailing_comma_csv),
    ("28.4", "10 x 100,000 CSV, `--inputs` naming 99,998 columns", "about 10 minutes in a quadratic lookup, "
     "no output", wide_csv),
    ("28.4", "`from_dask_dataframe(inputs=\"abc\")`", "read as the columns a, b, c", dask_bare_string),
    ("28.4", "Dask frame with empty partitions (filtered)", "refused", dask_empty_partition),
    ("28.4", "Dask frame with a string column", "pandas' \"could not convert string to float\"", dask_string_column),
    ("28.5", "command line under a read-only `$HOME`", "every command stops: Read-only file system", read_only_home),
    ("28.5", "a cache folder that cannot be made or written", "23 JAX warnings per fit", unwritable_cache_folder),
    ("28.5", "damaged entries in JAX's cache", "never replaced: every run warns and compiles again",
     corrupt_cache_entries),
    ("28.5", "relative `$XDG_CACHE_HOME`", "used (a different folder in every working directory)", relative_xdg),
    ("28.6", "`save_fit` under umask 022", "mode 0600 (mkstemp's)", save_fit_mode),
]
