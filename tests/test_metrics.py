"""Prometheus metrics against a real Redis: exact values from the store and the ledger,
the exporter as a real process scraped over HTTP, and the health command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.celery import QUEUES
from orchestrator.jobs.model import Submission
from orchestrator.ops import collector, instruments
from orchestrator.ops.redis_server import free_port
from orchestrator.store.broker import queue_keys
from orchestrator.store.jobs import RedisStore, connect, now_ms
from orchestrator.wire.models import Costs, Usage, Worker
from tests.processes import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: object) -> Samples:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def worker(worker_id: str, usd: str, tokens: int) -> Worker:
    """A snapshot whose cumulative cost is ``usd`` (all on the model) and ``tokens``."""
    return Worker(
        id=worker_id,
        status="completed",
        costs=Costs(
            internal_cost_usd=Decimal("0"),
            model_cost_usd=Decimal(usd),
            sandbox_cost_usd=Decimal("0.000001"),
            tool_cost_usd=Decimal("0"),
        ),
        usage=Usage(
            cache_read_tokens=0,
            cache_write_tokens=0,
            cost_usd=Decimal(usd) + Decimal("0.000001"),
            input_tokens=tokens // 2,
            output_tokens=tokens - tokens // 2,
            reasoning_tokens=0,
            steps=1,
            total_tokens=tokens,
        ),
    )


def test_collector_reports_exact_store_figures(store: RedisStore, key_prefix: str) -> None:
    at = now_ms()
    low, _ = store.create_job(Submission(input="a", budget="low", tags={"tenant": "acme"}))
    high, _ = store.create_job(
        Submission(input="b", budget="high", tags={"tenant": "globex", "team": "x"})
    )
    queued, _ = store.create_job(Submission(input="c", budget="low"))
    for job in (low, high):
        store.transition(job.id, "submitted")
        store.transition(job.id, "running")
    store.transition(low.id, "completed")
    store.request_follow(high.id)
    store.post_turn(low, worker("wrk_low", "0.123456", 1000), at)
    store.post_turn(high, worker("wrk_high", "1.000000", 250), at)
    assert store.post_turn(high, worker("wrk_high", "1.000000", 250), at) is None  # replay

    # The broker's lists, under this test's prefix as kombu keeps them (global_keyprefix).
    api, streams, broker = "api", "streams", store.keys.broker_prefix
    store.r.rpush(broker + api, "m1", "m2")
    store.r.rpush(broker + api + "\x06\x169", "m3")
    store.r.rpush(broker + streams, "m4")
    store.r.rpush("api", "another deployment's task")  # not ours: not counted
    unacked = {"t1": json.dumps(["{}", api, api]), "t2": "not json"}
    store.r.hset(broker + "unacked", mapping=unacked)
    registry = collector.store_registry(store)
    samples = scrape(registry)

    states = {"queued": 1, "submitted": 0, "running": 1, "completed": 1, "failed": 0}
    for state, count in states.items():
        assert value(samples, "orchestrator_jobs", state=state) == count
    assert value(samples, "orchestrator_queue_depth", queue=api) == 3
    assert value(samples, "orchestrator_queue_depth", queue=streams) == 1
    assert value(samples, "orchestrator_queue_unacked", queue=api) == 1
    assert value(samples, "orchestrator_queue_unacked", queue=streams) == 0
    assert value(samples, "orchestrator_streams_followed") == 1

    low_micro, high_micro = 123_457, 1_000_001  # model cost + one micro of sandbox
    micro = "orchestrator_cost_micro_usd_total"
    assert value(samples, micro) == low_micro + high_micro
    assert value(samples, micro, budget="low") == low_micro
    assert value(samples, micro, budget="high") == high_micro
    assert value(samples, micro, tag="tenant=acme") == low_micro
    assert value(samples, micro, tag="tenant=globex") == high_micro
    assert value(samples, micro, tag="team=x") == high_micro
    usd = "orchestrator_cost_usd_total"
    assert value(samples, usd) == pytest.approx(1.123458, abs=1e-12)
    assert value(samples, usd, budget="low") == pytest.approx(0.123457, abs=1e-12)
    assert value(samples, usd, tag="team=x") == pytest.approx(1.000001, abs=1e-12)
    assert value(samples, "orchestrator_tokens_total") == 1250
    assert value(samples, "orchestrator_tokens_total", budget="low") == 1000
    assert value(samples, "orchestrator_turns_total") == 2
    assert value(samples, "orchestrator_turns_total", budget="high") == 1
    assert ("orchestrator_cost_usd_total", frozenset({("budget", "standard")})) not in samples
    assert value(samples, "orchestrator_store_up") == 1
    assert value(samples, "orchestrator_metrics_tags_dropped") == 0
    assert queued.status == "queued"


def test_collector_bounds_tag_series(store: RedisStore) -> None:
    at = now_ms()
    for i, usd in enumerate(("0.1", "0.3", "0.2")):
        job, _ = store.create_job(Submission(input="x", tags={"t": f"v{i}"}))
        store.post_turn(job, worker(f"wrk_{i}", usd, 10), at)
    samples = scrape(collector.store_registry(store, max_tags=2))
    tags = {dict(labels).get("tag") for name, labels in samples if name.endswith("micro_usd_total")}
    assert tags == {None, "t=v1", "t=v2"}  # the overall total plus the two costliest
    assert value(samples, "orchestrator_metrics_tags_dropped") == 1


def test_collector_reports_store_down_without_failing() -> None:
    dead = RedisStore(connect(f"redis://127.0.0.1:{free_port()}/0"), "x")
    samples = scrape(collector.store_registry(dead))
    assert value(samples, "orchestrator_store_up") == 0
    assert not any(name == "orchestrator_jobs" for name, _ in samples)


def test_queues_match_the_celery_app() -> None:
    assert collector.QUEUES == QUEUES
    assert queue_keys("api") == ["api", "api\x06\x163", "api\x06\x166", "api\x06\x169"]


def test_record_attempt_observes_latency_and_counts_retries() -> None:
    def get(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    call = "test_call_" + os.urandom(4).hex()
    for status, seconds in ((200, 0.2), (429, 0.1), (503, 0.3), (0, 5.0), (404, 0.05)):
        instruments.record_attempt(call, status, seconds)
    hist = "orchestrator_upstream_request_duration_seconds"
    assert get(hist + "_count", call=call, status="200") == 1
    assert get(hist + "_sum", call=call, status="0") == 5.0
    assert get(hist + "_bucket", call=call, status="200", le="0.25") == 1
    retries = "orchestrator_upstream_retries_total"
    assert get(retries, call=call, reason="rate_limited") == 1
    assert get(retries, call=call, reason="server_error") == 1
    assert get(retries, call=call, reason="connection") == 1
    counted = [
        s.value
        for m in REGISTRY.collect()
        if m.name == "orchestrator_upstream_retries"
        for s in m.samples
        if s.labels.get("call") == call and s.name.endswith("_total")
    ]
    assert sum(counted) == 3  # the 200 and the 404 are not retries
    assert [instruments.retry_reason(s) for s in (408, 409, 400, 401, 500)] == [
        "timeout", "conflict", None, None, "server_error",
    ]  # fmt: skip


def test_process_instruments_are_defined() -> None:
    instruments.EVENTS_RELAYED.inc(0)
    instruments.SCHEDULE_RUNS.labels(outcome="fired").inc(0)
    instruments.SCHEDULE_LATENESS.observe(0.0)
    names = {m.name for m in REGISTRY.collect()}
    assert {
        "orchestrator_stream_events_relayed",
        "orchestrator_schedule_runs",
        "orchestrator_schedule_lateness_seconds",
        "orchestrator_upstream_request_duration_seconds",
    } <= names


# --- the commands, as real processes ------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEY_PREFIX")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_metrics_command_serves_over_http(
    store: RedisStore, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    job, _ = store.create_job(Submission(input="served", budget="low"))
    store.post_turn(job, worker("wrk_http", "0.5", 42), now_ms())
    env = cli_env(REDIS_URL=redis_url, KEY_PREFIX=key_prefix)
    said = tmp_path / "metrics.out"
    # Port 0: the exporter binds a free port itself and says which (no port picked
    # here that another process could take first).
    with open(said, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "metrics", "--port", "0"],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def listening() -> str | None:
            assert proc.poll() is None, said.read_text()
            line = r"^metrics on (http://127\.0\.0\.1:\d+/metrics)$"
            found = re.search(line, said.read_text(), re.M)
            return found.group(1) if found else None

        url = wait_for(listening, 30, "the metrics exporter to listen")

        def fetch() -> str | None:
            assert proc.poll() is None, said.read_text()
            try:
                response = httpx.get(url, timeout=5)
            except httpx.TransportError:
                return None
            return response.text if response.status_code == 200 else None

        text = wait_for(fetch, 30, "the metrics exporter to answer", interval=0.2)
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert value(samples, "orchestrator_jobs", state="queued") == 1
        assert value(samples, "orchestrator_cost_micro_usd_total", budget="low") == 500_001
        assert value(samples, "orchestrator_tokens_total") == 42
        assert value(samples, "orchestrator_store_up") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0


def test_metrics_command_needs_redis_url(tmp_path: Path) -> None:
    result = run_cli("metrics", "--port", "0", env=cli_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["configuration error: REDIS_URL: is not set"]


def test_health_command(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    env = cli_env(REDIS_URL=redis_url, KEY_PREFIX=key_prefix)
    ok = run_cli("health", env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: redis answered") and "broker reachable" in ok.stdout
    assert len(ok.stdout.strip().splitlines()) == 1

    missing = run_cli("health", "--max-age", "60", "--name", "celery@gone", env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stdout.strip() == "unhealthy: no heartbeat from celery@gone"
    beat = RedisStore(connect(redis_url), key_prefix)
    beat.r.set(beat.keys.heartbeat("celery@here"), now_ms() - 5000)
    fresh = run_cli("health", "--max-age", "60", "--name", "celery@here", env=env, cwd=tmp_path)
    assert fresh.returncode == 0 and "heartbeat of celery@here" in fresh.stdout
    stale = run_cli("health", "--max-age", "2", "--name", "celery@here", env=env, cwd=tmp_path)
    assert stale.returncode == 1 and "s old (max 2 s)" in stale.stdout
    beat.r.close()


def test_health_command_fails_on_a_dead_redis_without_leaking_the_password(
    tmp_path: Path,
) -> None:
    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = run_cli("health", env=cli_env(REDIS_URL=url), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: redis: ConnectionError")
    assert len(result.stdout.strip().splitlines()) == 1
    assert "hunter2secret" not in result.stdout + result.stderr
    assert time.monotonic() - started < 30


def test_health_command_url_check(redis_url: str, tmp_path: Path) -> None:
    env = cli_env(REDIS_URL=redis_url)
    dead = f"http://127.0.0.1:{free_port()}/healthcheck"
    result = run_cli("health", "--url", dead, env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (1, f"unhealthy: {dead}: ConnectError")
    bad = run_cli("health", "--max-age", "0", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "max_age" in bad.stderr
    # Every URL given is checked, not only the last one.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer200)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        live = f"http://127.0.0.1:{server.server_port}/healthz"
        both = run_cli("health", "--url", dead, "--url", live, env=env, cwd=tmp_path)
        assert (both.returncode, both.stdout.strip()) == (1, f"unhealthy: {dead}: ConnectError")
        fine = run_cli("health", "--url", live, "--url", live, env=env, cwd=tmp_path)
        assert fine.returncode == 0 and fine.stdout.count(f"{live} answered 200") == 2, fine
    finally:
        server.shutdown()
        server.server_close()


class _Answer200(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass
