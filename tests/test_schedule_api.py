"""Schedules against a real Redis (and the emulator), without Celery processes: the API,
the claim protocol under concurrency, the run step's dedupe and overlap, the CLI."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from orchestrator.cli import main
from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.schedules.run import run_slot
from orchestrator.schedules.timing import plan
from orchestrator.settings import load_settings
from orchestrator.store.jobs import now_ms
from orchestrator.store.schedules import Claim, ScheduleStore

from .conftest import Emulator
from .processes import joined


class FakeApp:
    """Stands in for the Celery app as a producer: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []
        self.conf: dict[str, Any] = {}  # a Celery app's configuration (a beat's grace)

    def send_task(self, name: str, args: list[Any], **_: Any) -> None:
        self.sent.append((name, list(args)))


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def orch(
    redis_url: str, key_prefix: str, emulator: Emulator, app: FakeApp
) -> Iterator[Orchestrator]:
    settings = load_settings(
        redis_url=redis_url, key_prefix=key_prefix, max_input_chars=1000,
        workers_api_url=emulator.url, workers_api_key=emulator.api_key,
    )  # fmt: skip
    with Orchestrator(settings, app=app) as o:  # type: ignore[arg-type]
        yield o


def our_keys(orch: Orchestrator) -> list[str]:
    r = redis.Redis.from_url(orch.settings.redis_url or "", decode_responses=True)
    return sorted(r.scan_iter(f"{orch.settings.key_prefix}:*"))


def a_worker(orch: Orchestrator) -> str:
    return orch.rt.client.create("a worker to schedule", budget="low").id


def test_each_kind_round_trips_in_the_reference_shape(orch: Orchestrator) -> None:
    wid = a_worker(orch)
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    made = [
        orch.schedules.create(wid, "at", {"type": "scheduled", "date": soon}),
        orch.schedules.create(wid, "in", {"type": "delayed", "delayInSeconds": 90}),
        orch.schedules.create(wid, "cron", {"type": "cron", "cron": "0 7 * * *"}, budget="low"),
        orch.schedules.create(wid, "every", {"type": "interval", "interval_seconds": 60}),
    ]
    listing = orch.schedules.list(wid).to_wire()
    assert listing["workerId"] == wid
    assert [s["type"] for s in listing["schedules"]] == ["scheduled", "delayed", "cron", "interval"]
    assert listing["schedules"][1]["delayInSeconds"] == 90
    assert listing["schedules"][2]["budget"] == "low"
    assert all(s["nextRunAt"].endswith("Z") for s in listing["schedules"])
    described = orch.schedules.describe(made[2].id)
    assert len(described["next_runs"]) == 10 and described["counts"]["runs"] == 0
    assert orch.schedules.cancel(made[0].id).to_wire() == {"cancelled": True}
    assert orch.schedules.cancel(made[0].id).to_wire() == {"cancelled": False}
    assert len(orch.schedules.list(wid).schedules) == 3
    assert [r["id"] for r in orch.schedules.list_all()] == [s.id for s in made[1:]]
    assert len(orch.schedules.list_all(include_finished=True)) == 4


def test_pause_leaves_the_due_index_and_resume_returns(orch: Orchestrator) -> None:
    s = orch.schedules.create(None, "tick", {"type": "interval", "intervalSeconds": 5})
    r = orch.store.r
    due = orch.store.keys.schedules_due
    assert r.zscore(due, s.id) is not None
    assert orch.schedules.pause(s.id) and not orch.schedules.pause(s.id)
    assert r.zscore(due, s.id) is None and orch.schedules.get(s.id).status == "paused"
    assert orch.schedules.describe(s.id)["next_runs"] == []
    assert orch.schedules.resume(s.id)
    assert float(r.zscore(due, s.id)) > now_ms()


def create(*args: Any, **kw: Any) -> Any:
    return lambda o: o.schedules.create(*args, **kw)


CRON = {"type": "cron", "cron": "* * * * *"}
SOON = {"type": "delayed", "delayInSeconds": 1}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (create(None, "x", {"type": "cron", "cron": "61 * * * *"}), "when.cron"),
        (create(None, "x", {"type": "cron", "cron": "0 0 30 2 *"}), "when.cron"),
        (create(None, "x", {"type": "interval", "intervalSeconds": 0}), "when.interval_seconds"),
        (create(None, "x", {"type": "delayed", "delayInSeconds": -1}), "when.delay_in_seconds"),
        (create(None, "x", {"type": "scheduled", "date": "2001-01-01T00:00:00Z"}), "when.date"),
        (create(None, "", SOON), "input"),
        (create(None, "x", SOON, budget="max"), "budget"),
        (create(None, "x", CRON, timezone="Nowhere/City"), "timezone"),
        (create("wrk_unknown", "x", SOON), "worker_id"),
        (lambda o: o.schedules.cancel("sch_unknown"), "schedule_id"),
        (lambda o: o.schedules.describe("nope"), "schedule_id"),
        (lambda o: o.schedules.trigger("sch_unknown"), "schedule_id"),
        (lambda o: o.schedules.history("sch_unknown"), "schedule_id"),
        (lambda o: o.schedules.import_upstream("wrk_unknown"), "worker_id"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    orch: Orchestrator, app: FakeApp, call: Any, field: str
) -> None:
    before = our_keys(orch)
    with pytest.raises(InputError) as err:
        call(orch)
    assert err.value.field == field, err.value
    assert our_keys(orch) == before and app.sent == []


