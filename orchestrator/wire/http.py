"""The httpx clients both Workers clients send through, and the requests they send.

Two things httpx does on every exchange that this API never needs are left out:

- **Cookies.** The API authenticates every request by its Bearer header and sets none,
  yet httpx looks for them in every answer, building an ``email`` message and a
  ``urllib`` request to do it: ~60 µs an exchange, a tenth of an instant job's HTTP CPU.
  These clients keep none and send none (a balancer's sticky cookie on the way is
  dropped: the API holds no session to stick to).
- **Its request building's URL work** (see :func:`build_request`).
"""

from __future__ import annotations

from http.cookiejar import Cookie, CookieJar
from typing import Any

import httpx

from orchestrator.wire.routes import Call


class _KeepNone(CookieJar):
    def set_cookie(self, cookie: Cookie) -> None:
        return None


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


_NONE = _NoCookies(_KeepNone())


class _KeepsNoCookies:
    @property
    def cookies(self) -> httpx.Cookies:
        return _NONE

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise AttributeError("the Workers API clients keep no cookies")


class Client(_KeepsNoCookies, httpx.Client):
    """An httpx client that keeps no cookies."""


class AsyncClient(_KeepsNoCookies, httpx.AsyncClient):
    """An httpx async client that keeps no cookies."""


def build_request(
    http: Client | AsyncClient, call: Call, stream_timeout: httpx.Timeout | None
) -> httpx.Request:
    """The call's request; ``stream_timeout`` (for a stream) replaces the client's default.

    What ``http.build_request`` makes, at a third of its cost: the URL is parsed once, not
    three times over (the path, the merge with the base URL, the request's own copy)."""
    url = httpx.URL(f"{str(http.base_url).rstrip('/')}/{call.path.lstrip('/')}")
    headers = httpx.Headers(http.headers)
    headers.update(call.headers)
    timeout = http.timeout if stream_timeout is None else stream_timeout
    return httpx.Request(call.method, url, params=call.params or None, headers=headers,
                         json=call.json, extensions={"timeout": timeout.as_dict()})  # fmt: skip
