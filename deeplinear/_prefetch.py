"""Import the result-building modules in a background thread while a fit compiles and samples.

A first :func:`deeplinear.fit` needs ``arviz_base`` (with xarray and pandas) to build its DataTree
and ``arviz_stats`` (with ``scipy.stats``) for R-hat and ESS: 1.35 s of imports on a 2-core
machine (issue 27), which ``import deeplinear`` leaves out so that importing stays fast. XLA
compiles and runs with Python's GIL released, so importing them on a second thread while the
sampler compiles and runs hides that time. Only modules not yet imported are started; an import
that fails in the thread is left alone (the same import raises in the caller when it is needed),
and Python's module locks make the caller wait for an import the thread has begun.
"""

from __future__ import annotations

import importlib
import sys
import threading

__all__ = ["prefetch"]

RESULT_MODULES = ("arviz_base", "arviz_stats")  # the DataTree; R-hat and ESS (with scipy.stats)


def _import_quietly(names: tuple[str, ...]) -> None:
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
