"""The interactive API docs, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with their
scripts, styles and icon served by the gateway itself from the ``fastapi-offline``
package: FastAPI's own pages load them from a CDN, and stay blank on a network without
the internet.

The pages and ``/openapi.json`` need no token, as before; neither do the assets, under
``/docs-assets/<package version>/``. A new version of the package is a new path, so the
assets are cached for a year as immutable, and the pages themselves are revalidated
(``no-cache``) so that they name the current path. A Content-Security-Policy keeps each
page to this gateway: ReDoc's sidebar, for one, would fetch its logo from its vendor's
CDN.
"""

from __future__ import annotations

import re
from base64 import b64encode
from hashlib import sha256
from importlib.metadata import version
from importlib.resources import files
from os import PathLike, stat_result
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
ASSETS_PATH = f"/docs-assets/{version('fastapi-offline')}"
_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
_ASSET_HEADERS = {
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Both UIs set inline styles, show data: and blob: images, and ReDoc searches in a
#: worker it makes from a blob.
_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "script-src 'self'"
)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


class _Assets(StaticFiles):
    """The package's files with their caching headers (StaticFiles sets the content
    type from the name, an ETag and Last-Modified)."""

    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_ASSET_HEADERS)
        return response


def _locked(page: HTMLResponse) -> HTMLResponse:
    """``page`` with its headers, and a policy that lets its own inline script run (by
    its hash: the script names the request's root path, so it is hashed as sent)."""
    hashes = "".join(
        f" 'sha256-{b64encode(sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(bytes(page.body))
    )
    page.headers.update(_PAGE_HEADERS)
    page.headers["Content-Security-Policy"] = _POLICY + hashes
    return page


def mount(app: FastAPI) -> None:
    """Serve the docs pages and their assets; ``app`` is made with ``docs_url=None`` and
    ``redoc_url=None`` so that FastAPI's CDN pages are not there too."""
    app.mount(ASSETS_PATH, _Assets(directory=_ASSETS_DIR), name="docs-assets")

    def _root(request: Request) -> str:
        # behind a proxy that strips a prefix, the browser's URLs need it back
        return str(request.scope.get("root_path", ""))

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return _locked(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_PATH}",
                swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return _locked(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )
