"""Webhooks against a real Redis and a real receiver over HTTP: signatures (verified by
the ``standardwebhooks`` package), one ``webhook-id`` across a redelivery, backoff, dead
letters and replay (through the CLI), and the targets refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from standardwebhooks import Webhook

from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.hooks import delivery, events, signing
from orchestrator.hooks.targets import check_target
from orchestrator.settings import Settings
from orchestrator.store.jobs import now_ms
from orchestrator.store.webhooks import WebhookStore

from .webhook_receiver import Receiver
from .webhook_receiver import receiver as receiver  # the fixture


def _settings(orch: Orchestrator, **changes: object) -> Settings:
    base = {"webhook_allow_private": True, "webhook_max_attempts": 3,
            "webhook_backoff_seconds": 0.5, "webhook_timeout_seconds": 5}  # fmt: skip
    return orch.settings.model_copy(update={**base, **changes})


def _due(hooks: WebhookStore) -> dict[str, float]:
    return dict(hooks.r.zrange(hooks.keys.webhooks_due, 0, -1, withscores=True))


def test_signature_verifies_with_standard_webhooks() -> None:
    secret = signing.new_secret()
    body = b'{"type": "job.completed"}'
    headers = signing.headers(secret, "msg_1", 1_700_000_000, body)
    assert headers["webhook-signature"].startswith("v1,")
    now = signing.headers(secret, "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, now) == {"type": "job.completed"}
    with pytest.raises(Exception, match="signature"):
        Webhook(signing.new_secret()).verify(body, now)


def test_redelivery_keeps_its_id_and_dead_letters_replay(
    orch: Orchestrator, receiver: Receiver, env: dict[str, str]
) -> None:
    hooks = WebhookStore(orch.store)
    sub, secret = events.subscribe(hooks, receiver.url, ["job.cancelled"], None,
                                   allow_private=True)  # fmt: skip
    assert "secret" not in json.dumps(hooks.subscriptions())  # listing never holds it
    settings = _settings(orch)

    # A 500, then a 200: the same event twice under one webhook-id.
    receiver.script = [500]
    job = orch.submit("stop me", tags={"tenant": "acme"})
    orch.cancel(job.id, reason="not needed")
    (delivery_id,) = _due(hooks)
    before = now_ms()
    assert delivery.deliver(settings, orch.store, delivery_id) == "retry"
    assert _due(hooks)[delivery_id] >= before + 500  # backed off
    assert delivery.deliver(settings, orch.store, delivery_id) == "delivered"
    assert delivery.deliver(settings, orch.store, delivery_id) == "skipped"
    got = receiver.wait_for(2)
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    assert got[0].headers["webhook-timestamp"] <= got[1].headers["webhook-timestamp"]
    kept = receiver.deduped(secret)
    (event,) = kept.values()
    assert event["type"] == "job.cancelled" and event["data"]["job_id"] == job.id
    assert event["data"]["tags"] == {"tenant": "acme"} and "not needed" in event["data"]["error"]
    assert _due(hooks) == {} and orch.store.r.ttl(hooks.keys.webhook_delivery(delivery_id)) > 0
    # Recording the same end again adds nothing.
    assert events.job_ended(orch.store, job.id) == 0 and _due(hooks) == {}

    # Every attempt fails: dead, listed by the CLI, replayed with the same id.
    receiver.script = [503, 503, 503]
    other = orch.submit("stop me too")
    orch.cancel(other.id)
    (dead_id,) = _due(hooks)
    outcomes = [delivery.deliver(settings, orch.store, dead_id) for _ in range(3)]
    assert outcomes == ["retry", "retry", "failed"]
    cli = [sys.executable, "-m", "orchestrator", "webhooks"]
    listed = subprocess.run([*cli, "list-failed", "--json"], env=env, capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    (failed,) = json.loads(listed.stdout)
    assert failed["id"] == dead_id and failed["attempts"] == "3"
    assert failed["last_error"] == "answered 503" and "payload" not in failed
    assert _due(hooks) == {}
    replay = subprocess.run([*cli, "replay", dead_id], env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert delivery.send_due(orch.app, orch.store) == 1  # the sweep sends it again
    assert delivery.deliver(settings, orch.store, dead_id) == "delivered"
    assert hooks.dead() == []
    ids = [r.headers["webhook-id"] for r in receiver.wait_for(6)[2:]]
    assert len(set(ids)) == 1  # one event, four attempts
    again = subprocess.run([*cli, "replay", dead_id], env=env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert again.returncode != 0 and "error:" in again.stderr and "id" in again.stderr

    # A subscription deleted before its turn: its delivery is dropped, nothing sent.
    third = orch.submit("and me")
    orch.cancel(third.id)
    (dropped,) = _due(hooks)
    assert hooks.remove(sub["id"])
    assert delivery.deliver(settings, orch.store, dropped) == "dropped"
    assert len(receiver.got) == 6 and _due(hooks) == {}


def test_tenants_get_their_own_events(orch: Orchestrator, receiver: Receiver) -> None:
    hooks = WebhookStore(orch.store)
    acme, _ = events.subscribe(hooks, receiver.url, ["job.cancelled"], "acme",
                               allow_private=True)  # fmt: skip
    every, _ = events.subscribe(hooks, receiver.url, ["job.failed", "budget.threshold"], None,
                                allow_private=True)  # fmt: skip
    mine = orch.submit("a", tags={"tenant": "acme"})
    theirs = orch.submit("b", tags={"tenant": "bolt"})
    orch.cancel(mine.id)
    orch.cancel(theirs.id)
    subs = [hooks.delivery(d)["subscription"] for d in _due(hooks)]  # type: ignore[index]
    assert subs == [acme["id"]]  # bolt's job: acme does not get it; `every` wants no cancels
    # A budget cap's warn line crossed: every-event subscriptions get it once per period.
    orch.budgets.set_cap(scope="global", period="day", limit_usd="100", warn_at=0.01)
    for i in range(2):
        orch.rt.budgets.reserve(orch.submit(f"spend {i}"))
    budget = [d for d in _due(hooks) if hooks.delivery(d)["event"] == "budget.threshold"]  # type: ignore[index]
    assert len(budget) == 1 and hooks.delivery(budget[0])["subscription"] == every["id"]  # type: ignore[index]
    payload = json.loads(hooks.delivery(budget[0])["payload"])  # type: ignore[index]
    assert payload["data"]["cap"] and payload["data"]["scope"] == "global"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://localhost/", "http://10.1.2.3/", "http://[::1]/",
            "https://169.254.169.254/latest/meta-data", "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/"],
)  # fmt: skip
def test_private_targets_refused(url: str) -> None:
    with pytest.raises(InputError) as refused:
        check_target(url, allow_private=False)
    assert refused.value.field == "url"
    check_target(url, allow_private=True)  # allowed by the setting (resolves: no error)


@pytest.mark.parametrize(
    ("url", "events_", "field"),
    [("ftp://example.com/", ["job.failed"], "url"),
     ("http://u:p@example.com/", ["job.failed"], "url"),
     ("http://exa mple.com/", ["job.failed"], "url"), ("http://example.com/", [], "events"),
     ("http://example.com/", ["job.done"], "events"), ("/relative", ["job.failed"], "url")],
)  # fmt: skip
def test_bad_subscriptions_refused(
    orch: Orchestrator, url: str, events_: list[str], field: str
) -> None:
    hooks = WebhookStore(orch.store)
    with pytest.raises(InputError) as refused:
        events.subscribe(hooks, url, events_, None, allow_private=True)
    assert refused.value.field == field and hooks.subscriptions() == []


def test_a_target_refused_when_delivering(orch: Orchestrator, receiver: Receiver) -> None:
    hooks = WebhookStore(orch.store)
    events.subscribe(hooks, receiver.url, ["job.cancelled"], None, allow_private=True)
    job = orch.submit("x")
    orch.cancel(job.id)
    (delivery_id,) = _due(hooks)
    strict = _settings(orch, webhook_allow_private=False, webhook_max_attempts=1)
    assert delivery.deliver(strict, orch.store, delivery_id) == "failed"
    assert receiver.got == []  # nothing was sent to the loopback address
    (dead,) = hooks.dead()
    assert dead["last_error"].startswith("target refused: its host resolves to a loopback")


def test_cli_create_list_delete(env: dict[str, str], receiver: Receiver) -> None:
    cli = [sys.executable, "-m", "orchestrator", "webhooks"]

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    refused = run("create", receiver.url, "--event", "job.failed")
    assert refused.returncode != 0 and "url" in refused.stderr and "loopback" in refused.stderr
    assert "Traceback" not in refused.stderr
    made = run("create", receiver.url, "--event", "job.failed", "--event", "job.completed",
               "--tenant", "acme", "--json", WEBHOOK_ALLOW_PRIVATE="true")  # fmt: skip
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    assert record["secret"].startswith("whsec_") and record["tenant"] == "acme"
    assert record["events"] == ["job.completed", "job.failed"]
    listed = run("list", "--json")
    assert json.loads(listed.stdout) == [{k: v for k, v in record.items() if k != "secret"}]
    assert record["secret"] not in listed.stdout
    assert run("delete", record["id"], "--json").returncode == 0
    assert json.loads(run("list", "--json").stdout) == []
    missing = run("delete", record["id"])
    assert missing.returncode != 0 and "no webhook subscription" in missing.stderr
