"""Short-lived signed read links: a URL that lets its holder read one job's live updates
until it expires, without an API token (a backend hands it to a browser).

The link token is ``<job id>.<expiry s>.<HMAC-SHA256 of both, base64url>`` under the
``GATEWAY_SIGNING_KEY``. It travels in the URL path (``/v1/links/<token>/events``) and
:func:`redact` takes it out of every path that is logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from orchestrator import rules

LINK_PATH = re.compile(r"/v1/links/[^/?#]+")


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(key: bytes, job_id: str, expires_at: int) -> str:
    message = f"{job_id}.{expires_at}"
    return f"{message}.{_mac(key, message)}"


def verify(key: bytes, token: str, now: float | None = None) -> str | None:
    """The job id a valid, unexpired link token names; None otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        return None
    job_id, expires, mac = parts
    if not rules.JOB_ID.ok(job_id):
        return None
    if not hmac.compare_digest(_mac(key, f"{job_id}.{expires}"), mac):
        return None
    if int(expires) < (time.time() if now is None else now):
        return None
    return job_id


def redact(path: str) -> str:
    """``path`` with any link token replaced, for logs."""
    return LINK_PATH.sub("/v1/links/***", path)
