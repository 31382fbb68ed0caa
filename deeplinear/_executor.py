"""Tasks on a ``concurrent.futures.Executor`` with one retry each: the one place that SBC
(:mod:`deeplinear.sbc`) and sweeps (:mod:`deeplinear.sweep`) submit, wait and retry.

Any ``Executor`` works: a ``ProcessPoolExecutor`` (start method ``spawn`` or ``forkserver``: forking
a process in which JAX runs can deadlock), a Dask client's ``get_executor()``, or a thread pool.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

__all__ = ["check_executor", "run_with_retry"]


def check_executor(executor) -> concurrent.futures.Executor:
    """``executor`` is a ``concurrent.futures.Executor`` (a ``TypeError`` otherwise)."""
    if not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(
            f"executor must be a concurrent.futures.Executor (e.g. ProcessPoolExecutor, or a Dask client's "
            f"get_executor()), got {type(executor).__name__}"
        )
    return executor


def run_with_retry(executor, tasks, submit: Callable, on_result: Callable | None = None):
    """Submit ``submit(executor, task)`` for every task index in ``tasks``; a task whose future fails is
    submitted once more. ``on_result(task, result)`` runs in this process as each result arrives
    (in completion order). Returns ``(results, failures)``: ``{task: result}`` and
    ``{task: (first error, retry error)}`` for the tasks that failed twice."""
    pending = {submit(executor, t): (t, None) for t in tasks}
    results, failures = {}, {}
    while pending:
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            task, first_error = pending.pop(future)
            error = future.exception()
            if error is None:
                results[task] = future.result()
                if on_result is not None:
                    on_result(task, results[task])
            elif first_error is None:
                pending[submit(executor, task)] = (task, error)
            else:
                failures[task] = (first_error, error)
    return results, failures
