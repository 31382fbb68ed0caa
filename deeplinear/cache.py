"""JAX's persistent compilation cache, switched on only when asked (importing deeplinear never does).

Compiling the sampler is most of a small fit's time (issue 13 measured 65-86%). JAX can keep
compiled programs on disk and load them in later runs and processes instead of compiling again;
that is a JAX-wide setting, so deeplinear leaves it alone unless you call
:func:`enable_compilation_cache` (the ``deeplinear`` command line does, in your cache folder,
unless given ``--no-compilation-cache`` or ``DEEPLINEAR_COMPILATION_CACHE=off``).

JAX's cache skips compiling but not tracing and lowering, which its key needs; so the library's
large programs (the sampler's, LOO's) are also kept traced, beside JAX's entries, by
:class:`ReusedTraceJit`, whenever JAX's cache is on.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np

__all__ = ["CacheWarning", "enable_compilation_cache", "default_cache_directory"]

ENVIRONMENT_VARIABLE = "DEEPLINEAR_COMPILATION_CACHE"  # a folder, or "off"


def default_cache_directory() -> Path:
    """``$XDG_CACHE_HOME/deeplinear/jax`` (``~/.cache/deeplinear/jax``; ``%LOCALAPPDATA%`` on Windows,
    ``~/Library/Caches`` on macOS). A relative ``$XDG_CACHE_HOME`` is ignored, as the XDG Base
    Directory specification requires (it would name a different folder in every working directory)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "deeplinear" / "jax"


class CacheWarning(UserWarning):
    """The compilation cache could not be used (its folder cannot be made or written): fits run
    as without it, compiling each program in each process."""


def _usable_folder(folder: Path) -> str | None:
    """``None`` when ``folder`` exists (or can be made) and can be written; else the reason, in words."""
    from deeplinear._files import ensure_writable_folder

    try:
        ensure_writable_folder(folder)
    except NotADirectoryError:
        return "it is a file, not a folder"
    except OSError as err:
        return err.strerror or str(err)
    return None


OFF_WORDS = ("off", "0", "no", "false")  # values of ENVIRONMENT_VARIABLE that switch the cache off


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None, *,
                             min_compile_time_secs: float = 0.0) -> Path | None:
    """Switch on JAX's persistent compilation cache in ``directory``; returns the folder.

    ``directory`` defaults to the folder named by ``$DEEPLINEAR_COMPILATION_CACHE`` if set,
    else :func:`default_cache_directory` (``~/.cache/deeplinear/jax``). Setting that variable
    to ``off`` makes a call without ``directory`` do nothing (and return ``None``): the way to
    keep notebooks and scripts that call this from writing to your cache folder.

    This changes JAX's global configuration for the whole process (``jax_compilation_cache_dir``
    and ``jax_persistent_cache_min_compile_time_secs``): programs that took at least
    ``min_compile_time_secs`` to compile are stored and, in later runs, loaded instead of compiled
    (the default 0 stores every program: a fit compiles dozens of small ones besides the
    sampler). Results are unchanged. The sampler's and LOO's programs are also kept as traced
    StableHLO in the subfolder ``deeplinear-traces`` (:class:`ReusedTraceJit`), so that a later
    process skips tracing them too: the quick start's fit with a warm cache takes about 1.1 s
    instead of 1.7 s on 2 CPU cores. What it costs on disk: about 1-3 MB per model structure
    (the quick start's fit stores about 0.55 MB in 9 files, 0.17 MB of it traces); nothing is
    ever removed, so remove the folder to clear it.

    The cache is only a speed-up: a folder that cannot be made or written (a read-only home, a
    full disk) leaves it off, with one :class:`CacheWarning` that names the folder and the
    switch, and returns ``None``; everything else runs as without it. Entries that JAX could not
    read back (a write cut short) are removed, with one :class:`CacheWarning`, so that JAX stores
    them again instead of warning and compiling in every later run
    (:func:`_replace_damaged_entries`).

    Examples
    --------
    >>> import tempfile, deeplinear as dl
    >>> folder = dl.enable_compilation_cache(tempfile.mkdtemp())  # doctest: +SKIP
    """
    import jax

    from deeplinear._validation import check_path, check_positive_scalar

    check_positive_scalar("min_compile_time_secs", min_compile_time_secs, allow_zero=True)
    if directory is not None:
        check_path("directory", directory, "folder")
    if directory is None:
        setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if setting.lower() in OFF_WORDS:
            return None
        directory = setting or None
    folder = Path(directory) if directory is not None else default_cache_directory()
    problem = _usable_folder(folder)
    if problem is not None:
        import warnings

        warnings.warn(
            f"the compilation cache stays off: {folder} cannot be used ({problem}); fits compile as without it. "
            f"Give a folder you can write (enable_compilation_cache(directory) or {ENVIRONMENT_VARIABLE}=FOLDER), or "
            f"switch the cache off ({ENVIRONMENT_VARIABLE}=off; the command line's --no-compilation-cache)",
            CacheWarning, stacklevel=2)
        return None
    removed = _replace_damaged_entries(folder)
    if removed:
        import warnings

        warnings.warn(
            f"removed {len(removed)} damaged compiled program(s) from the compilation cache {folder} (they cannot be "
            f"decompressed, e.g. {removed[0].name}: a write that was cut short); JAX compiles and stores them again",
            CacheWarning, stacklevel=2)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    return folder