def test_racing_claimers_claim_each_slot_once(orch: Orchestrator) -> None:
    ss = ScheduleStore(orch.store)
    ids = [
        orch.schedules.create(None, f"s{i}", {"type": "interval", "intervalSeconds": 1}).id
        for i in range(50)
    ]
    anchor = min(orch.schedules.get(i).timing.anchor_ms for i in ids)
    claimed: Counter[str] = Counter()
    lock = threading.Lock()

    def claimer(offset: int) -> None:
        # Eight "beats" replaying the same 5 simulated seconds, out of step.
        timings = ss.timings(ids)
        for step in range(0, 5000, 50):
            now = anchor + 1000 + step + offset
            peek = ss.peek(now, 500, 0, 0)
            claims = [
                Claim(sid, due, plan(timings[sid][0], due, now, "skip", 10_000))
                for sid, due in peek.due
            ]
            won = ss.claim(claims, now)
            with lock:
                claimed.update(won)

    threads = [threading.Thread(target=claimer, args=(i * 7,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        joined(t)
    assert claimed and max(claimed.values()) == 1
    for sid in ids:
        slots = sorted(int(m.split("|")[1]) for m in claimed if m.startswith(sid + "|"))
        t = orch.schedules.get(sid).timing
        assert slots == [t.anchor_ms + k * 1000 for k in range(1, len(slots) + 1)]
        assert len(slots) >= 4
    assert ss.pending() == len(claimed)


def test_run_step_dedupes_and_skips_overlap(orch: Orchestrator, app: FakeApp) -> None:
    s = orch.schedules.create(None, "no worker yet", {"type": "interval", "intervalSeconds": 60})
    slot = now_ms()
    assert run_slot(orch.rt, app, s.id, slot) == "fired"  # type: ignore[arg-type]
    assert run_slot(orch.rt, app, s.id, slot) == "duplicate"  # type: ignore[arg-type]
    first = orch.schedules.history(s.id)
    assert len(first) == 1 and first[0]["status"] == "fired"
    job = orch.get(first[0]["job_id"])
    assert job.kind == "create" and job.schedule_id == s.id
    assert job.idempotency_key == f"sched:{s.id}:{slot}"
    # The first job is still queued: the next slot overlaps and is skipped.
    assert run_slot(orch.rt, app, s.id, slot + 1000) == "skipped"  # type: ignore[arg-type]
    # It finishes, having created a worker: the next run continues that worker.
    orch.store.r.hset(orch.store.keys.job(job.id), "worker_id", "wrk_made_by_first")
    orch.store.transition(job.id, "completed")
    assert run_slot(orch.rt, app, s.id, slot + 2000) == "fired"  # type: ignore[arg-type]
    runs = orch.schedules.history(s.id)
    assert [r["status"] for r in runs] == ["fired", "skipped", "fired"]
    second = orch.get(runs[0]["job_id"])
    assert second.kind == "continue" and second.worker_id == "wrk_made_by_first"
    assert orch.schedules.get(s.id).worker_id == "wrk_made_by_first"
    counts = orch.schedules.describe(s.id)["counts"]
    assert counts["runs"] == 2 and counts["skipped"] == 1 and counts["duplicates"] == 1
    assert [name for name, _ in app.sent] == ["workers.create", "workers.continue"]


def test_buffer_overlap_runs_one_slot_when_the_previous_ends(
    orch: Orchestrator, app: FakeApp
) -> None:
    wid = a_worker(orch)
    s = orch.schedules.create(
        wid, "buffered", {"type": "interval", "intervalSeconds": 60}, overlap="buffer"
    )
    t0 = now_ms()
    verdicts = [run_slot(orch.rt, app, s.id, t0 + i) for i in range(3)]  # type: ignore[arg-type]
    assert verdicts == ["fired", "buffered", "skipped"]
    assert run_slot(orch.rt, app, s.id, t0 + 1) == "wait"  # type: ignore[arg-type]
    first = orch.schedules.history(s.id)[-1]["job_id"]
    orch.store.transition(first, "completed")
    orch.schedules.pause(s.id)  # a paused schedule keeps its buffered run waiting
    assert run_slot(orch.rt, app, s.id, t0 + 1) == "wait"  # type: ignore[arg-type]
    orch.schedules.resume(s.id)
    assert run_slot(orch.rt, app, s.id, t0 + 1) == "fired"  # type: ignore[arg-type]
    assert run_slot(orch.rt, app, s.id, t0 + 1) == "duplicate"  # type: ignore[arg-type]
    statuses = {r["slot_ms"]: r["status"] for r in orch.schedules.history(s.id)}
    assert statuses == {t0: "fired", t0 + 1: "fired", t0 + 2: "skipped"}
    assert orch.store.r.zcard(orch.store.keys.schedules_buffered) == 0


def test_a_batch_of_runs_keeps_going_past_a_bad_slot(
    orch: Orchestrator, app: FakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers_tasks import schedule_tasks

    monkeypatch.setattr(schedule_tasks, "get_runtime", lambda: orch.rt)
    monkeypatch.setattr(schedule_tasks, "app", app)
    a, b = (
        orch.schedules.create(None, f"run {n}", {"type": "interval", "intervalSeconds": 60})
        for n in "ab"
    )
    real = schedule_tasks.run_slot

    def run_slot_failing_on_b(rt: Any, app_: Any, sid: str, slot: int) -> str:
        if sid == b.id:
            raise RuntimeError("boom")
        return real(rt, app_, sid, slot)

    monkeypatch.setattr(schedule_tasks, "run_slot", run_slot_failing_on_b)
    slot = now_ms()
    runs: list[list[str | int]] = [[a.id, slot], [b.id, slot], [a.id, slot], ["sch_gone", slot]]
    verdicts = schedule_tasks.run_schedules.run(runs)
    assert verdicts == {"fired": 1, "error": 1, "duplicate": 1, "gone": 1}
    assert [name for name, _ in app.sent] == ["workers.create"]
    assert len(orch.schedules.history(a.id)) == 1


def test_trigger_claims_then_sends(orch: Orchestrator, app: FakeApp) -> None:
    s = orch.schedules.create(None, "now please", {"type": "cron", "cron": "0 0 1 1 *"})
    slot = orch.schedules.trigger(s.id)
    assert app.sent == [("workers.run_schedule", [s.id, slot])]
    assert ScheduleStore(orch.store).pending() == 0
    orch.schedules.cancel(s.id)
    with pytest.raises(InputError):
        orch.schedules.trigger(s.id)
    assert run_slot(orch.rt, app, s.id, slot) == "gone"  # type: ignore[arg-type]


def test_import_copies_upstream_schedules_and_cancels_them(orch: Orchestrator) -> None:
    client = orch.rt.client
    wid = a_worker(orch)
    client.create_schedule(wid, input="hourly", when={"type": "cron", "cron": "0 * * * *"})
    client.create_schedule(wid, input="often", when={"type": "interval", "intervalSeconds": 30})
    result = orch.schedules.import_upstream(wid, cancel_upstream=True)
    assert sorted(s.type for s in result["imported"]) == ["cron", "interval"]
    assert len(result["cancelled_upstream"]) == 2
    assert client.list_schedules(wid).schedules == []
    ours = orch.schedules.list(wid).schedules
    assert sorted(s.input for s in ours) == ["hourly", "often"]
    again = orch.schedules.import_upstream(wid)
    assert again["imported"] == [] and again["already"] == []


def cli_environment(orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the CLI (run in this process) at ``orch``'s Redis, prefix and API."""
    for name, value in (
        ("REDIS_URL", orch.settings.redis_url),
        ("KEY_PREFIX", orch.settings.key_prefix),
        ("WORKERS_API_URL", orch.settings.workers_api_url),
        ("WORKERS_API_KEY", orch.settings.workers_api_key.get_secret_value()),  # type: ignore[union-attr]
    ):
        monkeypatch.setenv(name, value or "")


def test_cli_errors_are_one_line_exit_2_and_write_nothing(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_environment(orch, monkeypatch)
    before = our_keys(orch)
    bad = [
        ["schedules", "create", "--input", "x", "--cron", "61 * * * *"],
        ["schedules", "create", "--input", "x", "--every", "0"],
        ["schedules", "create", "--input", "x", "--at", "2001-01-01T00:00:00Z"],
        ["schedules", "create", "wrk_nope", "--input", "x", "--in", "5"],
        ["schedules", "cancel", "sch_nope"],
        ["schedules", "show", "sch_nope"],
        ["schedules", "history", "sch_nope", "--limit", "0"],
    ]
    for argv in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)
    assert our_keys(orch) == before
    assert main(["schedules", "create", "--input", "hello", "--cron", "30 2 * * *",
                 "--tz", "Europe/Berlin"]) == 0  # fmt: skip
    sid = capsys.readouterr().out.split()[0]
    assert main(["schedules", "show", sid]) == 0
    shown = capsys.readouterr().out
    assert "Europe/Berlin" in shown and shown.count("Z\n") >= 10
    assert main(["schedules", "pause", sid]) == 0 and "paused" in capsys.readouterr().out
    assert main(["schedules", "list", "--all"]) == 0 and sid in capsys.readouterr().out
    assert main(["schedules", "cancel", sid]) == 0
    assert f"{sid}: cancelled" in capsys.readouterr().out  # --json: {"changed": true}
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    for argv in (["schedules", "list"], ["beat"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: REDIS_URL: cannot reach Redis"), err
