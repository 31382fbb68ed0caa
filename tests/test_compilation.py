"""Compile once per structure (issue 13): repeating a computation with new values of the same
shapes triggers no new XLA compilation (counted with ``jax.monitoring``, never timed).

The suite runs with a persistent compilation cache shared by its workers (``conftest.py``), where
a program another test compiled is loaded rather than compiled; so what is counted is the
lowering to MLIR that precedes every compilation *and* every load from that cache: a program
built again counts either way."""

import contextlib
import os
import time

import jax
import numpy as np

import deeplinear as dl

COMPILE_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # each program built, compiled or loaded
# Each executable made, compiled or loaded from the persistent cache; unlike a lowering, not an export
# (the kept traces of ``deeplinear.cache`` lower a new program twice: to export it, then to call it).
EXECUTABLE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations(event=COMPILE_EVENT):
    count = [0]

    def listener(name, duration, **kwargs):
        if name == event:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_prior_sampling_compiles_once_per_structure():
    X = np.random.default_rng(0).normal(size=(5, 3))
    finite = dl.FiniteWidthPrior((4, 5), 2)
    limit = dl.ProportionalLimitPrior(0.5, 2, num_steps=8)
    for prior in (finite, limit):  # first calls compile
        prior.sample_vbar(0, 16)
        prior.sample_q(0, 16)
        prior.sample_outputs(0, X, 16)
    with count_compilations() as count:
        finite.sample_q(1, 16)
        finite.sample_outputs(2, X * 2.0, 16, lambda_star=3.0)
        dl.ProportionalLimitPrior(1.7, 2, num_steps=8).sample_q(3, 16)  # a new ratio is data, not code
        dl.FiniteWidthPrior((4, 5), 2).sample_vbar(4, 16)  # an equal prior selects the same program
    assert count[0] == 0


def test_evidence_programs_do_not_depend_on_particle_or_temperature_numbers():
    """The start program draws a fixed batch of particles, so the pilot and the main run share it
    whatever their particle numbers; the annealing program runs a fixed window of temperatures, so a
    new number of temperatures (or a new ratio) compiles nothing."""
    from deeplinear import evidence

    rng = np.random.default_rng(0)
    data = dl.RegressionData.linear(rng.normal(size=(8, 3)), rng.normal(size=(8, 2)))
    settings = dict(noise_variance=0.5, pilot_particles=100, num_particles=300)
    programs = evidence._start_batch._cache_size()
    evidence.log_evidence(data, dl.ProportionalLimitPrior(0.5, 2, num_steps=8), num_temperatures=20, **settings)
    assert evidence._start_batch._cache_size() == programs + 1
    with count_compilations() as count:
        est = evidence.log_evidence(data, dl.ProportionalLimitPrior(1.5, 2, num_steps=8), num_temperatures=70,
                                    **settings)
    assert count[0] == 0
    assert est.num_particles == 300 and est.num_temperatures == 70 and np.isfinite(est.log_evidence)


def test_the_pilot_and_the_main_run_share_one_annealing_program_for_any_particle_number():
    """The pilot's moves run through the annealing program, and both run their particles in blocks of
    ``PARTICLE_BATCH``: with at least that many particles, one move program serves the pilot and the
    main run, and other particle numbers compile nothing (before: one move program for the pilot's
    number and one annealing program per number of particles)."""
    from deeplinear import evidence

    rng = np.random.default_rng(0)
    data = dl.RegressionData.linear(rng.normal(size=(8, 3)), rng.normal(size=(8, 2)))
    prior = dl.ProportionalLimitPrior(0.5, 2, num_steps=6)
    settings = dict(noise_variance=0.5, num_temperatures=16)
    programs = evidence._anneal._cache_size()
    evidence.log_evidence(data, prior, num_particles=300, **settings)  # default pilot: PARTICLE_BATCH particles
    assert evidence._anneal._cache_size() == programs + 1
    with count_compilations() as count:
        est = evidence.log_evidence(data, prior, num_particles=700, pilot_particles=2 * evidence.PARTICLE_BATCH,
                                    **settings)
    assert count[0] == 0
    assert est.num_particles == 700 and np.isfinite(est.log_evidence) and 0 < est.acceptance_rate <= 1
    # fewer particles than a block: the pilot moves in blocks of the main run's number (before: two programs)
    programs = evidence._anneal._cache_size()
    small = evidence.log_evidence(data, dl.ProportionalLimitPrior(0.5, 2, num_steps=7), num_particles=64, **settings)
    assert evidence._anneal._cache_size() == programs + 1
    assert small.num_particles == 64 and np.isfinite(small.log_evidence)


