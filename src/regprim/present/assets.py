"""The page assets regprim ships: HTML templates (``templates/``) and scripts (``static/``), read
from the package, never from a path a request names."""

from __future__ import annotations

from importlib.resources import files


def template(name: str) -> str:
    """The text of ``templates/NAME`` (``report.html``, ``dataset.html``, ``serve.html``)."""
    return (files("regprim.present") / "templates" / name).read_text()


def script(name: str) -> str:
    """The text of ``static/NAME`` (``grid.js``: the grid of cells, shared by the report and
    the live explorer)."""
    return (files("regprim.present") / "static" / name).read_text()
