"""The example notebook runs clean, for real, cell by cell (nbclient)."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="install wfpr[notebook] to run the notebook")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebooks" / "cooperating-proxies.ipynb"


def test_cooperating_proxies_notebook_runs_clean(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any cell error
    nbformat.write(nb, tmp_path / "executed.ipynb")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    html = [o["data"]["text/html"] for o in outputs if "data" in o and "text/html" in o["data"]]
    assert any("3 hop(s)" in h for h in html), "the record chain table is shown"
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plots are drawn"