def test_an_integer_seed_becomes_jaxs_raw_key_on_the_host():
    """``raw_key(seed)`` is built with NumPy (no program) and holds what JAX's own key does."""
    from deeplinear._validation import raw_key

    for seed in (0, 5, 2**31, 2**32 - 1):
        with count_compilations() as count:
            key = raw_key(seed)
        assert count[0] == 0 and isinstance(key, np.ndarray)
        np.testing.assert_array_equal(key, jax.random.key_data(jax.random.key(seed)))
    typed = jax.random.key(7)
    np.testing.assert_array_equal(raw_key(typed), jax.random.key_data(typed))


def test_predictions_compile_once_per_shape():
    rng = np.random.default_rng(1)

    def mixture(seed):
        r = np.random.default_rng(seed)
        data = dl.RegressionData.linear(r.normal(size=(9, 3)), r.normal(size=(9, 2)))
        A = r.normal(size=(6, 2, 2))
        q = A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(2)
        return dl.PredictiveMixture(q, 1.0, 0.3, data, data.prediction_kernel(r.normal(size=(4, 3)))), r

    pm, r = mixture(0)
    pm.covariance()
    pm.log_predictive_density(rng.normal(size=(4, 2)))
    with count_compilations() as count:
        pm2, _ = mixture(1)  # new data, draws and test inputs of the same shapes
        pm2.covariance()
        pm2.log_predictive_density(rng.normal(size=(4, 2)))
    assert count[0] == 0


CACHE_SETTINGS = ("DEEPLINEAR_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")


def _environment_without_cache() -> dict:
    """This process's environment without the suite's shared compilation cache (conftest.py)."""
    return {k: v for k, v in os.environ.items() if k not in CACHE_SETTINGS}


def test_persistent_cache_only_when_asked(tmp_path):
    """Importing deeplinear leaves JAX's cache setting alone; enable_compilation_cache stores
    compiled programs in the folder given (a fresh process, since it is a process-wide setting)."""
    import subprocess
    import sys

    code = (
        "import jax, jax.numpy as jnp, pathlib, sys\n"
        "before = jax.config.jax_compilation_cache_dir\n"
        "assert before is None, before\n"
        "import deeplinear as dl\n"
        "assert jax.config.jax_compilation_cache_dir == before, 'import changed the cache setting'\n"
        "folder = dl.enable_compilation_cache(sys.argv[1], min_compile_time_secs=0.0)\n"
        "assert jax.config.jax_compilation_cache_dir == str(folder)\n"
        "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()\n"
        "print(len([p for p in pathlib.Path(sys.argv[1]).rglob('*') if p.is_file()]))\n"
    )
    env = _environment_without_cache()  # the suite's shared cache: not here
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 0


def test_bad_cache_arguments():
    import pytest

    with pytest.raises(TypeError, match="directory"):
        dl.enable_compilation_cache(3)
    with pytest.raises(ValueError, match="min_compile_time_secs"):
        dl.enable_compilation_cache(None, min_compile_time_secs=-1.0)


