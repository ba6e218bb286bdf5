"""Shared fixtures: a private baseline cache, and one planted run for every test that reads one."""

import pytest

from regprim import ExplainConfig, explain, load_run
from regprim.generators.planted import DEFAULT_PLAYERS


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Baseline cache in a temporary folder: tests never touch ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REGPRIM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory, _cache):
    """The built-in planted generator (n = 9, its 3x3 players), default settings, verified and
    written to a folder, read back with load_run. Tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("planted") / "run"
    cfg = ExplainConfig(model="planted", players=list(DEFAULT_PLAYERS), baseline_count=200)
    explain(cfg, out=out, progress=False)
    return load_run(out)


@pytest.fixture(scope="session")
def planted_donor(tmp_path_factory, _cache):
    """The planted generator's image of another seed, same players and baseline (a donor)."""
    out = tmp_path_factory.mktemp("planted-donor") / "run"
    cfg = ExplainConfig(model="planted", players=list(DEFAULT_PLAYERS), baseline_count=200, seed=5)
    explain(cfg, out=out, progress=False, verify=False)
    return load_run(out)
