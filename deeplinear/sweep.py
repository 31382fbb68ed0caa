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
  back, not refitted. The folder carries the sweep's fingerprint (``sweep.json``: every fit's
  name, data, specification, key and settings): a folder of a *different* sweep is refused before
  anything is fitted, and so is a folder that cannot be written.
* **A finished fit is kept**: the row's diagnostics and PSIS-LOO are computed after the fit, and an
  error there (or LOO on streamed data, which keeps no rows) goes into the row's ``errors`` column,
  with NaN in its place -- never into a refit.
* **Failures**: a task that fails is submitted once more; one that fails twice is reported in
  :attr:`SweepResult.failures` with its inputs, and the others still finish. A process pool that
  breaks (a worker killed by the out-of-memory killer) is replaced, and its unfinished fits run
  again without using their retry (:mod:`deeplinear._executor`).
* **Damaged checkpoint files** (truncated, edited, unreadable) are set aside, renamed
  ``<file>.damaged``, and their fits run again, with a warning naming each: the sweep's writes are
  atomic, so damage comes from outside the sweep (a disk error, a copy cut short), and a refit
  with the same key reproduces the lost result, where an error would stop the sweep until the file
  was removed by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deeplinear._executor import InProcessExecutor, check_executor, run_with_retry
from deeplinear._files import atomic_write, ensure_writable_folder
from deeplinear._types import Executor, KeyLike, PathLike
from deeplinear._validation import check_bool, check_path, check_progress_bar, describe, raw_key
from deeplinear.data import RegressionData, check_regression_data
from deeplinear.inference import ConvergenceWarning, _validate_fit_args, fit
from deeplinear.loo import loo
from deeplinear.models import ModelSpec
from deeplinear.predictive import correlation_matrix

__all__ = ["SweepFailure", "SweepResult", "grid", "run_sweep"]

FORMAT = "deeplinear-sweep/1"
MANIFEST = "sweep.json"  # the checkpoint folder's fingerprint of the whole sweep
LOO_NEEDS_ROWS = "LOO needs the rows, and streamed data keep none: after the sweep, loo(fit, rows=...)"


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
        One row per finished fit, indexed by name (in the given order). ``errors`` holds what
        failed after the fit (diagnostics, LOO; their columns are NaN), ``warnings`` the fit's
        convergence warnings; both empty strings when there were none.
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
            raise TypeError(f"tasks: every name (key) must be a non-empty string, got {describe(name)}")
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
    """The row of a fit: diagnostics, LOO, posterior means (JSON-ready numbers). Diagnostics and
    LOO that fail leave NaN and their error in ``row["errors"]``: the fit itself is kept."""
    q = result.draws("Q")
    D = q.shape[-1]
    row = {"P": result.data.num_obs, "D": D}
    errors = []
    try:
        diag = result.diagnostics()
        row.update({"divergences": int(diag.divergences), "max_rhat": float(diag.max_rhat),
                    "min_ess_bulk": float(diag.min_ess_bulk)})
    except Exception as err:  # noqa: BLE001 - reported in the row
        row.update(dict.fromkeys(("divergences", "max_rhat", "min_ess_bulk"), float("nan")))
        errors.append(f"diagnostics: {type(err).__name__}: {err}")
    loo_columns = ("elpd_loo", "elpd_loo_se", "max_pareto_k")
    if not result.data.has_rows:
        row.update(dict.fromkeys(loo_columns, float("nan")))
        errors.append(LOO_NEEDS_ROWS)
    else:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
                estimate = loo(result)
            row.update({"elpd_loo": float(estimate.elpd), "elpd_loo_se": float(estimate.se),
                        "max_pareto_k": float(np.max(estimate.pareto_k)) if estimate.pareto_k is not None
                        else float("nan")})
        except Exception as err:  # noqa: BLE001 - reported in the row
            row.update(dict.fromkeys(loo_columns, float("nan")))
            errors.append(f"LOO: {type(err).__name__}: {err}")
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
    row["errors"] = "; ".join(errors)
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


def _sweep_fingerprint(prints) -> str:
    return hashlib.sha256("\n".join(prints).encode()).hexdigest()


