"""`regprim serve`: the JSON API's error paths with an HTTP client, and the page driven in
headless chromium (toggle a primitive, reconstruct three cells of an n = 36 run, a 4xx)."""

import base64
import io
import socket
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_report import CHROMIUM, needs_browser

from regprim import ExplainConfig, explain, load_run
from regprim.app.serve import create_app


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """The planted generator on its whole 6x6 grid (n = 36, a compact run)."""
    out = tmp_path_factory.mktemp("grid") / "run"
    cfg = ExplainConfig(model="planted", players="all", baseline_count=200)
    explain(cfg, out=out, progress=False, verify=False)
    return load_run(out)


@pytest.fixture(scope="module")
def runs(planted_run, planted_donor, grid_run):
    return [planted_run, planted_donor, grid_run]


@pytest.fixture(scope="module")
def client(runs, tmp_path_factory):
    return TestClient(create_app(runs, edits=tmp_path_factory.mktemp("edits")))


def decode(url: str) -> np.ndarray:
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(float)


def test_runs_are_listed_with_their_components(client, planted_run):
    listed = client.get("/api/runs").json()
    assert [r["n"] for r in listed] == [9, 9, 36]
    top = listed[0]["components"][0]
    assert top["mask"] == planted_run.ranked[0] and top["norm"] == planted_run.norm(top["mask"])


def test_bad_requests_get_a_4xx_naming_the_field(client):
    r = client.post("/api/reconstruct", json={"run": 7, "cells": [14]})
    assert r.status_code == 404 and r.json()["detail"].startswith("run:")
    r = client.post("/api/reconstruct", json={"run": 0, "cells": [0]})
    assert r.status_code == 422 and r.json()["detail"].startswith("cells:")
    r = client.post("/api/reconstruct", json={"run": 0, "cells": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "cells"
    r = client.post("/api/edit", json={"run": 0, "weights": {"abc": 1}})
    assert r.status_code == 422 and "weights" in r.json()["detail"][0]["loc"]
    r = client.post("/api/edit", json={"run": 0, "weights": {"3": 0}})  # 3 is not a component
    assert r.status_code == 422 and "no non-zero component" in r.json()["detail"]
    r = client.post("/api/edit", json={"run": 0, "transplant": {"donor": 2, "cells": [14]}})
    assert r.status_code == 422 and r.json()["detail"].startswith("transplant:")
    assert "players" in r.json()["detail"]
    r = client.post("/api/edit", json={"run": 0, "transplant": {"donor": 1, "cells": [0]}})
    assert r.status_code == 422 and r.json()["detail"].startswith("transplant: cells [0]")
    r = client.post("/api/save", json={"run": 0, "name": "../outside"})
    assert r.status_code == 422 and r.json()["detail"].startswith("name:")
    assert client.get("/api/jobs/nope").status_code == 404


def test_edit_invert_and_save_through_the_api(client, planted_run):
    mask = planted_run.ranked[0]
    r = client.post("/api/edit", json={"run": 0, "weights": {str(mask): 0}}).json()
    assert r["cells"] == sorted(planted_run.cells(mask)) and r["metrics"]["locality"] < 1e-5
    job = client.post("/api/invert", json={"run": 0, "weights": {str(mask): 0}}).json()["job"]
    for _ in range(200):
        status = client.get(f"/api/jobs/{job}").json()
        if status["done"]:
            break
        time.sleep(0.1)
    assert status["done"] and "error" not in status and status["residual"] < 0.05
    saved = client.post("/api/save", json={"run": 0, "weights": {str(mask): 0}, "name": "e1"})
    assert saved.status_code == 200 and saved.json()["folder"].endswith("e1")
    again = client.post("/api/save", json={"run": 0, "weights": {str(mask): 0}, "name": "e1"})
    assert again.status_code == 409


def test_concurrent_requests_get_their_own_answers(client, planted_run):
    masks = planted_run.ranked[:4]
    answers = {}

    def ask(mask):
        r = client.post("/api/edit", json={"run": 0, "weights": {str(mask): 0}})
        answers[mask] = r.json()["cells"]

    threads = [threading.Thread(target=ask, args=(m,)) for m in masks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {m: sorted(planted_run.cells(m)) for m in masks}


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(runs, edits=tmp_path_factory.mktemp("served-edits"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


@needs_browser
def test_the_live_page_in_headless_chromium(server, planted_run, grid_run):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server)
        page.wait_for_selector("#components input[type=checkbox]")
        # the report's grid (static/grid.js): cells at the grid's own edges, only players live
        tops = page.evaluate(
            "[...document.querySelectorAll('#grid .cell')].map((e) => parseFloat(e.style.top))"
        )
        rows, cols = planted_run.grid.rows, planted_run.grid.cols
        scale = 256 / planted_run.image.shape[1]
        edges = planted_run.grid.row_edges()
        assert tops == [
            pytest.approx(edges[i // cols] * scale, abs=0.01) for i in range(rows * cols)
        ]
        other = next(c for c in range(rows * cols) if c not in planted_run.players)
        page.click(f"#grid .cell[data-cell='{other}']")
        assert page.get_attribute(f"#grid .cell[data-cell='{other}']", "class") == "cell"
        player = planted_run.players[0]
        page.click(f"#grid .cell[data-cell='{player}']")
        assert "on" in page.get_attribute(f"#grid .cell[data-cell='{player}']", "class")
        page.click("#clear")
        # toggle the largest primitive off: the image changes only in its cells
        mask = planted_run.ranked[0]
        page.uncheck(f"#components input[type=checkbox][data-mask='{mask}']")
        page.wait_for_function("document.getElementById('result').src.startsWith('data:')")
        edited = decode(page.get_attribute("#result", "src"))
        target = decode(page.get_attribute("#target", "src"))
        change = np.abs(edited - target).sum(-1)
        inside = planted_run.grid.cell_masks()[planted_run.cells(mask)].any(0).numpy()
        assert change[inside].sum() > 100 and change[~inside].max() <= 1  # 8-bit rounding
        assert "locality" in page.inner_text("#metrics")
        # three cells of the n = 36 run, reconstructed live
        page.select_option("#run", "2")
        for cell in (14, 15, 21):
            page.click(f"#grid .cell[data-cell='{cell}']")
        page.click("#reconstruct")
        page.wait_for_function("document.getElementById('metrics').textContent.includes('meet')")
        assert "14,15,21" in page.inner_text("#result-title")
        image, _ = grid_run.reconstruct([14, 15, 21], grid_run.generator())
        want = np.asarray(
            Image.fromarray(
                ((image - grid_run.value_range[0]) / np.ptp(grid_run.value_range))
                .clamp(0, 1)
                .mul(255)
                .round()
                .to(torch.uint8)
                .permute(1, 2, 0)
                .numpy()
            ).convert("RGB")
        ).astype(float)
        got = decode(page.get_attribute("#result", "src"))
        assert np.abs(got - want).max() <= 1
        # a bad request: no cells selected
        page.click("#clear")
        page.click("#reconstruct")
        page.wait_for_function("document.getElementById('message').textContent.includes('422')")
        assert "cells" in page.inner_text("#message")
        assert not errors
        browser.close()