def test_a_cache_folder_that_cannot_be_made_leaves_the_cache_off_with_one_warning(tmp_path, monkeypatch):
    """Issue 28: the cache is a speed-up. A folder that cannot be made or written turns it off
    with one CacheWarning naming the folder and the switch, and JAX's setting stays as it was."""
    import warnings

    import jax

    from deeplinear.cache import CacheWarning

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = jax.config.jax_compilation_cache_dir
    for target in (blocker / "cache", blocker):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert dl.enable_compilation_cache(target) is None
        assert [w.category for w in caught] == [CacheWarning], [str(w.message) for w in caught]
        message = str(caught[0].message)
        assert str(blocker) in message and "DEEPLINEAR_COMPILATION_CACHE=off" in message
        assert jax.config.jax_compilation_cache_dir == before


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    """The XDG Base Directory specification: a relative $XDG_CACHE_HOME is invalid and ignored."""
    import sys

    import pytest

    from deeplinear.cache import default_cache_directory

    if sys.platform in ("win32", "darwin"):
        pytest.skip("XDG_CACHE_HOME is read on Linux and other Unix systems")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert default_cache_directory() == tmp_path / ".cache" / "deeplinear" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_directory() == tmp_path / "xdg" / "deeplinear" / "jax"


def test_the_command_line_runs_under_a_read_only_home(tmp_path, monkeypatch, capsys):
    """A home whose cache folder cannot be made (here: $HOME is a file) stops nothing: the
    command runs without the cache, with one warning."""
    import warnings

    from deeplinear.app.cli import main
    from deeplinear.cache import CacheWarning

    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("DEEPLINEAR_COMPILATION_CACHE")  # the suite's shared cache: not here
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["simulate", "--prior-samples", "200", "--output", "figs"])
    assert code == 0, capsys.readouterr().err
    assert [w.category for w in caught if issubclass(w.category, CacheWarning)] == [CacheWarning]
    assert (tmp_path / "figs" / "lognormal_convergence.png").stat().st_size > 0


def test_batched_map_puts_the_function_in_the_program_once():
    """lax.map with a batch that does not divide the length adds a vmapped copy of the function
    for the rest; batched_map pads instead (same values, the padding's results dropped)."""
    from deeplinear._linalg import batched_map

    xs = (np.linspace(0.1, 2.0, 10, dtype=np.float32), None)

    def f(a):
        return jax.numpy.sin(a[0]) * 2.0

    def copies(fn):
        return jax.jit(fn).lower(xs).as_text().count("stablehlo.sine")

    assert copies(lambda x: jax.lax.map(f, x, batch_size=4)) == 2  # what batched_map avoids
    assert copies(lambda x: batched_map(f, x, 4)) == 1
    for batch in (1, 3, 4, 10, 64):
        np.testing.assert_allclose(np.asarray(batched_map(f, xs, batch)), 2.0 * np.sin(xs[0]), rtol=1e-6)


