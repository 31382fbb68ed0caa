r"""Many fits at once: a sweep over (data, model specification) pairs, in process or on any
``concurrent.futures.Executor`` (a spawned process pool, a Dask cluster's ``client.get_executor()``).

:func:`grid` builds the pairs (every data set with every specification: ratios, widths, noise
models, ...); :func:`run_sweep` fits each with :func:`~deeplinear.fit` and returns a tidy table,
one row per fit: PSIS-LOO (:func:`~deeplinear.loo`), convergence diagnostics, the posterior mean of
every distinct entry of ``Q`` and of each inferred scalar hyperparameter, and the mean absolute
off-diagonal :math:`\operatorname{corr}(Q)`; the DataTrees only on request.

* **Reproducible whatever the scheduling**: fit ``i`` gets the key
  ``jax.random.fold_in(key, i)`` (``i`` its position in the given order), so the same sweep gives
  the same table in process, on a pool or on a cluster.
* **Tasks ship data, not programs**: arrays, the specification's JSON and a key; a worker compiles
  a model structure once (:mod:`deeplinear.sampler`) and reuses it for its later tasks.
* **Nothing finished is lost**: with ``checkpoint=FOLDER`` every result is written (atomically, never
  over an existing file) as it arrives; run the same sweep again and the finished fits are read
  back, not refitted. A file in the folder from a *different* sweep (another task, data, key or
  setting) is an error, not overwritten.
* **Failures**: a task that fails is submitted once more; one that fails twice is reported in
  :attr:`SweepResult.failures` with its inputs, and the others still finish.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deeplinear._executor import check_executor, run_with_retry
from deeplinear._files import atomic_write
from deeplinear._types import KeyLike
from deeplinear._validation import check_bool, raw_key
from deeplinear.data import check_regression_data
from deeplinear.inference import ConvergenceWarning, _validate_fit_args, fit
from deeplinear.loo import loo
from deeplinear.models import ModelSpec
from deeplinear.predictive import correlation_matrix

__all__ = ["SweepFailure", "SweepResult", "grid", "run_sweep"]

FORMAT = "deeplinear-sweep/1"


@dataclasses.dataclass(frozen=True)
class SweepFailure:
    """A fit that failed twice: its name, its index in the sweep, its inputs (the specification's
    JSON, ``P`` and ``D``) and both errors."""

    name: str
    index: int
    spec: str
    num_obs: int
    num_outputs: int
    errors: tuple[str, str]


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per finished fit, indexed by name (in the given order).
    datatrees : dict[str, xarray.DataTree]
        The fits' DataTrees, with ``keep_datatrees=True`` (else empty).
    failures : list[SweepFailure]
        Fits that failed twice (their rows are missing from ``table``).
    reused : tuple[str, ...]
        Fits read back from the checkpoint folder instead of being run.
    """

    table: object
    datatrees: dict
    failures: list
    reused: tuple


def grid(data_sets: dict, specs: dict) -> dict:
    """Every data set with every specification: ``{f"{data name} | {spec name}": (data, spec)}``,
    data sets outermost, each dict in its own order."""
    if not isinstance(data_sets, dict) or not data_sets or not isinstance(specs, dict) or not specs:
        raise TypeError("grid takes two non-empty dicts: {name: RegressionData} and {name: ModelSpec}")
    return {f"{dn} | {sn}": (d, s) for dn, d in data_sets.items() for sn, s in specs.items()}


def _checked_tasks(tasks) -> list:
    if not isinstance(tasks, dict) or not tasks:
        raise TypeError("tasks must be a non-empty dict {name: (RegressionData, ModelSpec)} (see grid)")
    out = []
    for name, pair in tasks.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"task names must be non-empty strings, got {name!r}")
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"tasks[{name!r}] must be a pair (RegressionData, ModelSpec), got {type(pair).__name__}")
        data, spec = pair
        check_regression_data(data, f"tasks[{name!r}][0]")
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"tasks[{name!r}][1] must be a ModelSpec, got {type(spec).__name__}")
        spec.check_data(data)
        try:
            spec_json = spec.to_json()
        except ValueError as err:
            raise ValueError(f"tasks[{name!r}]: a sweep ships the specification as JSON, and it cannot be written: "
                             f"{err}") from None
        out.append((name, data, spec_json))
    return out


