# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""The interactive API docs are served whole by the gateway: ``/docs`` (Swagger UI) and
``/redoc`` render the operations list in a real browser (Debian's headless Chromium)
that is refused every request to another host, and their assets come with their content
types and caching headers, without a token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.gateway.apidocs import ASSETS_PATH

from .gateway_support import Gateway, gateway, gateway_extra  # noqa: F401
from .test_gateway_browser import CHROMIUM, FLAGS

WAIT_MS = 30_000
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def _links(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


def test_docs_pages_name_only_our_assets(gateway: Gateway) -> None:
    for page in ("/docs", "/redoc"):
        got = httpx.get(gateway.url + page)  # no token, as before
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
        assert got.headers["cache-control"] == "no-cache"
        links = _links(got.text)
        assert links and all(link.startswith(ASSETS_PATH + "/") for link in links), links
        assert "http://" not in got.text and "https://" not in got.text  # no other host
    assert httpx.get(gateway.url + "/openapi.json").json()["paths"]["/v1/jobs"]
    redirect = httpx.get(gateway.url + "/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "oauth2" in redirect.text.lower()


def test_docs_assets_have_types_and_caching_without_a_token(gateway: Gateway) -> None:
    for name, media in ASSETS.items():
        got = httpx.get(f"{gateway.url}{ASSETS_PATH}/{name}")
        assert got.status_code == 200, name
        assert got.headers["content-type"].partition(";")[0] == media, name
        if media.startswith("text/"):  # the Swagger page itself names no charset
            assert got.headers["content-type"].endswith("; charset=utf-8"), name
        assert got.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert got.headers["x-content-type-options"] == "nosniff"
        assert len(got.content) > 1000 and got.headers.get("etag")
        again = httpx.get(
            f"{gateway.url}{ASSETS_PATH}/{name}", headers={"If-None-Match": got.headers["etag"]}
        )
        assert again.status_code == 304 and again.content == b""
    assert httpx.get(f"{gateway.url}{ASSETS_PATH}/nothing.js").status_code == 404
    assert httpx.get(f"{gateway.url}{ASSETS_PATH}/../../__init__.py").status_code == 404


def _rendered(url: str, page_path: str, selector: str) -> tuple[list[str], list[str], list[str]]:
    """Open ``page_path`` in Chromium with every request to another origin refused; the
    texts of ``selector`` once rendered, the URLs the page asked for, and the errors
    its console showed."""
    sync_api = pytest.importorskip("playwright.sync_api")
    asked: list[str] = []
    errors: list[str] = []

    def only_ours(route: Any) -> None:
        asked.append(route.request.url)
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.route("**/*", only_ours)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url + page_path)
            page.wait_for_selector(selector, timeout=WAIT_MS)
            texts = page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")
            page.wait_for_load_state("networkidle", timeout=WAIT_MS)
        finally:
            browser.close()
    return [str(t) for t in texts], asked, errors


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_swagger_ui_renders_operations_with_no_outside_request(gateway: Gateway) -> None:
    paths, asked, errors = _rendered(gateway.url, "/docs", ".opblock-summary-path[data-path]")
    assert "/v1/jobs" in {p.replace("\u200b", "") for p in paths}, paths
    assert len(paths) >= 25
    outside = [u for u in asked if not u.startswith(gateway.url + "/")]
    assert not outside, outside
    assert f"{gateway.url}{ASSETS_PATH}/swagger-ui-bundle.js" in asked
    assert f"{gateway.url}/openapi.json" in asked
    assert not errors, errors  # its inline script ran under the page's policy


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_redoc_renders_operations_with_no_outside_request(gateway: Gateway) -> None:
    sections, asked, errors = _rendered(gateway.url, "/redoc", "[data-section-id^='operation/']")
    assert len(sections) >= 25
    outside = [u for u in asked if not u.startswith(gateway.url + "/")]
    assert not outside, outside
    assert f"{gateway.url}{ASSETS_PATH}/redoc.standalone.js" in asked
    # only ReDoc's vendor logo, which the page's policy refused rather than fetched
    assert all("logo-mini.svg" in e for e in errors), errors