# --- Damaged entries of JAX's cache ---------------------------------------------------------------

ENTRY_SUFFIX = "-cache"  # JAX's file cache: "<module>-<hash>-cache"
SETTLE_SECONDS = 120.0  # entries newer than this may still be being written by another process
VERIFIED_STAMP = ".deeplinear-verified"  # its modification time: entries before it were verified
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_decompressor():
    """The zstd decompressor JAX would use (``compression.zstd``, then ``zstandard``), or ``None``."""
    try:
        from compression import zstd  # Python >= 3.14

        return zstd.decompress
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard.ZstdDecompressor().decompress


def _entry_is_damaged(path: Path) -> bool:
    """Whether JAX could not decompress this entry: neither a complete zstd frame nor a complete zlib
    stream (JAX compresses every entry with one of the two). A zstd entry that this Python cannot
    decompress is not judged (another environment sharing the folder may have written it)."""
    import zlib

    try:
        blob = path.read_bytes()
    except OSError:
        return False  # gone, or not readable here: not ours to judge
    if blob.startswith(ZSTD_MAGIC):
        decompress = _zstd_decompressor()
        if decompress is None:
            return False
        try:
            decompress(blob)
        except Exception:  # noqa: BLE001 - each zstd binding raises its own error type
            return True
        return False
    try:
        zlib.decompress(blob)
    except zlib.error:
        return True
    return False


def _replace_damaged_entries(folder) -> list[Path]:
    r"""Remove the entries of JAX's compilation cache in ``folder`` that JAX could not decompress, so
    that JAX compiles and stores them again; returns the removed paths.

    JAX writes an entry in place (not atomically) and never replaces one that exists: an entry cut
    short (a killed process, a full disk) or damaged otherwise makes every later run warn ("Error
    reading persistent compilation cache entry") and compile that program again, forever. Only
    entries written since the last check are read (a stamp file in ``folder`` records when that
    was), and not those of the last ``SETTLE_SECONDS`` (another process may still be writing them;
    they are checked next time). Only files named like JAX's entries (``*-cache``) are considered.
    """
    import time

    folder = Path(folder)
    stamp = folder / VERIFIED_STAMP
    try:
        since = stamp.stat().st_mtime
    except OSError:
        since = -math.inf
    until = time.time() - SETTLE_SECONDS
    removed = []
    for path in folder.glob(f"*{ENTRY_SUFFIX}"):
        try:
            modified = path.stat().st_mtime
        except OSError:
            continue
        if since <= modified < until and _entry_is_damaged(path):
            try:
                path.unlink()
            except FileNotFoundError:  # another process removed it first
                pass
            except OSError:
                continue
            removed.append(path)
    if until > since:
        try:
            stamp.touch()
            os.utime(stamp, (until, until))
        except OSError:
            pass  # checked again next time
    return sorted(removed)


# --- Traced programs kept beside the compiled ones -------------------------------------------------

TRACES_SUBFOLDER = "deeplinear-traces"  # inside JAX's compilation cache folder
TRACE_FORMAT = 1  # the layout of a stored trace; a change makes every older entry a miss
TRUSTED_PACKAGES = ("deeplinear", "numpyro", "jax", "jaxlib", "numpy", "builtins", "collections")


def _trace_folder() -> Path | None:
    """Where traced programs are kept: :data:`TRACES_SUBFOLDER` of JAX's compilation cache folder
    when that cache is on and the folder is local; ``None`` (nothing kept) otherwise."""
    import jax

    folder = jax.config.jax_compilation_cache_dir
    if not folder or not jax.config.jax_enable_compilation_cache or "://" in str(folder):
        return None
    return Path(folder) / TRACES_SUBFOLDER


def _trusted_type(kind) -> bool:
    return isinstance(kind, type) and kind.__module__.split(".")[0] in TRUSTED_PACKAGES


