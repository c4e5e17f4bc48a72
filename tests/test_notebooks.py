"""The notebooks run end to end (nbclient) at their smallest size, and are committed executed
(``make notebooks`` re-executes them in place)."""
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))
from execute import NOTEBOOKS as NAMES, execute  # noqa: E402


def run_notebook(name, **params):
    """Execute a notebook headless (figures are not rendered) with parameters set."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    return execute(name, **params)


def printed(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


def markdown(nb):
    return "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells
                   if c.cell_type == "code" for o in c.get("outputs", []))


def test_quickstart():
    text = printed(run_notebook("01_quickstart.ipynb", SIZE="smallest"))
    assert "Bayes floor" in text and "learned share" in text


def test_phase_diagram():
    assert "crossover xi*" in printed(run_notebook("03_phase_diagram.ipynb", SIZE="smallest"))


def test_findings_notebook():
    text = printed(run_notebook("02_findings.ipynb", SIZE="smallest"))
    assert "| gate | runs within 0.02 nats of the floor" in text
    assert "## Verdicts as a function of the excess" in text and "small-long" in text


def test_training_recipe_notebook():
    text = printed(run_notebook("04_training_recipe.ipynb", SIZE="smallest"))
    assert "recipe runs at the small size" in text and "cos-3e-3-30k" in text


def test_hidden_markov_notebook():
    nb = run_notebook("05_hidden_markov.ipynb", SIZE="smallest")
    assert "context >= 0.01 (tok)" in printed(nb)
    table = markdown(nb)
    assert "| task | ξ | context ≥ 0.01 (tokens) |" in table
    assert "| hmm, noise 0.3 | 7 | 3 |" in table  # the task's context, as in the README


def test_architectures_notebook():
    pytest.importorskip("torch")
    table = markdown(run_notebook("06_architectures.ipynb", SIZE="smallest"))
    # one tiny run per architecture and ξ: every column, and no verdict from one seed
    assert "| MLP ξ = 1 | transformer ξ = 1 | MLP ξ = 7 | transformer ξ = 7 |" in table
    assert "| (ii) selectivity, transformer | R_peak, ξ = 7 − ξ = 1 | — | — | no verdict |" \
        in table


@pytest.mark.parametrize("name", NAMES)
def test_committed_with_outputs(name):
    """Every code cell was executed, in order, without an error, and the figures are there."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