def _claim_folder(folder: Path, prints) -> None:
    """Make the checkpoint folder (if missing), check that it can be written, and check or write
    its :data:`MANIFEST`: a folder of another sweep is refused before any fit."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"checkpoint {folder} is a file; give a folder")
    try:
        ensure_writable_folder(folder)
    except OSError as err:
        raise PermissionError(f"checkpoint folder {folder} cannot be written ({err.strerror or err}); give a folder "
                              "you can write, or checkpoint=None -- nothing was fitted") from None
    manifest = folder / MANIFEST
    mine = {"format": FORMAT, "sweep": _sweep_fingerprint(prints), "fits": len(prints)}
    try:
        stored = json.loads(manifest.read_text())
    except FileNotFoundError:
        stored = None
    except (OSError, ValueError):
        _set_aside(manifest)
        stored = None
    if stored is None:
        try:
            atomic_write(manifest, lambda tmp: Path(tmp).write_text(json.dumps(mine)))
        except FileExistsError:  # another run of a sweep claimed the folder meanwhile: compare with it
            stored = json.loads(manifest.read_text())
    if stored is not None and (not isinstance(stored, dict) or {k: stored.get(k) for k in mine} != mine):
        raise ValueError(f"checkpoint folder {folder} holds a different sweep (its {MANIFEST} has another "
                         "fingerprint: the fits' names, data, specifications, key or settings differ); use another "
                         "checkpoint folder -- nothing was overwritten and nothing was fitted")


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint file to ``<name>.damaged`` (``.damaged-1``, ... if taken), with a warning."""
    for n in range(1000):
        target = path.with_name(path.name + (".damaged" if n == 0 else f".damaged-{n}"))
        try:
            os.link(path, target)  # exclusive: an earlier '.damaged' file is never replaced
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links
            if target.exists():
                continue
            os.replace(path, target)
        else:
            path.unlink()
        warnings.warn(f"checkpoint file {path} is damaged (unreadable, truncated or edited): set aside as "
                      f"{target.name}; its fit runs again", RuntimeWarning, stacklevel=4)
        return target
    raise FileExistsError(f"checkpoint file {path} is damaged and 1000 '.damaged' names beside it are taken")


def _read_checkpoint(folder: Path, stem: str, fingerprint: str, keep_datatrees: bool):
    """``(row, DataTree or None)`` of a finished fit kept in ``folder``, or ``None`` when it must run:
    no file, a damaged file (set aside), or no DataTree when one is asked for. A readable file of
    a different fit is an error."""
    import xarray as xr

    path, tree_path = folder / (stem + ".json"), folder / (stem + ".nc")
    row = None
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if not (isinstance(stored, dict) and stored.get("format") == FORMAT and "fingerprint" in stored
                    and isinstance(stored.get("row"), dict)):
                raise ValueError("not a sweep checkpoint")
        except (OSError, ValueError):
            _set_aside(path)
        else:
            if stored["fingerprint"] != fingerprint:
                raise ValueError(f"{path} holds the result of a different fit (another sweep, data, key or setting); "
                                 "use another checkpoint folder -- nothing was overwritten")
            row = stored["row"]
    tree = None
    if tree_path.exists():
        try:
            with xr.open_datatree(tree_path, engine="h5netcdf") as opened:
                stored_print = opened.attrs.get("deeplinear_sweep_fingerprint")
                tree = opened.load() if stored_print == fingerprint and keep_datatrees and row is not None else None
        except Exception:  # noqa: BLE001 - h5py's OSError, a truncated file, ...: damaged
            _set_aside(tree_path)
            return None
        if stored_print != fingerprint:
            raise ValueError(f"{tree_path} holds the DataTree of a different fit; use another checkpoint folder -- "
                             "nothing was overwritten")
    if row is None or (keep_datatrees and tree is None):
        return None
    return row, tree


