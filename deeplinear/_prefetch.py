"""Import the result-building modules in a background thread while a fit samples.

A first :func:`deeplinear.fit` needs ``arviz_base`` (with xarray and pandas) to build its DataTree
and ``arviz_stats`` (with ``scipy.stats``) for R-hat and ESS: 1.35 s of imports on a 2-core
machine (issue 27), which ``import deeplinear`` leaves out so that importing stays fast; where Dask
is installed, xarray also imports ``dask.array`` when it builds the first DataArray (measured with
the quick start on a 2-core EPYC, fresh processes: a warm-cache first fit 3.03 and 2.82 s without
it in the thread, 2.35 and 2.20 s with it; no cache, 9.94 and 8.00 s against 9.45 and 7.51 s). XLA
compiles and runs with Python's GIL released, so importing them on a second thread while the
chains run hides that time. :func:`deeplinear.fit` starts the thread once the sampler's programs
are compiled (started before, it slowed XLA's compilation on two cores by about a third), and the
thread runs at the lowest priority where the OS allows it per thread (Linux), so that it takes
the cores XLA leaves idle. Only modules not yet imported are started; an import
that fails in the thread is left alone (the same import raises in the caller when it is needed),
and Python's module locks make the caller wait for an import the thread has begun.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

__all__ = ["prefetch"]

# the DataTree; R-hat and ESS (with scipy.stats); and dask.array, which xarray imports (when Dask is
# installed) on the first DataArray it builds, to check whether the data are a Dask array: 2.5 s of a
# warm-cache first fit on a 2-core EPYC. Last: a module that is not installed ends the thread's imports.
RESULT_MODULES = ("arviz_base", "arviz_stats", "dask.array")


BACKGROUND_NICENESS = 19  # the importing thread's nice value (Linux): it runs on cores XLA leaves idle


def _lower_own_priority() -> None:
    """Lower the calling thread's scheduling priority where the OS allows it per thread (Linux:
    a thread is a task with its own nice value); elsewhere nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):
        pass


def _import_quietly(names: tuple[str, ...]) -> None:
    if sys.platform.startswith("linux"):
        _lower_own_priority()
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the caller's own import reports it
            return


def prefetch(names: tuple[str, ...] = RESULT_MODULES) -> threading.Thread | None:
    """Start importing those of ``names`` not yet imported on a daemon thread; returns the thread
    (``None`` when every module is already imported)."""
    missing = tuple(n for n in names if n not in sys.modules)
    if not missing:
        return None
    thread = threading.Thread(target=_import_quietly, args=(missing,), name="deeplinear-prefetch", daemon=True)
    thread.start()
    return thread
