"""``GET /v1/me``: who the caller's token is (role and tenant), so a client such as the
console shows only what that token may do. The API enforces roles regardless."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.gateway.auth import Reader
from orchestrator.gateway.errors import COMMON, responses
from orchestrator.gateway.schemas import MeOut

router = APIRouter(prefix="/v1", tags=["tokens"], responses=responses(*COMMON))


@router.get("/me", response_model=MeOut)
async def me(who: Reader) -> MeOut:
    """The token's id, role and tenant (none: every tenant)."""
    return MeOut(token_id=who.token_id, role=who.role, tenant=who.tenant)
