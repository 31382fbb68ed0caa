"""Tasks on a ``concurrent.futures.Executor`` with one retry each: the one place that SBC
(:mod:`deeplinear.sbc`) and sweeps (:mod:`deeplinear.sweep`) submit, wait and retry.

Any ``Executor`` works: a ``ProcessPoolExecutor`` (start method ``spawn`` or ``forkserver``: forking
a process in which JAX runs can deadlock), a Dask client's ``get_executor()``, or a thread pool.

A *broken* executor (``concurrent.futures.BrokenExecutor``: a process pool whose worker was killed,
e.g. by the out-of-memory killer, fails every task it holds and refuses new ones) is not the
tasks' fault: their unfinished tasks go, without using their retry, to a fresh process pool made
with the broken pool's settings or, for any other executor, run in this process, with a
``RuntimeWarning``; the results already received are kept. The caller's executor is never shut
down here; a pool made here is, at the end.
"""

from __future__ import annotations

import concurrent.futures
import warnings
from collections.abc import Callable

__all__ = ["InProcessExecutor", "check_executor", "run_with_retry"]

POOL_REPLACEMENTS = 2  # broken executors replaced per run; past that, a break counts as the tasks' error


def check_executor(executor) -> concurrent.futures.Executor:
    """``executor`` is a ``concurrent.futures.Executor`` (a ``TypeError`` otherwise)."""
    if not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(
            f"executor must be a concurrent.futures.Executor (e.g. ProcessPoolExecutor, or a Dask client's "
            f"get_executor()), got {type(executor).__name__}"
        )
    return executor


class InProcessExecutor(concurrent.futures.Executor):
    """Runs each task when it is submitted, in this process: the default of a sweep, and the last
    resort after a break."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - the task's error, delivered through its future
            future.set_exception(err)
        return future


def _replacement(broken) -> concurrent.futures.Executor:
    """A fresh ``ProcessPoolExecutor`` with ``broken``'s settings (workers, start method,
    initializer), or :class:`InProcessExecutor` for other executors or when those settings are unreadable."""
    if isinstance(broken, concurrent.futures.ProcessPoolExecutor):
        try:
            # private attributes, read defensively (AttributeError: an in-process executor instead)
            kwargs = {"max_workers": broken._max_workers, "mp_context": broken._mp_context,  # type: ignore[attr-defined]
                      "initializer": broken._initializer, "initargs": broken._initargs}
            if getattr(broken, "_max_tasks_per_child", None) is not None:
                kwargs["max_tasks_per_child"] = broken._max_tasks_per_child  # type: ignore[attr-defined]
            return concurrent.futures.ProcessPoolExecutor(**kwargs)
        except (AttributeError, TypeError, ValueError, OSError):
            pass
    return InProcessExecutor()


def run_with_retry(executor, tasks, submit: Callable, on_result: Callable | None = None):
    """Submit ``submit(executor, task)`` for every task index in ``tasks``; a task whose future fails is
    submitted once more. ``on_result(task, result)`` runs in this process as each result arrives
    (in completion order). Returns ``(results, failures)``: ``{task: result}`` and
    ``{task: (first error, retry error)}`` for the tasks that failed twice. A broken executor is
    replaced (module docstring), at most ``POOL_REPLACEMENTS`` times."""
    pool, made = executor, []  # type: ignore[var-annotated]  # the executors this call made
    queue = [(t, None) for t in tasks]  # (task, its first error) waiting to be submitted
    pending: dict = {}  # future -> (task, first error, the executor it went to)
    results: dict = {}
    failures: dict = {}

    def replace(broken, error) -> bool:
        nonlocal pool
        if broken is not pool:  # replaced already, when another of its tasks failed
            return True
        if len(made) >= POOL_REPLACEMENTS:
            return False
        pool = _replacement(broken)
        made.append(pool)
        where = "a fresh process pool" if isinstance(pool, concurrent.futures.ProcessPoolExecutor) else "this process"
        warnings.warn(f"the executor broke ({type(error).__name__}: {error}); its unfinished tasks run again in "
                      f"{where}, and the {len(results)} results received are kept", RuntimeWarning, stacklevel=3)
        return True

    def settle(future):
        task, first_error, where = pending.pop(future)
        error = future.exception()
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C reached the worker too: the user stops the run
            raise error
        if error is None:
            results[task] = future.result()
            if on_result is not None:
                on_result(task, results[task])
        elif isinstance(error, concurrent.futures.BrokenExecutor) and replace(where, error):
            queue.append((task, first_error))  # not the task's fault: its retry is kept
        elif first_error is None:
            queue.append((task, error))
        else:
            failures[task] = (first_error, error)

    try:
        while queue or pending:
            while queue:
                task, first_error = queue.pop(0)
                try:
                    future = submit(pool, task)
                except concurrent.futures.BrokenExecutor as error:
                    if not replace(pool, error):
                        raise
                    queue.insert(0, (task, first_error))
                    continue
                pending[future] = (task, first_error, pool)
                if future.done():  # run in process: its result is handled (written) before the next task starts
                    settle(future)
            if pending:
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    settle(future)
    except BaseException:  # an interrupt: tasks not yet started are cancelled, so the executor stops soon
        for future in pending:
            future.cancel()
        raise
    finally:
        for replacement in made:
            replacement.shutdown(wait=True, cancel_futures=True)
    return results, failures
