"""``/v1/costs``, ``/v1/budgets`` and ``/v1/limits``: the ledger by every dimension over
a period, budget caps and concurrency limits (read: role read; write: role admin).
Not per tenant: untenanted tokens only."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BeforeValidator

from orchestrator import rules
from orchestrator.gateway.auth import GlobalAdmin, GlobalReader
from orchestrator.gateway.errors import COMMON, responses
from orchestrator.gateway.schemas import CapBody, Changed, CostsOut, DailyOut, LimitBody
from orchestrator.gateway.state import Gateway, gateway
from orchestrator.store.keys import LEDGER_DIMENSIONS

router = APIRouter(prefix="/v1", tags=["money"], responses=responses(*COMMON))
GW = Annotated[Gateway, Depends(gateway)]
Row = dict[str, Any]
Dimension = Literal["day", "budget", "tag", "schedule", "worker"]
assert set(Dimension.__args__) == set(LEDGER_DIMENSIONS)  # type: ignore[attr-defined]
#: A UTC day, exactly YYYY-MM-DD as the CLI takes it: pydantic alone would take a
#: date-time at midnight or a Unix timestamp for one.
Day = Annotated[date, BeforeValidator(rules.check_validator(rules.day))]


@router.get("/costs", response_model=CostsOut)
def costs(
    _: GlobalReader,
    gw: GW,
    by: Dimension = "day",
    since: Annotated[Day | None, Query(description="first UTC day, YYYY-MM-DD (by=day)")] = None,
    until: Annotated[Day | None, Query(description="last UTC day, YYYY-MM-DD (by=day)")] = None,
) -> CostsOut:
    """Cost and usage rows of one dimension (micro-dollars and tokens) and the total."""
    return CostsOut(**gw.orch.costs(by, since=since, until=until))


@router.get("/costs/daily", response_model=DailyOut)
def daily(
    _: GlobalReader,
    gw: GW,
    since: Annotated[Day, Query(description="first UTC day, YYYY-MM-DD")],
    until: Annotated[Day, Query(description="last UTC day, YYYY-MM-DD")],
    by: Literal["budget", "schedule", "tag"] = "tag",
    tag_key: Annotated[str, Query(description="the tag whose values stack (by=tag)")] = "tenant",
    top: Annotated[int, Query(ge=1, le=20)] = 8,
) -> DailyOut:
    """Money per UTC day over a period (at most 366 days), stacked by tier, schedule or
    a tag's values: the ``top`` values by all-time spend, the rest as ``other``."""
    rules.TAG_KEY.check(tag_key, "tag_key")
    return DailyOut(**gw.orch.store.daily(by, since, until, tag_key=tag_key, top=top))


@router.get("/budgets", response_model=list[Row])
def budgets(_: GlobalReader, gw: GW) -> list[Row]:
    """Per cap: spent, reserved, cap and what is left (micro-dollars) in its period."""
    return gw.orch.budgets.status()


@router.put("/budgets", response_model=Row)
def set_cap(body: CapBody, _: GlobalAdmin, gw: GW) -> Row:
    """Create or replace a cap."""
    cap = gw.orch.budgets.set_cap(**body.model_dump())
    return cap.model_dump(mode="json")


@router.delete("/budgets", response_model=Changed)
def remove_cap(
    _: GlobalAdmin, gw: GW, scope: str, period: Literal["day", "month"] = "day"
) -> Changed:
    return Changed(changed=gw.orch.budgets.remove_cap(scope, period))


@router.get("/limits", response_model=list[Row])
def limits(_: GlobalReader, gw: GW) -> list[Row]:
    """Per limited key: the limit, running and waiting jobs."""
    return gw.orch.limits.status()


@router.put("/limits", response_model=Changed)
def set_limit(body: LimitBody, _: GlobalAdmin, gw: GW) -> Changed:
    gw.orch.limits.set(body.key, body.limit)
    return Changed(changed=True)


@router.delete("/limits", response_model=Changed)
def remove_limit(_: GlobalAdmin, gw: GW, key: str) -> Changed:
    return Changed(changed=gw.orch.limits.remove(key))