@jax.tree_util.register_pytree_node_class
class _LocalScale:
    """A pytree class of this test module: its code is not in a trace key, so it is never kept."""

    def __init__(self, value):
        self.value = value

    def tree_flatten(self):
        return (self.value,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def _traced_function(calls):
    """A fresh ``reuse_traces`` function (a new process's view: nothing in memory) that counts
    how often its body runs in Python, i.e. how often it is traced."""
    from deeplinear.cache import reuse_traces

    def scaled_power(x, scale=None, *, power):
        calls.append(power)
        s = 1.0 if scale is None else (scale.value if isinstance(scale, _LocalScale) else scale)
        return {"y": s * x**power, "total": jax.numpy.sum(x)}

    return reuse_traces(scaled_power, static_argnames=("power",))


def test_traced_programs_are_kept_and_reused(tmp_path, monkeypatch):
    """With the compilation cache on, a traced program is stored beside it and a later process (a
    fresh function here) loads it instead of tracing; its results are the plain jit's. A new static
    value, shape or precision is a new program; an unreadable entry is replaced; a folder that
    cannot be written, and a pytree class from outside the library, fall back to plain jit."""
    import pytest

    from deeplinear import cache

    folder = tmp_path / "traces"
    monkeypatch.setattr(cache, "_trace_folder", lambda: folder)
    x = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)
    expected = {"y": 2.0 * x**3, "total": x.sum()}

    def check(out, want=expected):
        assert set(out) == {"y", "total"}
        np.testing.assert_allclose(np.asarray(out["y"]), want["y"], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(out["total"]), want["total"], rtol=1e-6)

    calls = []
    check(_traced_function(calls)(x, 2.0, power=3))
    assert calls == [3] and len(list(folder.iterdir())) == 1
    check(_traced_function(calls)(x, scale=2.0, power=3))  # a "new process": loaded, not traced
    assert calls == [3]
    f = _traced_function(calls)
    check(f(x, 2.0, power=3))
    assert calls == [3]
    f(x, 2.0, power=2)  # a new static value
    f(x[:1], 2.0, power=3)  # a new shape
    with jax.enable_x64(True):
        out = f(x.astype(np.float64), 2.0, power=3)  # a new precision
        assert out["y"].dtype == np.float64
    assert calls == [3, 2, 3, 3] and len(list(folder.iterdir())) == 4

    for entry in folder.iterdir():  # truncated entries: traced again and replaced
        entry.write_bytes(entry.read_bytes()[:50])
    check(_traced_function(calls)(x, 2.0, power=3))
    assert calls[-1] == 3 and len(calls) == 5
    check(_traced_function(calls)(x, 2.0, power=3))
    assert len(calls) == 5  # the replaced entry loads

    local = _traced_function(calls)
    check(local(x, _LocalScale(2.0), power=3))
    check(local(x, _LocalScale(2.0), power=3))
    check(_traced_function(calls)(x, _LocalScale(2.0), power=3))
    assert len(calls) == 7  # plain jit: traced once per function, nothing kept for the local class
    assert len(list(folder.iterdir())) == 4

    unwritable = tmp_path / "a-file"
    unwritable.write_text("not a folder")
    monkeypatch.setattr(cache, "_trace_folder", lambda: unwritable / "traces")
    check(_traced_function(calls)(x, 2.0, power=3))
    check(_traced_function(calls)(x, 2.0, power=3))
    assert len(calls) == 9  # nothing stored, nothing raised
    with pytest.raises(TypeError):
        _traced_function(calls)(x, 2.0)  # the signature is jit's: power is required


