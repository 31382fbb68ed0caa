"""Every notebook executes, at small sizes, without error; the committed notebooks carry their
outputs (executed at their documented sizes, figures included), so that the repository and the
documentation site show them without running anything."""

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
    for cell in nb.cells:  # run from a clean slate, not on top of the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources=resources).execute()
    # quiet under nbconvert (issue 14, item 7): no progress bars or warnings on stderr
    stderr = [o["text"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, stderr[:3]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_carries_its_outputs_and_figures(path):
    """Executed in order at the documented size (``DEEPLINEAR_NOTEBOOK_SMALL`` unset), with no error."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "execute the whole notebook once"
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the committed outputs"


def test_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS][:2] == ["01", "02"]
    assert os.path.getsize(NOTEBOOKS[0]) > 0