def _fingerprint(name, data, spec_json, key_data, settings) -> str:
    """What identifies one fit of a sweep: name, specification, every array of the data, key, settings."""
    digest = hashlib.sha256()
    for part in (name, spec_json, json.dumps(settings, sort_keys=True), str(np.asarray(key_data).tolist())):
        digest.update(part.encode())
    for leaf in jax.tree_util.tree_leaves(data):
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(str((arr.dtype, arr.shape)).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _compact(result, spec: ModelSpec) -> dict:
    """The row of a fit: diagnostics, LOO, posterior means (JSON-ready numbers)."""
    diag = result.diagnostics()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        estimate = loo(result)
    q = result.draws("Q")
    D = q.shape[-1]
    row = {
        "P": result.data.num_obs, "D": D, "divergences": int(diag.divergences), "max_rhat": float(diag.max_rhat),
        "min_ess_bulk": float(diag.min_ess_bulk), "elpd_loo": float(estimate.elpd), "elpd_loo_se": float(estimate.se),
        "max_pareto_k": float(np.max(estimate.pareto_k)) if estimate.pareto_k is not None else float("nan"),
    }
    mean_q = q.mean(0)
    for r in range(D):
        for c in range(r, D):
            row[f"E[Q{r}{c}]"] = float(mean_q[r, c])
    corr = correlation_matrix(q).mean(0)
    low = np.tril_indices(D, -1)
    row["mean_abs_Q_offdiag_corr"] = float(np.abs(corr[low]).mean()) if D > 1 else 0.0
    for h in spec.inferred:
        draws = result.draws(h)
        if draws.ndim == 1:
            row[f"E[{h}]"] = float(draws.mean())
    return row


def _fit_task(name, spec_json, host_data, key_data, settings, keep_datatree, x64):
    """One fit in a worker (or in process): rebuild the specification and data, fit, summarize."""
    with jax.enable_x64(x64):
        spec = ModelSpec.from_json(spec_json)
        data = jax.tree_util.tree_map(jnp.asarray, host_data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit(data, spec, key=jnp.asarray(key_data, jnp.uint32), progress_bar=False, **settings)
        row = _compact(result, spec)
        row["warnings"] = "; ".join(str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning))
        return row, (result.datatree if keep_datatree else None)


def _file_stem(index: int, name: str) -> str:
    return f"fit-{index:05d}-" + re.sub(r"[^A-Za-z0-9._=-]+", "_", name)[:60]


def run_sweep(
    tasks: dict,
    *,
    executor=None,
    key: KeyLike = 0,
    checkpoint=None,
    keep_datatrees: bool = False,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
) -> SweepResult:
    r"""Fit every ``(data, spec)`` pair of ``tasks`` (``{name: (RegressionData, ModelSpec)}``, e.g.
    from :func:`grid`) with :func:`~deeplinear.fit` and tabulate the results (module docstring).

    Parameters
    ----------
    tasks : dict[str, tuple[RegressionData, ModelSpec]]
    executor : concurrent.futures.Executor, optional
        Where the fits run (default: in this process, one after the other).
    key : PRNG key or int, default 0
        Fit ``i`` uses ``jax.random.fold_in(key, i)``.
    checkpoint : path, optional
        A folder (created if missing) where each finished fit's row is written as it arrives
        (``fit-<index>-<name>.json``, and ``.nc`` for its DataTree with ``keep_datatrees``); a rerun
        of the same sweep reads them back instead of fitting again.
    keep_datatrees : bool, default False
        Also return (and checkpoint) every fit's DataTree.
    num_warmup, num_samples, num_chains, target_accept_prob, max_tree_depth
        As in :func:`~deeplinear.fit`, the same for every fit.
    """
    import pandas as pd
    import xarray as xr

    checked = _checked_tasks(tasks)
    _validate_fit_args(num_warmup, num_samples, num_chains, "auto", target_accept_prob, max_tree_depth, None, None)
    keep_datatrees = check_bool("keep_datatrees", keep_datatrees)
    if executor is not None:
        check_executor(executor)
    base = raw_key(key)
    settings = {"num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains,
                "target_accept_prob": float(target_accept_prob), "max_tree_depth": max_tree_depth}
    x64 = bool(jax.config.jax_enable_x64)
    keys = [np.asarray(jax.random.fold_in(base, i)) for i in range(len(checked))]
    host = [jax.tree_util.tree_map(np.asarray, data) for _, data, _ in checked]
    prints = [_fingerprint(name, host[i], spec_json, keys[i], settings) for i, (name, _, spec_json)
              in enumerate(checked)]

    folder = None if checkpoint is None else Path(checkpoint)
    rows, trees, reused = {}, {}, []
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for i, (name, _, _) in enumerate(checked):
            stem = _file_stem(i, name)
            path, tree_path = folder / (stem + ".json"), folder / (stem + ".nc")
            if not path.exists():
                continue
            stored = json.loads(path.read_text())
            if stored.get("format") != FORMAT or stored.get("fingerprint") != prints[i]:
                raise ValueError(f"{path} holds the result of a different fit (another sweep, data, key or setting); "
                                 "use another checkpoint folder -- nothing was overwritten")
            if keep_datatrees and not tree_path.exists():
                continue  # the row was kept without its DataTree: fit again
            rows[i] = stored["row"]
            if keep_datatrees:
                with xr.open_datatree(tree_path, engine="h5netcdf") as tree:
                    trees[i] = tree.load()
            reused.append(name)

    def record(i, outcome):
        row, tree = outcome
        rows[i], trees[i] = row, tree
        if folder is None:
            return
        stem = _file_stem(i, checked[i][0])  # names may hold dots ("a=0.5"): append, never with_suffix
        if tree is not None:
            tree_path = folder / (stem + ".nc")
            if tree_path.exists():  # left by an interrupted run (written before the row): the same fit?
                with xr.open_datatree(tree_path, engine="h5netcdf") as old:
                    if old.attrs.get("deeplinear_sweep_fingerprint") != prints[i]:
                        raise ValueError(f"{tree_path} holds the DataTree of a different fit; use another "
                                         "checkpoint folder -- nothing was overwritten")
            else:
                tree = tree.copy()
                tree.attrs["deeplinear_sweep_fingerprint"] = prints[i]
                atomic_write(tree_path, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"))
        row_path = folder / (stem + ".json")
        if not row_path.exists():  # else: the same fit's row (checked above), kept when only its DataTree was missing
            text = json.dumps({"format": FORMAT, "name": checked[i][0], "fingerprint": prints[i], "row": row})
            atomic_write(row_path, lambda tmp: Path(tmp).write_text(text))

    def submit(pool, i):
        name, _, spec_json = checked[i]
        return pool.submit(_fit_task, name, spec_json, host[i], keys[i], settings, keep_datatrees, x64)

    todo = [i for i in range(len(checked)) if i not in rows]
    failures = {}
    if executor is None:
        for i in todo:
            try:
                record(i, _fit_task(checked[i][0], checked[i][2], host[i], keys[i], settings, keep_datatrees, x64))
            except Exception as first:  # a failed fit is retried once, then reported; the others go on
                try:
                    record(i, _fit_task(checked[i][0], checked[i][2], host[i], keys[i], settings, keep_datatrees,
                                        x64))
                except Exception as second:
                    failures[i] = (first, second)
    else:
        _, failures = run_with_retry(executor, todo, submit, record)

    order = sorted(rows)
    table = pd.DataFrame([{"name": checked[i][0], **rows[i]} for i in order]).set_index("name") if order else \
        pd.DataFrame()
    failed = [SweepFailure(checked[i][0], i, checked[i][2], checked[i][1].num_obs, checked[i][1].num_outputs,
                           (f"{type(a).__name__}: {a}", f"{type(b).__name__}: {b}"))
              for i, (a, b) in sorted(failures.items())]
    datatrees = {checked[i][0]: trees[i] for i in order if trees.get(i) is not None}
    return SweepResult(table, datatrees, failed, tuple(reused))
