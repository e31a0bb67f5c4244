"""The operator's web console, served at ``/``: static HTML, JavaScript and CSS shipped
in the package (no CDN, no build step), speaking only the ``/v1`` API with the token the
operator logs in with (kept in the tab's ``sessionStorage``, sent as a bearer header,
never put in a URL).

The page is locked to its own origin by a Content-Security-Policy: scripts, styles and
connections from this gateway only, no inline script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount(app: FastAPI) -> None:
    """Serve the console: ``/`` is its page, ``/console/*`` its scripts and styles."""
    app.mount("/console", StaticFiles(directory=STATIC), name="console")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=_HEADERS)