def test_a_warm_fit_traces_nothing(tmp_path):
    """A fit in a new process with the compilation cache of an earlier one builds no NUTS kernel
    in Python and traces no function but the calls of the loaded programs (the sampler's and the
    default groups' programs are loaded, not traced; the default groups' was traced before), and
    draws exactly what a fit without any cache draws (the first process fits without a cache, then
    with one, which it fills)."""
    import subprocess
    import sys

    code = (
        "import sys, warnings, numpy as np, jax.monitoring\n"
        "import deeplinear as dl, deeplinear.sampler as sampler\n"
        "warnings.simplefilter('ignore')\n"
        "traced = []\n"
        "def listener(event, secs, **kw):\n"
        "    if event == '/jax/core/compile/jaxpr_trace_duration':\n"
        "        traced.append(kw.get('fun_name'))\n"
        "jax.monitoring.register_event_duration_secs_listener(listener)\n"
        "kernels = []\n"
        "original = sampler.nuts_kernel\n"
        "sampler.nuts_kernel = lambda *a, **k: kernels.append(1) or original(*a, **k)\n"
        "r = np.random.default_rng(0)\n"
        "data = dl.RegressionData.linear(r.normal(size=(12, 3)), r.normal(size=(12, 2)))\n"
        "for cache in sys.argv[1:]:\n"
        "    if cache != 'off':\n"
        "        dl.enable_compilation_cache(cache)\n"
        "    kernels.clear(), traced.clear()\n"
        "    post = dl.fit(data, dl.ProportionalLimitPrior(1.0, 2, num_steps=8), noise_variance=0.5,\n"
        "                  num_warmup=30, num_samples=20, num_chains=2, key=3, progress_bar=False)\n"
        "    built = len(kernels) + sum(name != 'call' for name in traced)\n"
        "    print(built, np.asarray(post.draws('Q')).astype(np.float64).sum().hex(),\n"
        "          np.asarray(post.datatree['log_likelihood']['Y']).astype(np.float64).sum().hex())\n"
    )
    env = _environment_without_cache()

    def run(*caches):
        out = subprocess.run([sys.executable, "-c", code, *caches], capture_output=True, text=True, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return [(int(line.split()[0]), line.split()[1:]) for line in out.stdout.strip().splitlines()]

    folder = str(tmp_path / "cache")
    (kernels_off, off), (kernels_cold, cold) = run("off", folder)
    ((kernels_warm, warm),) = run(folder)
    assert kernels_off > 0 and kernels_cold > 0  # the counter sees traces
    assert kernels_warm == 0
    assert cold == warm == off


def _quick_fit(seed, prior, progress_bar=False, **kwargs):
    r = np.random.default_rng(seed)
    data = dl.RegressionData.linear(r.normal(size=(12, 3)), r.normal(size=(12, 2)))
    return dl.fit(data, prior, num_warmup=30, num_samples=20, num_chains=2, key=seed, progress_bar=progress_bar,
                  **kwargs)


def test_a_fit_on_other_rows_of_the_same_rank_compiles_no_sampler():
    """The sampler sees the data's R-sized summaries and P - R as a number, not the rows: a fit on
    fewer or more rows of the same N0 (a refit without some inputs, another data set) builds no
    program, and with its LOO terms only theirs (one executable: they are per row; counted as
    executables, since an exported program is lowered twice)."""
    import warnings

    import numpyro.distributions as dist

    warnings.simplefilter("ignore")  # short chains
    r = np.random.default_rng(5)
    X, Y = r.normal(size=(20, 3)), r.normal(size=(20, 2))
    spec = dl.ModelSpec(dl.ProportionalLimitPrior(1.0, 2, num_steps=8), noise_variance=dist.HalfNormal(1.0))

    def quick(rows, **kwargs):
        data = dl.RegressionData.linear(X[:rows], Y[:rows])
        with count_compilations(EXECUTABLE_EVENT) as count:
            dl.fit(data, spec, num_warmup=30, num_samples=20, num_chains=2, progress_bar=False, **kwargs)
        return count[0]

    quick(20)  # compiles the sampler (unless a test before it in this process fitted this structure)
    assert quick(17, log_likelihood=False) == 0
    assert quick(15) <= 1


def test_a_first_fit_builds_four_programs_and_other_numbers_of_draws_none():
    """A model structure's first fit builds the sampler's three programs (initial states, the chain's
    advance, the constrained draws) and the default groups' one (LOO terms and draws), nothing eager:
    the hyperpriors' parameters are converted on the host and the draws' keys derived inside the
    program that uses them (the old code built 8: two conversions, a fold_in and a split). The
    programs take the draws in blocks of a fixed size, so a fit with other numbers of draws and
    chains builds none (the old code built all four again)."""
    import warnings

    import numpyro.distributions as dist

    warnings.simplefilter("ignore")  # short chains
    r = np.random.default_rng(6)
    data = dl.RegressionData.linear(r.normal(size=(14, 3)), r.normal(size=(14, 2)))
    prior = dl.ProportionalLimitPrior(1.0, 2, num_steps=11)  # a structure no other test fits
    hyperpriors = dict(ratio=dist.LogNormal(0.0, 1.0), noise_variance=dist.HalfNormal(1.0))
    with count_compilations(EXECUTABLE_EVENT) as count:
        dl.fit(data, prior, **hyperpriors, num_warmup=30, num_samples=20, num_chains=2, progress_bar=False)
    assert count[0] == 4
    with count_compilations(EXECUTABLE_EVENT) as count:
        post = dl.fit(data, prior, **hyperpriors, num_warmup=30, num_samples=130, num_chains=3, progress_bar=False)
    assert count[0] == 0
    assert post.datatree["log_likelihood"]["Y"].shape == (3, 130, 14)
    assert np.all(post.datatree["sample_stats"]["n_steps"].values > 0)  # every draw was written


def test_repeat_fit_compare_and_sbc_compile_nothing():
    """A second round of the same structures -- new labels, new inputs, a new ratio, new fixed and
    prior hyperparameter values, a progress bar -- reuses every compiled program: the fits (LOO
    terms, DataTree and diagnostics included), compare_models with predictions, and SBC."""
    import warnings

    import numpyro.distributions as dist

    warnings.simplefilter("ignore")  # short chains: convergence warnings are expected here

    def round_(seed, ratio, lam, scale, progress_bar):
        limit = _quick_fit(seed, dl.ProportionalLimitPrior(ratio, 2, num_steps=8), lambda_star=lam,
                           noise_variance=dist.HalfNormal(scale), progress_bar=progress_bar)
        nngp = _quick_fit(seed, dl.NNGPPrior(2), noise_variance=scale)
        limit.diagnostics()
        r = np.random.default_rng(seed)
        dl.compare_models({"limit": limit, "nngp": nngp}, r.normal(size=(5, 3)), r.normal(size=(5, 2)))
        sbc = dl.simulation_based_calibration(limit.data, limit.spec, num_simulations=3, num_warmup=10,
                                              num_samples=8, thin=4, key=seed, progress_bar=progress_bar)
        return limit, sbc

    round_(0, 0.5, 2.0, 1.0, False)
    with count_compilations() as count:
        res, sbc = round_(1, 1.5, 0.7, 3.0, True)
    assert count[0] == 0
    assert res.draws("Q").shape == (40, 2, 2) and sbc.num_draws == 2


SAME_PROGRAM_TOLERANCE = 1e-5  # float32: vectorized and parallel run the same batched program
# one-chain vs batched programs in float64: their rounding (1e-16) grows through 60 NUTS transitions and the
# warmup's step-size adaptation to about 2e-9 in this run; a chain drawn with another key differs by O(1)
SAME_CHAIN_TOLERANCE_FLOAT64 = 1e-7


def test_chain_methods_give_the_same_draws():
    """Each chain has its own key, so vectorized, sequential and parallel (two host devices, in a
    fresh process: the device count is fixed when JAX starts) runs draw the same chains.

    Sequential runs use the one-chain program, vectorized and parallel runs the batched one; the
    two round differently (batched products), and in float32 a chain's trajectory can part after
    such a difference. So the chains are compared in float64, where every method must agree to
    rounding, and in float32 within the batched family, which must agree exactly as before. (The
    draws only: ``log_likelihood=False`` spares the LOO programs, which other tests cover.)"""
    import subprocess
    import sys

    code = (
        "import os\n"
        "os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'\n"
        "import warnings, jax, numpy as np, numpyro.distributions as dist\n"
        "import deeplinear as dl\n"
        "warnings.simplefilter('ignore')\n"
        "assert jax.local_device_count() == 2\n"
        "def draws(methods, x64):\n"
        "    with jax.enable_x64(x64):\n"
        "        r = np.random.default_rng(0)\n"
        "        data = dl.RegressionData.linear(r.normal(size=(12, 3)), r.normal(size=(12, 2)))\n"
        "        return {m: dl.fit(data, dl.ProportionalLimitPrior(0.5, 2, num_steps=8),\n"
        "                          noise_variance=dist.HalfNormal(1.0), num_warmup=40, num_samples=20, num_chains=2,\n"
        "                          chain_method=m, log_likelihood=False).draws('Q') for m in methods}\n"
        "def spread(q):\n"
        "    first = next(iter(q.values()))\n"
        "    return max(float(np.max(np.abs(v - first))) for v in q.values())\n"
        "print(spread(draws(('vectorized', 'parallel', 'auto'), False)),\n"
        "      spread(draws(('vectorized', 'sequential', 'parallel', 'auto'), True)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    batched32, all64 = map(float, out.stdout.strip().splitlines()[-1].split())
    assert batched32 < SAME_PROGRAM_TOLERANCE
    assert all64 < SAME_CHAIN_TOLERANCE_FLOAT64


def test_prefetch_imports_in_the_background_and_leaves_errors_to_the_caller():
    """prefetch starts a thread only for modules not yet imported; a module that cannot be
    imported does not raise in the thread (the caller's own import reports it)."""
    import json  # noqa: F401 - imported, so there is nothing to prefetch
    import sys

    from deeplinear._prefetch import prefetch

    assert prefetch(("json",)) is None
    thread = prefetch(("deeplinear_no_such_module", "json"))
    assert thread is not None and thread.daemon
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "deeplinear_no_such_module" not in sys.modules


def test_the_prefetched_modules_are_those_a_fit_builds_its_result_with():
    """In a fresh process, the modules the thread imports are the ones building a fit's result imports:
    arviz_base and arviz_stats, and dask.array, which xarray imports (Dask is installed with the test
    extra) for the first DataArray it makes. If xarray stopped doing so, the prefetch would import a
    module nobody needs: this says so."""
    import subprocess
    import sys

    from deeplinear._prefetch import RESULT_MODULES

    code = ("import sys, numpy as np, xarray\n"
            "before = set(sys.modules)\n"
            "xarray.DataArray(np.zeros(2))\n"
            "import arviz_base, arviz_stats\n"
            f"print(sorted(m for m in {RESULT_MODULES!r} if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == repr(sorted(RESULT_MODULES))


def test_damaged_cache_entries_are_replaced(tmp_path):
    """Issue 28: JAX never replaces an entry that exists, so a damaged one (a write cut short) made
    every later run warn and compile again. enable_compilation_cache removes it, with one
    CacheWarning; JAX stores it afresh, and the next run neither warns nor compiles it."""
    import subprocess
    import sys

    code = (
        "import warnings, sys\n"
        "warnings.simplefilter('always')\n"
        "import jax, jax.numpy as jnp, deeplinear as dl\n"
        "dl.enable_compilation_cache(sys.argv[1], min_compile_time_secs=0.0)\n"
        "print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8)))[0, 0]))\n"
    )
    env = _environment_without_cache()
    folder = tmp_path / "cache"

    def run():
        out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stderr

    assert "Error reading" not in run()
    entries = sorted(folder.glob("*-cache"))
    assert entries
    long_ago = time.time() - 3600  # written an hour ago: settled
    for i, entry in enumerate(entries):  # one truncated, the others garbage
        entry.write_bytes(entry.read_bytes()[:20] if i == 0 else b"garbage")
        os.utime(entry, (long_ago, long_ago))
    (folder / ".deeplinear-verified").unlink()
    first = run()
    assert first.count("CacheWarning") == 1 and f"removed {len(entries)} damaged" in first, first[-2000:]
    assert "Error reading persistent compilation cache" not in first
    for entry in folder.glob("*-cache"):
        os.utime(entry, (long_ago, long_ago))  # settled, so checked by the next run
    os.utime(folder / ".deeplinear-verified", (long_ago - 1, long_ago - 1))
    again = run()
    assert "Warning" not in again, again[-2000:]  # the fresh entries are whole: read, not removed
    assert len(list(folder.glob("*-cache"))) == len(entries)


def test_entries_being_written_are_not_judged(tmp_path):
    """An entry newer than SETTLE_SECONDS may still be being written by another process: left alone."""
    from deeplinear.cache import _replace_damaged_entries

    fresh = tmp_path / "jit_f-0123-cache"
    fresh.write_bytes(b"half writ")
    settled = tmp_path / "jit_g-4567-cache"
    settled.write_bytes(b"half writ")
    os.utime(settled, (time.time() - 3600,) * 2)
    user_file = tmp_path / "notes.txt"
    user_file.write_bytes(b"not an entry")
    os.utime(user_file, (time.time() - 3600,) * 2)
    assert _replace_damaged_entries(tmp_path) == [settled]
    assert fresh.exists() and user_file.exists() and not settled.exists()
