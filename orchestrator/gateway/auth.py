"""Who is asking: bearer tokens, roles, tenants and the per-token rate limit.

Roles, each including the one before: ``read`` (GET routes), ``submit`` (also submit and
continue jobs), ``admin`` (everything: schedules' and controls' writes). A token bound
to a tenant sees only jobs tagged ``tenant=<its tenant>`` (another job is "not found",
never "forbidden", so its existence does not leak), its submissions get that tag set by
the server (a body naming another tenant is refused with 403), and it reaches neither
schedules nor the money routes, which are not per tenant.
"""

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.gateway.errors import ApiError, error_response, not_found
from orchestrator.gateway.state import Gateway
from orchestrator.jobs.model import Job

Role = Literal["read", "submit", "admin"]
ROLES: tuple[Role, ...] = ("read", "submit", "admin")
TENANT_TAG = "tenant"

_bearer = HTTPBearer(auto_error=False, description="an API token (`orchestrator tokens create`)")


@dataclass(frozen=True)
class Principal:
    token_id: str
    role: Role
    tenant: str | None

    def may(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, job: Job) -> bool:
        return self.tenant is None or job.tags.get(TENANT_TAG) == self.tenant

    def visible(self, job: Job | None, job_id: str) -> Job:
        """The job if this token may see it; 404 otherwise (unknown or another tenant's)."""
        if job is None or not self.sees(job):
            raise not_found(f"job {job_id}", "job_id")
        return job

    def tags_for(self, tags: dict[str, str]) -> dict[str, str]:
        """The tags a submission is stored with: a tenant's own tag forced."""
        if self.tenant is None:
            return tags
        given = tags.get(TENANT_TAG)
        if given is not None and given != self.tenant:
            raise ApiError(403, "a tenant-bound token submits only as its tenant", field="tags")
        return {**tags, TENANT_TAG: self.tenant}


async def authenticate(request: Request, creds: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller's token, looked up by its hash; 401 if missing or unknown, 429 when its
    bucket is empty. One script on the event loop's Redis client (none while the token is
    held): no thread."""
    gw: Gateway = request.app.state.gateway
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise ApiError(401, "a bearer token is required", field="authorization",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    s = gw.settings
    found = await gw.token_check.authenticate(
        creds.credentials, s.gateway_rate_per_second, s.gateway_rate_burst
    )
    if found is None:
        raise ApiError(401, "unknown or revoked token", field="authorization",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    record, wait_ms = found
    who = Principal(record["id"], record["role"], record.get("tenant"))
    if wait_ms > 0:
        raise ApiError(429, "too many requests for this token", field="authorization",
                       headers={"Retry-After": str(max(1, math.ceil(wait_ms / 1000)))})  # fmt: skip
    request.state.principal = who
    return who


#: /v1 paths reached without a token: a signed read link is its own credential.
UNAUTHENTICATED_PREFIXES = ("/v1/links/",)


class TokenFirst:
    """Who is asking, settled before anything else about a ``/v1`` request: a caller
    with no token, or an unknown one, gets its 401 (or 429) before the body is read,
    sized (413), typed (415) or parsed (422), so nothing about the API's rules is told
    to a caller who may not use it. The principal found is kept on the request for the
    routes' dependency, which then looks nothing up again (the token's rate bucket is
    charged once). Anything but an answer of ours (Redis away) is left to the route,
    whose dependency meets it again and answers as every route does (503)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (
            scope["type"] == "http"
            and path.startswith("/v1/")
            and not path.startswith(UNAUTHENTICATED_PREFIXES)
        ):
            request = Request(scope, receive)
            try:
                await authenticate(request, await _bearer(request))
            except ApiError as exc:
                response = error_response(exc.status, exc.message, exc.field, exc.headers)
                await response(scope, receive, send)
                return
            except Exception:  # answered by the route's own check
                pass
        await self.app(scope, receive, send)


def role(needed: Role) -> object:
    """A dependency: the caller, who must hold at least ``needed``."""

    # One dependency (the bearer scheme, for the OpenAPI document, below it), not a
    # chain: each level FastAPI solves costs every request, and this is every route's.
    async def check(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        known = getattr(request.state, "principal", None)  # found by TokenFirst
        who = known if isinstance(known, Principal) else await authenticate(request, creds)
        if not who.may(needed):
            raise ApiError(
                403, f"this needs a token of role {needed} or above", field="authorization"
            )
        return who

    return check


def untenanted(needed: Role) -> object:
    """A dependency: a caller of at least ``needed`` not bound to a tenant."""
    inner = role(needed)

    async def check(who: Annotated[Principal, Depends(inner)]) -> Principal:
        if who.tenant is not None:
            raise ApiError(403, "not available to a tenant-bound token", field="authorization")
        return who

    return check


Reader = Annotated[Principal, Depends(role("read"))]
Submitter = Annotated[Principal, Depends(role("submit"))]
Admin = Annotated[Principal, Depends(role("admin"))]
GlobalReader = Annotated[Principal, Depends(untenanted("read"))]
GlobalAdmin = Annotated[Principal, Depends(untenanted("admin"))]
