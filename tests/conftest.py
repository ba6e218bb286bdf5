import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Baseline cache in a temporary folder: tests never touch ~/.cache."""
    monkeypatch.setenv("REGPRIM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
