# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""``PATCH /v1/schedules/{id}`` over real HTTP against a real ``orchestrator serve``: the
fields given change (named as in the create body), the answer is the updated record,
refusals are the one error shape and change nothing."""

from __future__ import annotations

from typing import Any

import pytest

from .gateway_support import Gateway, gateway, gateway_extra  # noqa: F401
from .test_gateway_api import error_of

EVERY = {"type": "interval", "intervalSeconds": 600}


def a_schedule(gateway: Gateway) -> str:
    body = {"input": "digest", "when": EVERY, "budget": "low", "tags": {"team": "x"}}
    made = gateway.client("admin").post("/v1/schedules", json=body)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def test_patch_changes_the_fields_given_and_answers_the_record(gateway: Gateway) -> None:
    admin, reader = gateway.client("admin"), gateway.client("read")
    sid = a_schedule(gateway)
    before = reader.get(f"/v1/schedules/{sid}/describe").json()
    changed = admin.patch(f"/v1/schedules/{sid}", json={"input": "weekly digest",
                                                        "tags": {"tenant": "acme"}})  # fmt: skip
    assert changed.status_code == 200, changed.text
    got = changed.json()
    assert (got["id"], got["input"], got["tags"]) == (sid, "weekly digest", {"tenant": "acme"})
    assert (got["type"], got["intervalSeconds"], got["budget"]) == ("interval", 600, "low")
    assert reader.get(f"/v1/schedules/{sid}").json() == got
    after = reader.get(f"/v1/schedules/{sid}/describe").json()
    assert after["next_runs"] == before["next_runs"] and after["updated_at"]
    assert before["updated_at"] is None
    body = {"when": {"type": "cron", "cron": "30 6 * * 1"}, "timezone": "America/New_York",
            "catch_up": "once", "overlap": "buffer", "budget": "high"}  # fmt: skip
    cron = admin.patch(f"/v1/schedules/{sid}", json=body).json()
    assert (cron["type"], cron["cron"], cron["budget"]) == ("cron", "30 6 * * 1", "high")
    shown = reader.get(f"/v1/schedules/{sid}/describe").json()
    assert (shown["timezone"], shown["catch_up"], shown["overlap"]) == (
        "America/New_York", "once", "buffer",
    )  # fmt: skip
    assert shown["next_runs"][0] == cron["nextRunAt"]


def test_patch_with_empty_tags_clears_them(gateway: Gateway) -> None:
    admin, reader = gateway.client("admin"), gateway.client("read")
    sid = a_schedule(gateway)
    cleared = admin.patch(f"/v1/schedules/{sid}", json={"tags": {}})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["tags"] == {} and cleared.json()["input"] == "digest"
    assert reader.get(f"/v1/schedules/{sid}").json()["tags"] == {}
    assert reader.get(f"/v1/schedules/{sid}/describe").json()["tags"] == {}
    # Left out, they stay as they are.
    admin.patch(f"/v1/schedules/{sid}", json={"tags": {"team": "y"}})
    assert admin.patch(f"/v1/schedules/{sid}", json={"input": "z"}).json()["tags"] == {"team": "y"}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "body"),
        ({"input": "x", "worker": "wrk_1"}, 422, "worker"),
        ({"colour": "blue"}, 422, "colour"),
        ({"input": None}, 422, "input"),
        ({"tags": None}, 422, "tags"),
        ({"budget": "max"}, 422, "budget"),
        ({"catch_up": "always"}, 422, "catch_up"),
        ({"input": " "}, 400, "input"),
        ({"tags": {"Team": "x"}}, 400, "tags"),
        ({"when": {"type": "cron", "cron": "61 * * * *"}}, 400, "when.cron"),
        ({"when": {"type": "scheduled", "date": "2001-01-01T00:00:00Z"}}, 400, "when.date"),
        ({"timezone": "Europe/Berlin"}, 400, "timezone"),  # an interval has no zone
        ({"input": "fine", "when": {"type": "interval", "intervalSeconds": 0}}, 400,
         "when.interval_seconds"),
    ],
)  # fmt: skip
def test_a_refused_patch_names_the_field_and_changes_nothing(
    gateway: Gateway, body: dict[str, Any], status: int, field: str
) -> None:
    admin, reader = gateway.client("admin"), gateway.client("read")
    sid = a_schedule(gateway)
    before = reader.get(f"/v1/schedules/{sid}/describe").json()
    assert error_of(admin.patch(f"/v1/schedules/{sid}", json=body), status)["field"] == field
    assert reader.get(f"/v1/schedules/{sid}/describe").json() == before


def test_patch_is_for_admins_of_live_schedules_that_exist(gateway: Gateway) -> None:
    admin = gateway.client("admin")
    sid = a_schedule(gateway)
    body = {"input": "x"}
    assert error_of(gateway.client("read").patch(f"/v1/schedules/{sid}", json=body), 403)
    acme = gateway.client("admin", tenant="acme")
    assert error_of(acme.patch(f"/v1/schedules/{sid}", json=body), 403)
    for unknown in ("sch_unknown", "nope"):
        missing = error_of(admin.patch(f"/v1/schedules/{unknown}", json=body), 404)
        assert missing["field"] == "schedule_id"
    broken = admin.patch(f"/v1/schedules/{sid}", content=b"{",
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert error_of(broken, 422)["field"] == "body"
    # Not sent as JSON (no content type): 415, as for every /v1 body.
    assert error_of(admin.patch(f"/v1/schedules/{sid}", content=b"{}"), 415)
    assert admin.post(f"/v1/schedules/{sid}/cancel").json() == {"changed": True}
    assert error_of(admin.patch(f"/v1/schedules/{sid}", json=body), 409)["field"] == "schedule_id"
    assert gateway.client("read").get(f"/v1/schedules/{sid}").json()["input"] == "digest"
