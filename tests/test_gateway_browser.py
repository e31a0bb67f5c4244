# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""A real browser (Debian's headless Chromium, driven by Playwright) on a page that reads
a job's live updates through a signed link with ``EventSource``; the gateway drops the
connection every few events mid-turn, the browser reconnects by itself with
Last-Event-ID, and the page renders every update exactly once."""

from __future__ import annotations

import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.jobs import RedisStore

from .conftest import Emulator
from .gateway_support import start_gateway, worker  # noqa: F401

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>live</title></head>
<body>
<ol id="updates"></ol>
<p id="state">connecting</p>
<script>
  const src = new URLSearchParams(location.search).get("src");
  const list = document.getElementById("updates");
  const state = document.getElementById("state");
  let opens = 0;
  const es = new EventSource(src);
  es.onopen = () => { opens += 1; document.body.dataset.opens = String(opens); };
  es.onmessage = (e) => {
    const li = document.createElement("li");
    li.dataset.id = e.lastEventId;
    li.textContent = e.data;
    list.appendChild(li);
  };
  es.addEventListener("end", (e) => {
    es.close();
    state.textContent = "ended " + JSON.parse(e.data).status;
    document.body.dataset.done = "1";
  });
</script>
</body></html>
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def page_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/live.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_browser_renders_every_update_once_across_server_drops(
    env: dict[str, str], tmp_path: Path, store: RedisStore, emulator: Emulator, worker: Any,
    page_server: str,
) -> None:  # fmt: skip
    sync_api = pytest.importorskip("playwright.sync_api")
    emulator.configure(turn_seconds=3.0, events_per_turn=15)
    gw = start_gateway(env, tmp_path, store, GATEWAY_SSE_MAX_EVENTS="4")
    try:
        api = gw.client("submit")
        job = api.post("/v1/jobs", json={"input": "watch me in a browser"}).json()
        link = api.post(f"/v1/jobs/{job['id']}/links").json()
        src = urllib.parse.quote(gw.url + link["url"], safe="")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = browser.new_page()
                page.goto(f"{page_server}?src={src}")
                page.wait_for_selector("body[data-done='1']", timeout=90_000)
                rendered = page.eval_on_selector_all("li", "els => els.map(e => e.dataset.id)")
                opens = int(page.get_attribute("body", "data-opens") or 0)
                state = page.inner_text("#state")
            finally:
                browser.close()
        stored = store.get_job(job["id"])
        assert stored is not None and stored.worker_id and stored.update_to is not None
        start = stored.update_from or 0
        expected = [str(i) for i in range(start, stored.update_to)]
        assert len(expected) >= 15 and rendered == expected  # every update, once, in order
        assert opens >= 3  # the server dropped it mid-turn and the browser came back
        assert state == "ended completed"
    finally:
        gw.proc.stop()
