"""The notebooks run end to end (nbclient) at their smallest size."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name, tmp_path, **params):
    """Execute a notebook from its own folder (as Jupyter does) with parameters set."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = nb.cells[1]
    assert cell.cell_type == "code" and "parameters" in cell.source
    for key, value in params.items():  # the parameter cell assigns one name per line
        lines = [("%s = %r" % (key, value)) if line.startswith(key + " =") else line
                 for line in cell.source.splitlines()]
        assert lines != cell.source.splitlines(), key
        cell.source = "\n".join(lines)
    os.environ.setdefault("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def test_quickstart(tmp_path):
    nb = run_notebook("01_quickstart.ipynb", tmp_path, SIZE="smallest")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "Bayes floor" in text and "learned share" in text


def test_phase_diagram(tmp_path):
    nb = run_notebook("03_phase_diagram.ipynb", tmp_path, SIZE="smallest")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "crossover xi*" in text


def test_findings_notebook(tmp_path):
    nb = run_notebook("02_findings.ipynb", tmp_path, SIZE="smallest")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "rgflow findings report" in text
