"""``/v1/webhooks``: subscriptions to job end and budget events (role admin).

A tenant-bound admin token manages its tenant's subscriptions only: the ones it makes
get its tenant (a body naming another is refused with 403), and another tenant's is
"not found". An admin bound to no tenant manages all, and makes subscriptions for one
tenant or for every event.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from orchestrator import rules
from orchestrator.gateway.auth import Admin, Principal
from orchestrator.gateway.errors import COMMON, ApiError, not_found, responses
from orchestrator.gateway.schemas import WebhookBody, WebhookCreated, WebhookOut
from orchestrator.gateway.state import Gateway, gateway
from orchestrator.hooks.events import subscribe
from orchestrator.store.webhooks import WebhookStore

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=responses(*COMMON))
GW = Annotated[Gateway, Depends(gateway)]


def _mine(who: Principal, record: dict[str, object]) -> bool:
    return who.tenant is None or record.get("tenant") == who.tenant


@router.post("", status_code=201, response_model=WebhookCreated)
def create(body: WebhookBody, who: Admin, gw: GW) -> WebhookCreated:
    """Subscribe a URL to events. The answer holds the signing secret, shown this once."""
    tenant = body.tenant
    if who.tenant is not None:
        if tenant is not None and tenant != who.tenant:
            raise ApiError(403, "a tenant-bound token subscribes only its tenant", field="tenant")
        tenant = who.tenant
    record, secret = subscribe(
        WebhookStore(gw.orch.store), body.url, body.events, tenant,
        allow_private=gw.settings.webhook_allow_private,
    )  # fmt: skip
    return WebhookCreated(**record, secret=secret)


@router.get("", response_model=list[WebhookOut])
def list_(who: Admin, gw: GW) -> list[WebhookOut]:
    """The subscriptions this token may manage (without their secrets)."""
    subs = WebhookStore(gw.orch.store).subscriptions()
    return [WebhookOut(**s) for s in subs if _mine(who, s)]


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
def delete(webhook_id: str, who: Admin, gw: GW) -> Response:
    """End a subscription; its deliveries not yet made are dropped."""
    hooks = WebhookStore(gw.orch.store)
    found = hooks.get(webhook_id) if rules.SUBSCRIPTION_ID.ok(webhook_id) else None
    if found is None or not _mine(who, found):
        raise not_found(f"webhook subscription {rules.shown(webhook_id)}", "webhook_id")
    hooks.remove(webhook_id)
    return Response(status_code=204)