def _write_checkpoint(folder: Path, stem: str, name: str, fingerprint: str, row: dict, tree) -> None:
    """The DataTree (if any, and not kept already) first, then the row: a row on disk means the fit is done."""
    tree_path, row_path = folder / (stem + ".nc"), folder / (stem + ".json")
    if tree is not None and not tree_path.exists():  # one left by an interrupted run was checked before the fits
        tree = tree.copy()
        tree.attrs["deeplinear_sweep_fingerprint"] = fingerprint
        atomic_write(tree_path, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"))
    if not row_path.exists():  # else: the same fit's row (checked before), kept when only its DataTree was missing
        text = json.dumps({"format": FORMAT, "name": name, "fingerprint": fingerprint, "row": row})
        atomic_write(row_path, lambda tmp: Path(tmp).write_text(text))


def run_sweep(
    tasks: dict[str, tuple[RegressionData, ModelSpec]],
    *,
    executor: Executor | None = None,
    key: KeyLike = 0,
    checkpoint: PathLike | None = None,
    keep_datatrees: bool = False,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress_bar: bool | None = None,
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
        of the same sweep reads them back instead of fitting again. Its ``sweep.json`` names the
        sweep: another sweep's folder, or one that cannot be written, is an error before any fit.
    keep_datatrees : bool, default False
        Also return (and checkpoint) every fit's DataTree.
    num_warmup, num_samples, num_chains, target_accept_prob, max_tree_depth
        As in :func:`~deeplinear.fit`, the same for every fit.
    progress_bar : bool, optional
        A bar over the fits (those read back from ``checkpoint`` count as done; each fit's own bar
        stays off). Default: on in Jupyter or a terminal, off otherwise.
    """
    import pandas as pd

    checked = _checked_tasks(tasks)
    _validate_fit_args(num_warmup, num_samples, num_chains, "auto", target_accept_prob, max_tree_depth, None, None)
    progress_bar = check_progress_bar(progress_bar)
    keep_datatrees = check_bool("keep_datatrees", keep_datatrees)
    folder = None if checkpoint is None else check_path("checkpoint", checkpoint, "folder")
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

    rows, trees, reused, unwritten = {}, {}, [], []
    if folder is not None:
        _claim_folder(folder, prints)
        for i, (name, _, _) in enumerate(checked):
            found = _read_checkpoint(folder, _file_stem(i, name), prints[i], keep_datatrees)
            if found is not None:
                rows[i], trees[i] = found
                reused.append(name)

    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(checked), initial=len(rows), desc=f"sweep ({len(checked)} fits)", unit="fit")

    def record(i, outcome):
        row, tree = outcome
        rows[i], trees[i] = row, tree
        if bar is not None:
            bar.update(1)
        if folder is not None:
            try:
                _write_checkpoint(folder, _file_stem(i, checked[i][0]), checked[i][0], prints[i], row, tree)
            except OSError as err:  # a full disk: the result stays in the table; the sweep goes on
                unwritten.append(f"{checked[i][0]} ({err})")

    def submit(pool, i):
        name, _, spec_json = checked[i]
        return pool.submit(_fit_task, name, spec_json, host[i], keys[i], settings, keep_datatrees, x64)

    todo = [i for i in range(len(checked)) if i not in rows]
    try:
        _, failures = run_with_retry(InProcessExecutor() if executor is None else executor, todo, submit, record)
    finally:
        if bar is not None:
            bar.close()

    if unwritten:
        warnings.warn(f"{len(unwritten)} finished fit(s) are in the table but could not be written to {folder}: "
                      + "; ".join(unwritten[:5]), RuntimeWarning, stacklevel=2)
    order = sorted(rows)
    table = pd.DataFrame([{"name": checked[i][0], **rows[i]} for i in order]).set_index("name") if order else \
        pd.DataFrame()
    failed = [SweepFailure(checked[i][0], i, checked[i][2], checked[i][1].num_obs, checked[i][1].num_outputs,
                           (f"{type(a).__name__}: {a}", f"{type(b).__name__}: {b}"))
              for i, (a, b) in sorted(failures.items())]
    datatrees = {checked[i][0]: trees[i] for i in order if trees.get(i) is not None}
    return SweepResult(table, datatrees, failed, tuple(reused))
