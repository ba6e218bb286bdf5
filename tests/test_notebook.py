"""examples/quickstart.ipynb runs from a clean kernel (on the planted model, a short solve)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = (
        'MODEL = "planted"\nPLAYERS = [7, 8, 9, 13, 14, 15, 19, 20, 21]\n'
        f'SOLVER = {{"or_steps": 30}}\nOUT = r"{tmp_path / "run"}"'
    )
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # target, primitives, reconstruction, Fig. 7a, inline
    assert (tmp_path / "run" / "report.html").is_file()
