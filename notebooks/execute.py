"""Execute the notebooks from their own folder (as Jupyter does), optionally with parameters.

    python notebooks/execute.py [NAME.ipynb ...]

re-executes the named notebooks (default: all) at their default parameters and saves them in
place with their outputs (``make notebooks`` does this against the in-place build); the tests
call :func:`execute` with ``SIZE="smallest"`` and do not save.
"""
import sys
from pathlib import Path

import nbclient
import nbformat

FOLDER = Path(__file__).resolve().parent
NOTEBOOKS = ["01_quickstart.ipynb", "02_findings.ipynb", "03_phase_diagram.ipynb",
             "04_training_recipe.ipynb", "05_hidden_markov.ipynb", "06_architectures.ipynb"]


def execute(name, **params):
    """The executed notebook ``FOLDER/name`` (not saved), with each ``key = value`` of the
    parameter cell (the first code cell, marked ``# parameters``) replaced by ``params``."""
    nb = nbformat.read(FOLDER / name, as_version=4)
    cell = nb.cells[1]
    if cell.cell_type != "code" or "parameters" not in cell.source:
        raise ValueError("%s: cell 1 must be the parameter cell" % name)
    for key, value in params.items():  # the parameter cell assigns one name per line
        lines = cell.source.splitlines()
        new = [("%s = %r" % (key, value)) if line.startswith(key + " =") else line
               for line in lines]
        if new == lines:
            raise ValueError("%s: no parameter %r" % (name, key))
        cell.source = "\n".join(new)
    # no per-cell timestamps: a re-execution changes only what the code printed or drew
    client = nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                                     record_timing=False,
                                     resources={"metadata": {"path": str(FOLDER)}})
    client.execute()
    return nb


def main(names):
    for name in names or NOTEBOOKS:
        print("executing", name, flush=True)
        nbformat.write(execute(name), FOLDER / name)


if __name__ == "__main__":
    main(sys.argv[1:])
