"""The Workers API client against the emulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from orchestrator.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    InputError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    StreamError,
    UnprocessableEntityError,
)
from orchestrator.ops.redis_server import free_port
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.models import CronWhen, Worker
from orchestrator.wire.retry import RetryPolicy

from .conftest import Emulator

FAST = RetryPolicy(max_retries=4, initial_delay=0.01, max_delay=0.05)


def make_client(emulator: Emulator, **kwargs: object) -> WorkersClient:
    options: dict[str, object] = {"retry": FAST, "timeout": 5.0}
    options.update(kwargs)
    return WorkersClient(emulator.url, emulator.api_key, **options)  # type: ignore[arg-type]


def finish(client: WorkersClient, worker: Worker) -> tuple[Worker, list[object]]:
    """Follow the worker's stream to its end, then read the final snapshot."""
    events = [u.data for u in client.stream_updates(worker.id)]
    return client.retrieve(worker.id), events


def test_create_stream_retrieve_continue(emulator: Emulator) -> None:
    with make_client(emulator) as client:
        worker = client.create("Summarise the tickets", budget="low")
        assert worker.id and worker.status in ("running", "pending")
        done, events = finish(client, worker)
        assert done.status == "completed" and not done.running
        assert len(events) == 5 and events[0]["type"] == "start"  # type: ignore[index]
        assert done.output_text and done.files and done.costs and done.usage

        again = client.continue_(worker.id, "And now in French", budget="standard")
        assert again.id == worker.id
        done2, events2 = finish(client, again)
        # The stream replays turn 1 before turn 2: indices are the worker's update numbers.
        assert events2[:5] == events and len(events2) == 10
        assert done.costs is not None and done2.costs is not None
        assert done2.costs.model_cost_usd > done.costs.model_cost_usd
    ledger = emulator.ledger()
    assert ledger["workers_created"] == 1 and ledger["turns_completed"] == 2


def test_stream_via_retrieve_and_create_streaming(emulator: Emulator) -> None:
    with make_client(emulator) as client:
        live = list(client.create_streaming("stream it", budget="high"))
        assert [u.index for u in live] == list(range(5))
        ledger = emulator.ledger()
        assert ledger["workers_created"] == 1
        worker_id = ledger["last_worker_id"]
        replay = list(client.stream_updates(worker_id, via_retrieve=True))
        assert [u.data for u in replay] == [u.data for u in live]


def test_email_and_nested_binary_file(emulator: Emulator, tmp_path: Path) -> None:
    with make_client(emulator) as client:
        worker, _ = finish(client, client.create("make files"))
        assert "@" in client.retrieve_email(worker.id)
        nested = [f for f in worker.files if f.filename and "/" in f.filename]
        assert nested, "the emulator publishes a file in a nested folder"
        name = nested[0].filename
        assert name is not None
        got = client.download_file(worker.id, name, tmp_path / "out.bin", chunk_size=7)
        raw = httpx.get(
            f"{emulator.url}/api/workers/{worker.id}/files/{name}",
            headers={"Authorization": f"Bearer {emulator.api_key}"},
        ).content
        data = got.path.read_bytes()
        assert data == raw and set(range(256)) <= set(data)  # binary-safe
        assert got.size == len(raw) and got.sha256 == hashlib.sha256(raw).hexdigest()
        assert not list(tmp_path.glob(".*.part"))
        with pytest.raises(NotFoundError):
            client.download_file(worker.id, "missing/nope.txt", tmp_path / "x")
        assert not (tmp_path / "x").exists()


def test_schedules_list_create_cancel(emulator: Emulator) -> None:
    with make_client(emulator) as client:
        worker = client.create("base")
        created = client.create_schedule(
            worker.id, input="every five", when=CronWhen(cron="*/5 * * * *"), budget="low"
        )
        assert created.type == "cron" and created.next_run_at > datetime.now(UTC)
        delayed = client.create_schedule(
            worker.id, input="later", when={"type": "delayed", "delayInSeconds": 90}
        )
        assert delayed.type == "delayed"
        listing = client.list_schedules(worker.id)
        assert listing.worker_id == worker.id
        assert {s.id for s in listing.schedules} == {created.id, delayed.id}
        assert client.cancel_schedule(worker.id, created.id).cancelled is True
        assert [s.id for s in client.list_schedules(worker.id).schedules] == [delayed.id]
        with pytest.raises(NotFoundError):
            client.cancel_schedule(worker.id, "sch_unknown")
        past = datetime.now(UTC) - timedelta(days=1)
        with pytest.raises(UnprocessableEntityError) as info:
            client.create_schedule(
                worker.id, input="x", when={"type": "scheduled", "date": past.isoformat()}
            )
        assert info.value.status_code == 422


def test_auth_and_not_found_are_typed_and_not_retried(emulator: Emulator) -> None:
    attempts: list[int] = []
    with (
        WorkersClient(
            emulator.url, "sk-wrong", retry=FAST, on_attempt=lambda _c, s, _t: attempts.append(s)
        ) as bad,
        pytest.raises(AuthenticationError) as info,
    ):
        bad.create("hello")
    assert attempts == [401]
    assert "sk-wrong" not in str(info.value) and "sk-wrong" not in repr(info.value.body)
    with make_client(emulator) as client, pytest.raises(NotFoundError) as nf:
        client.retrieve("wrk_does_not_exist")
    assert nf.value.status_code == 404 and nf.value.call == "retrieve"