def _trusted_value(value) -> bool:
    """Whether ``repr(value)`` names ``value`` exactly (numbers, strings, library classes, and
    containers of them): the condition for a pytree's static data to be part of a key."""
    import numpy as np

    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.dtype)):
        return True
    if isinstance(value, type):
        return _trusted_type(value)
    if isinstance(value, (tuple, list, frozenset)):
        return all(_trusted_value(v) for v in value)
    if isinstance(value, dict):
        return all(_trusted_value(k) and _trusted_value(v) for k, v in value.items())
    return False


def _trusted_structure(treedef) -> bool:
    """Whether every node of ``treedef`` is a container or a class of :data:`TRUSTED_PACKAGES` with
    static data :func:`_trusted_value` accepts. Then what a program does is fixed by the key: the
    installed versions, this package's source, the structure's text and the leaves' types. A class
    of your own (a custom distribution as a hyperprior) is not: its code is not in the key."""
    stack = [treedef]
    while stack:
        node = stack.pop()
        data = node.node_data()
        if data is not None and not (_trusted_type(data[0]) and _trusted_value(data[1])):
            return False
        stack.extend(node.children())
    return True


_SOURCE_FINGERPRINT: list[str] = []


def _source_fingerprint() -> str:
    """The versions of Python, JAX, jaxlib and NumPyro and a hash of this package's source files
    (computed once per process): a trace is reused only by the same code."""
    if not _SOURCE_FINGERPRINT:
        import jax
        import jaxlib
        import numpyro

        digest = hashlib.sha256()
        root = Path(__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
        _SOURCE_FINGERPRINT.append(
            f"format {TRACE_FORMAT}; python {sys.version_info[:2]}; jax {jax.__version__}; "
            f"jaxlib {jaxlib.__version__}; numpyro {numpyro.__version__}; deeplinear source {digest.hexdigest()}"
        )
    return _SOURCE_FINGERPRINT[0]


def _configuration() -> str:
    """JAX's configuration as the caller sees it (context managers included), less the cache
    settings: anything that could change how a function traces or lowers is in the key."""
    import jax

    values = getattr(jax.config, "values", {})
    settings = []
    for name in sorted(values):
        if "cache" not in name:
            try:
                settings.append(f"{name}={getattr(jax.config, name)!r}")
            except AttributeError:
                settings.append(f"{name}={values[name]!r}")
    return f"backend {jax.default_backend()}; " + "; ".join(settings)


_NOT_KEPT = object()  # a program that cannot be exported (or whose arguments make no key): plain jit


class ReusedTraceJit:
    r"""``jax.jit(fun, static_argnames=..., donate_argnames=...)`` whose traced and lowered programs
    are also kept on disk, beside JAX's compiled ones, and reused by later processes.

    JAX's persistent compilation cache skips compilation but not tracing and lowering, which it
    needs to compute its key: for the quick start's sampler that is 0.7 s of a 1.8 s warm-cache fit
    (issue 27). When JAX's cache is on (:func:`enable_compilation_cache`, or JAX's own
    ``jax_compilation_cache_dir``), each program is also exported (:func:`jax.export.export`,
    StableHLO) to :data:`TRACES_SUBFOLDER` under a key made of the installed versions, this
    package's source (:func:`_source_fingerprint`), JAX's configuration, the static arguments,
    the arguments' pytree structure and each leaf's shape, dtype and weak type; a later process
    with the same key deserializes it and calls it, so the function is not traced again. The
    program is the one ``jit`` would build, so results are unchanged. Either way ``fun`` is traced
    under full matrix-product precision (:mod:`deeplinear._matmul`).

    Used as plain ``jit`` (nothing kept) when the cache is off, when it is called inside another
    program being traced (its arguments are tracers), when a leaf is spread over several devices,
    when the structure holds a class from outside :data:`TRUSTED_PACKAGES` (its code is not in the
    key: :func:`_trusted_structure`), or when the program cannot be exported. A file
    that cannot be read is replaced; one that cannot be written is left out, silently (it is a
    speed-up). The folder is trusted as JAX's own cache is: it holds programs that run.

    Arguments are passed as to ``jit``; defaults are filled in before the key is made."""

    def __init__(self, fun, static_argnames=(), donate_argnames=()):
        import jax

        from deeplinear._matmul import full_precision

        functools.update_wrapper(self, fun)
        self._fun = fun
        self._signature = inspect.signature(fun)
        self._static = tuple(static_argnames)
        self._donate = frozenset(donate_argnames)
        self._traced = full_precision(fun)  # what is traced: fun under full matrix-product precision
        self._jit = jax.jit(self._traced, static_argnames=self._static, donate_argnames=tuple(donate_argnames))
        self._programs: dict = {}

    def __call__(self, *args, **kwargs):
        folder = _trace_folder()
        if folder is None:
            return self._jit(*args, **kwargs)
        import jax

        from deeplinear._devices import default_device

        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        static = {name: bound.arguments[name] for name in self._static}
        names = tuple(name for name in bound.arguments if name not in static)
        dynamic = tuple(bound.arguments[name] for name in names)
        leaves, treedef = jax.tree.flatten(dynamic)
        if any(isinstance(x, jax.core.Tracer) for x in leaves):  # inside another program: traced into it
            return self._jit(*args, **kwargs)
        devices = {d for x in leaves if isinstance(x, jax.Array) for d in x.sharding.device_set}
        if len(devices) > 1:  # sharded or spread over devices: plain jit places it
            return self._jit(*args, **kwargs)
        device = devices.pop() if devices else default_device()
        key = (
            f"{self._fun.__module__}.{self._fun.__qualname__}{names} on {device}; static {sorted(static.items())!r}; "
            f"structure {treedef}; leaves {[str(jax.typeof(x)) for x in leaves]}; {_configuration()}"
        )
        program = self._programs.get(key)
        if program is None:
            program = self._program(folder, key, names, dynamic, treedef, leaves, static, device)
            self._programs[key] = program
        if program is _NOT_KEPT:
            return self._jit(*args, **kwargs)
        call, out_tree = program
        return jax.tree.unflatten(out_tree, call(*leaves))

    def _program(self, folder, key, names, dynamic, treedef, leaves, static, device):
        """``(jit(exported.call), output structure)`` for ``key``, loaded or exported and stored; the
        call places every argument on ``device`` (so that committed and uncommitted arguments, e.g. a
        previous call's outputs and new arrays, select one compiled program)."""
        import jax

        if not all(_trusted_value(v) for v in static.values()) or not _trusted_structure(treedef):
            return _NOT_KEPT
        full_key = f"{_source_fingerprint()}; {key}"
        path = folder / f"{self._fun.__name__.strip('_')}-{hashlib.sha256(full_key.encode()).hexdigest()[:40]}"
        stored = _load_trace(path, full_key)
        if stored is None:
            out_tree = []

            def flat(*flat_leaves):
                out = self._traced(**dict(zip(names, jax.tree.unflatten(treedef, flat_leaves))), **static)
                out_leaves, tree = jax.tree.flatten(out)
                out_tree.append(tree)
                return out_leaves

            try:
                exported = jax.export.export(jax.jit(flat))(*leaves)
            except Exception:  # noqa: BLE001 - not exportable (a callback, an unstable custom call): plain jit
                return _NOT_KEPT
            stored = (exported, out_tree[0])
            _store_trace(path, full_key, exported, out_tree[0])
        exported, out_tree = stored
        offsets = np.cumsum([0] + [len(jax.tree.leaves(a)) for a in dynamic])
        donated = tuple(i for a, name in enumerate(names) if name in self._donate
                        for i in range(offsets[a], offsets[a + 1]))
        one_device = getattr(jax.sharding, "make_single_device_sharding", None) or jax.sharding.SingleDeviceSharding
        return jax.jit(exported.call, in_shardings=one_device(device), donate_argnums=donated), out_tree


def reuse_traces(fun=None, *, static_argnames=(), donate_argnames=()):
    """Decorator: ``fun`` as a :class:`ReusedTraceJit` (``jax.jit`` with traces kept on disk)."""
    if fun is None:
        return functools.partial(reuse_traces, static_argnames=static_argnames, donate_argnames=donate_argnames)
    return ReusedTraceJit(fun, static_argnames, donate_argnames)


def _load_trace(path: Path, full_key: str):
    """``(exported, output structure)`` stored at ``path`` for ``full_key``, or ``None`` when it is
    absent, unreadable, or another key's."""
    import jax

    try:
        stored_format, stored_key, out_tree, blob = pickle.loads(path.read_bytes())
        if stored_format != TRACE_FORMAT or stored_key != full_key:
            return None
        return jax.export.deserialize(bytearray(blob)), out_tree
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - truncated, corrupt or from another version: exported again
        return None


def _store_trace(path: Path, full_key: str, exported, out_tree) -> None:
    """Write the trace atomically (:func:`deeplinear._files.atomic_write`: the mode the umask
    gives), or leave it out when the folder cannot be written."""
    from deeplinear._files import atomic_write

    try:
        blob = pickle.dumps((TRACE_FORMAT, full_key, out_tree, bytes(exported.serialize())))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob), overwrite=True)
    except Exception:  # noqa: BLE001 - read-only or full disk, or not serializable: the cache is a speed-up
        pass
