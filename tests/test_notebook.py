"""examples/quickstart.ipynb runs from a clean kernel (on the planted model, a short solve)."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from regprim import load_run

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed once from a clean kernel, and the folder it ran in."""
    tmp_path = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = (
        'MODEL = "planted"\nPLAYERS = [7, 8, 9, 13, 14, 15, 19, 20, 21]\n'
        f'SOLVER = {{"or_steps": 30}}\nOUT = r"{tmp_path / "run"}"'
    )
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb, tmp_path


def test_quickstart_notebook_runs(executed):
    nb, tmp_path = executed
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # target, primitives, reconstruction, Fig. 7a, inline
    assert (tmp_path / "run" / "report.html").is_file()
    text = "".join(o.get("text", "") for o in outputs)
    assert "locality" in text and "lower is better" in text  # a number says which way is good


def test_the_notebook_prints_the_true_norms(executed):
    """The printed |df| of each listed component is the table's norm of that action set (the
    notebook once indexed row-aligned norms by bitmask and printed 0 for the top component)."""
    nb, tmp_path = executed
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    printed = re.findall(r"S = cells \[([\d, ]+)\]  \|df\| = ([\d.e+-]+)", text)
    run = load_run(tmp_path / "run")
    assert len(printed) == min(6, len(run.ranked)) > 0
    for cells, norm in printed:
        mask = run.bitmask([int(c) for c in cells.split(",")])
        assert float(norm) == pytest.approx(run.norm(mask), rel=1e-3)
        assert float(norm) > 0
    assert [run.bitmask([int(c) for c in cells.split(",")]) for cells, _ in printed] == run.top(6)
