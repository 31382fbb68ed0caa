"""The files one command-line run writes: claimed before the work, each written once, atomically.

:class:`OutputFiles` is used as a context manager around a run:

* on entry it checks that the names are distinct (one file never written twice in one run),
  creates the folder and -- unless ``--overwrite`` -- claims every name exclusively
  (:func:`deeplinear._files.claim`), so an existing file, or a second run aiming at the same
  files, is refused before any sampling;
* :meth:`OutputFiles.write` writes a file through :func:`deeplinear._files.atomic_write`
  (a temporary file published in one step, removed on failure);
* on exit -- also after an error or Ctrl-C -- claims that were not written are released, so
  an interrupted run leaves no empty or partial files behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from deeplinear._files import atomic_write, claim, release

__all__ = ["OutputFiles"]


class OutputFiles:
    """Files ``names`` in ``folder``, claimed for one run (see the module docstring)."""

    def __init__(self, folder, names, *, overwrite: bool = False, hint: str = "choose another --output"):
        names = list(names)
        if len(set(names)) != len(names):
            raise ValueError(f"the output files {names} must have different names (one would overwrite the other)")
        self.folder = Path(folder)
        self.overwrite = overwrite
        self.hint = hint
        self.paths = {n: self.folder / n for n in names}
        self._claims: dict[str, int] = {}
        self._written: set[str] = set()

    def __enter__(self) -> OutputFiles:
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"--output {self.folder} is a file, not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, path in self.paths.items():
            if path.is_dir():
                self._release_all()
                raise IsADirectoryError(f"{path} is a folder; choose another file name")
            if self.overwrite:
                continue
            try:
                self._claims[name] = claim(path)
            except FileExistsError:
                self._release_all()
                raise FileExistsError(f"{path} already exists; {self.hint} or pass --overwrite") from None
        return self

    def __exit__(self, *exc) -> None:
        self._release_all()

    def _release_all(self):
        for name, inode in list(self._claims.items()):
            release(self.paths[name], inode)
        self._claims.clear()

    def write(self, name: str, writer: Callable[[str], object]) -> Path:
        """Write ``name`` by ``writer(temporary_path)``; returns the final path."""
        if name in self._written:
            raise RuntimeError(f"{self.paths[name]} was already written in this run")
        path = self.paths[name]
        # our own empty claim (or an existing file the user allowed us to replace) is replaced
        atomic_write(path, writer, overwrite=True)
        self._claims.pop(name, None)
        self._written.add(name)
        return path
