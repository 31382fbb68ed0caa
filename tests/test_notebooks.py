"""Every notebook executes, at small sizes, without error."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 600


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLINEAR_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources=resources).execute()
    # quiet under nbconvert (issue 14, item 7): no progress bars or warnings on stderr
    stderr = [o["text"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, stderr[:3]


def test_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS][:2] == ["01", "02"]
    assert os.path.getsize(NOTEBOOKS[0]) > 0
