"""Files written without losing anything: atomic, exclusive, cleaned up on failure.

Every file deeplinear writes (:func:`deeplinear.save_fit`, the command line's tables and figures)
goes through :func:`atomic_write`:

1. the content is written to a fresh temporary file in the target folder (a unique name, created
   exclusively, so no file of the user's -- not even ``name.partial`` -- is touched), with the mode
   a plain ``open(path, "w")`` gives: ``0o666`` less the process's umask (``0o644`` under the usual
   umask ``022``), so colleagues on shared storage can read what the umask lets them read;
2. it is published under the final name in one step: without ``overwrite`` by a hard link, which
   fails if the name exists (an *exclusive* claim: two writers racing for one name cannot both
   win, and neither destroys the other's file); with ``overwrite`` by ``os.replace`` (atomic:
   readers see the old file or the new one, never half of one);
3. on any failure -- an error, a full disk, Ctrl-C -- the temporary file is removed, and the error
   names the user's path, not the temporary one.

:func:`claim` reserves a name before long work (an empty file created exclusively), so a
second run aiming at the same file fails at once instead of after sampling; :func:`release`
removes a claim that was not used.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "claim", "ensure_writable_folder", "release"]

NEW_FILE_MODE = 0o666  # what open(path, "w") asks for; the kernel takes the umask off
TEMPORARY_NAME_TRIES = 100  # unique temporary names tried (each collision is another writer's file)


def _refuse_existing(path: Path):
    raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")


def atomic_write(path, writer: Callable[[str], object], *, overwrite: bool = False) -> Path:
    """Write a file at ``path`` by calling ``writer(temporary_path)``; publish it atomically.

    Without ``overwrite`` an existing ``path`` raises ``FileExistsError`` (checked before and,
    exclusively, after writing). Errors while writing are re-raised as ``OSError`` naming ``path``.
    The file gets the mode a plain ``open(path, "w")`` would give it: ``0o666`` less the umask.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    if not overwrite and path.exists():
        _refuse_existing(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: no such folder {folder}")
    tmp = _fresh_temporary(path)
    try:
        try:
            writer(tmp)
        except OSError as err:
            raise OSError(f"could not write {path}: {err.strerror or err}") from err
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_exclusively(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # published (a hard link remains) or failed: the temporary goes
    return path


def ensure_writable_folder(folder) -> Path:
    """Make ``folder`` (and its parents) if missing and check that a file can be created in it
    (one is made and removed: permissions alone do not say, e.g. on a read-only mount or for
    root). Raises ``NotADirectoryError`` for a file, else the ``OSError`` that stops the writing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    Path(_fresh_temporary(folder / ".deeplinear-write-probe")).unlink()
    return folder


def _fresh_temporary(path: Path) -> str:
    """Create an empty ``.name.<random>.partial`` beside ``path``, exclusively, with mode
    ``NEW_FILE_MODE`` less the umask (``tempfile.mkstemp`` would give ``0o600`` whatever the umask)."""
    for _ in range(TEMPORARY_NAME_TRIES):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.partial")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, NEW_FILE_MODE)
        except FileExistsError:
            continue
        except OSError as err:
            raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from err
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not write {path}: {TEMPORARY_NAME_TRIES} temporary names beside it were taken")


def _publish_exclusively(tmp: str, path: Path):
    try:
        os.link(tmp, path)  # fails if path exists: an exclusive claim of the name
    except FileExistsError:
        _refuse_existing(path)
    except OSError:  # a file system without hard links: claim the name exclusively, then replace the claim
        claim(path)
        os.replace(tmp, path)


def claim(path) -> int:
    """Create ``path`` as an empty file, exclusively (``FileExistsError`` if it exists); returns its
    inode, for :func:`release`."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, NEW_FILE_MODE)
    except FileExistsError:
        _refuse_existing(path)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def release(path, inode: int) -> None:
    """Remove a claim made by :func:`claim` -- only if ``path`` is still that empty file."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_ino == inode and st.st_size == 0:
        path.unlink(missing_ok=True)