def test_bad_input_is_rejected_before_any_request(emulator: Emulator) -> None:
    attempts: list[str] = []
    with make_client(emulator, on_attempt=lambda c, _s, _t: attempts.append(c)) as client:
        cases = [
            (lambda: client.create(""), "input"),
            (lambda: client.create("x", budget="huge"), "budget"),  # type: ignore[arg-type]
            (lambda: client.continue_("", "x"), "worker_id"),
            (
                lambda: client.create_schedule(
                    "wrk_1", input="x", when={"type": "cron", "cron": "* * * *"}
                ),
                "when.cron",
            ),
            (
                lambda: client.create_schedule(
                    "wrk_1", input="x", when={"type": "interval", "intervalSeconds": -1}
                ),
                "when.interval_seconds",
            ),
            (
                lambda: client.create_schedule(
                    "wrk_1", input="x", when={"type": "delayed", "delayInSeconds": -30}
                ),
                "when.delay_in_seconds",
            ),
            (lambda: client.retrieve_email("a/b"), "worker_id"),
        ]
        for call, field in cases:
            with pytest.raises(InputError) as info:
                call()
            assert info.value.field == field
        with pytest.raises(InputError):
            client.download_file("wrk_1", "../etc/passwd", Path("/tmp/never"))
    assert attempts == []
    assert emulator.ledger()["workers_created"] == 0


def test_429_honours_retry_after_then_gives_up(emulator: Emulator) -> None:
    emulator.faults(rate_429=1.0, retry_after_seconds=2)
    slept: list[float] = []
    client = make_client(emulator, retry=RetryPolicy(max_retries=3), sleep=slept.append)
    with client, pytest.raises(RateLimitError):
        client.create("rate limited")
    assert slept == [2.0, 2.0, 2.0]  # three retries, each as long as the server asked
    assert emulator.ledger()["workers_created"] == 0


def test_transient_faults_are_retried_to_success(emulator: Emulator) -> None:
    emulator.faults(rate_429=0.3, rate_500=0.2, rate_503=0.2, retry_after_seconds=0, seed=11)
    statuses: list[int] = []
    client = make_client(
        emulator,
        retry=RetryPolicy(max_retries=30, initial_delay=0.001, max_delay=0.005),
        on_attempt=lambda _c, s, _t: statuses.append(s),
    )
    with client:
        workers = [client.create(f"job {i}", idempotency_key=f"k{i}") for i in range(10)]
    assert len({w.id for w in workers}) == 10
    assert any(s in (429, 500, 503) for s in statuses)
    assert emulator.ledger()["workers_created"] == 10


def test_server_errors_give_up_when_bounded(emulator: Emulator) -> None:
    emulator.faults(rate_500=1.0)
    with make_client(emulator) as client, pytest.raises(InternalServerError):
        client.retrieve("wrk_x")


def test_lost_response_with_idempotency_key_creates_one_worker(emulator: Emulator) -> None:
    emulator.faults(rate_lost_response=1.0)
    with make_client(emulator, retry=RetryPolicy(max_retries=2, initial_delay=0.01)) as client:
        with pytest.raises(InternalServerError):
            client.create("once only", idempotency_key="job-123")
        emulator.faults(rate_lost_response=0.0)
        worker = client.create("once only", idempotency_key="job-123")
        again = client.create("once only", idempotency_key="job-123")
    assert worker.id == again.id
    assert emulator.ledger()["workers_created"] == 1


def test_timeouts_and_connection_errors(emulator: Emulator) -> None:
    emulator.faults(rate_slow=1.0, slow_seconds=1.0)
    quick = RetryPolicy(max_retries=1, initial_delay=0.01)
    with make_client(emulator, timeout=0.2, retry=quick) as c, pytest.raises(APITimeoutError):
        c.retrieve("wrk_x")
    dead = WorkersClient(
        f"http://127.0.0.1:{free_port()}", "k", retry=RetryPolicy(max_retries=2, initial_delay=0.01)
    )
    with dead, pytest.raises(APIConnectionError) as info:
        dead.create("nobody home")
    assert info.value.call == "create"


def test_cut_stream_raises_and_reconnect_replays_in_order(emulator: Emulator) -> None:
    emulator.configure(turn_seconds=0.5, events_per_turn=20)
    with make_client(emulator) as client:
        worker = client.create("long one")
        emulator.faults(rate_cut_stream=1.0, seed=3)
        seen: list[object] = []
        with pytest.raises(StreamError):
            for update in client.stream_updates(worker.id):
                assert update.index == len(seen)
                seen.append(update.data)
        assert 0 < len(seen) < 20
        emulator.faults(rate_cut_stream=0.0)
        full = [u.data for u in client.stream_updates(worker.id)]
        assert full[: len(seen)] == seen and len(full) == 20


def test_async_client_follows_many_streams(emulator: Emulator) -> None:
    async def run() -> list[int]:
        async with AsyncWorkersClient(emulator.url, emulator.api_key, retry=FAST) as client:
            workers = await asyncio.gather(*(client.create(f"a{i}") for i in range(20)))

            async def count(worker_id: str) -> int:
                return len([u async for u in client.stream_updates(worker_id)])

            counts = await asyncio.gather(*(count(w.id) for w in workers))
            final = await client.retrieve(workers[0].id)
            assert final.status == "completed"
            return list(counts)

    assert asyncio.run(run()) == [5] * 20
