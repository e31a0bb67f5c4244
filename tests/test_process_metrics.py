"""Each long-running process serves its own instruments: a real worker, beat and gateway
with a metrics port, jobs against the emulator, scraped over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.facade import Orchestrator
from orchestrator.ops.processes import BEAT_READY, WORKER_READY
from orchestrator.ops.redis_server import free_port
from orchestrator.store.jobs import RedisStore

from .conftest import Emulator
from .gateway_support import start_gateway
from .processes import Proc, wait_for

pytestmark = pytest.mark.slow

LATENCY = "orchestrator_upstream_request_duration_seconds"
RELAYED = "orchestrator_stream_events_relayed_total"


def scrape(url: str) -> dict[str, float]:
    """Every sample of one scrape, summed over labels, by sample name."""
    sums: dict[str, float] = {}
    text = httpx.get(url, timeout=5).raise_for_status().text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def own_metrics(kind: str, env: dict[str, str], log: Path, port: int, *flags: str) -> Proc:
    args = [sys.executable, "-m", "orchestrator", kind, "--loglevel", "INFO",
            "--metrics-port", str(port), *flags]  # fmt: skip
    return Proc(args, env, log, WORKER_READY if kind == "worker" else BEAT_READY)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_serves_its_upstream_calls_and_relayed_events(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path, pool: str
) -> None:
    """The prefork pool's tasks (create, the quick relay) run in children: served in
    prometheus_client's multiprocess mode, summed with the main process's follower."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    if pool == "prefork":
        (tmp_path / "prom").mkdir()
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    flags = ["--pool", pool, "--concurrency", "2"]
    worker = own_metrics("worker", env, tmp_path / "worker.log", port, *flags)
    worker.start(timeout=60)
    try:
        before = scrape(url)
        assert before.get(f"{LATENCY}_count", 0) == 0 and before.get(RELAYED, 0) == 0
        jobs = [orch.submit(f"task {i}", budget="low") for i in range(2)]
        for job in jobs:
            done = orch.wait(job.id, timeout=60)
            assert done.status == "completed", (done.status, done.error)
        relayed = sum(orch.store.relayed(orch.get(job.id).worker_id or "") for job in jobs)
        assert relayed == 2 * 5  # the emulator's 5 updates a turn, one turn each

        seen: list[tuple[float | None, int, float | None]] = []

        def settled() -> bool:
            # Every request the emulator answered was one attempt this worker timed.
            got = scrape(url)
            seen.append((got.get(f"{LATENCY}_count"), emulator.ledger()["requests"],
                         got.get(RELAYED)))  # fmt: skip
            return seen[-1] == (seen[-1][1], seen[-1][1], relayed)

        try:
            wait_for(settled, 20, "the worker's metrics to count the run")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last (count, requests, relayed): {seen[-1:]}") from None
        assert emulator.ledger()["requests"] >= 2 * 3  # create, stream, retrieve a job at least
    finally:
        worker.stop()


def test_beat_serves_its_registry_and_a_taken_port_is_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    beat = own_metrics("beat", env, tmp_path / "beat.log", port)
    beat.start(timeout=60)
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "# TYPE orchestrator_schedule_lateness_seconds histogram" in text
        assert "process_cpu_seconds_total" in text
        # A second beat asked for the same port says so and exits, before starting.
        again = subprocess.run(
            [sys.executable, "-m", "orchestrator", "beat", "--metrics-port", str(port)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 2, again.stderr
        last = again.stderr.strip().splitlines()[-1]
        assert last.startswith("error: metrics_port: cannot listen"), again.stderr
        assert "address already in use" in again.stderr.lower()
    finally:
        beat.stop()


def test_prefork_without_multiprocess_mode_says_what_is_not_served(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    flags = ["--pool", "prefork", "--concurrency", "1"]
    worker = own_metrics("worker", env, tmp_path / "worker.log", port, *flags)
    worker.start(timeout=60)
    try:
        text = (tmp_path / "worker.log").read_text()
        assert "note: worker metrics: the prefork pool's children (the tasks) not served" in text
        assert f"worker metrics on http://127.0.0.1:{port}/metrics" in text
        assert "process_cpu_seconds_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        worker.stop()


def test_gateway_processes_serve_their_cancels_summed(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    """Two uvicorn processes in multiprocess mode, the port from the setting: every
    cancel counted once, whichever process took it."""
    port = free_port()
    (tmp_path / "prom").mkdir()
    extra = {"PROCESS_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    gw = start_gateway(env, tmp_path, store, workers=2, **extra)
    try:
        api = gw.client("submit")
        for i in range(4):
            job = api.post("/v1/jobs", json={"input": f"stop {i}"}).json()
            cancelled = httpx.post(
                f"{gw.url}/v1/jobs/{job['id']}/cancel", headers=api.headers, timeout=30
            )  # a new connection each: either process may answer
            assert cancelled.status_code == 200, cancelled.text
        got = scrape(f"http://127.0.0.1:{port}/metrics")
        assert got.get("orchestrator_jobs_ended_here_total") == 4, got
    finally:
        for c in gw.clients:
            c.close()
        gw.proc.stop()


def test_gateway_processes_without_multiprocess_mode_open_no_port(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    port = free_port()
    gw = start_gateway(env, tmp_path, store, workers=2, PROCESS_METRICS_PORT=str(port))
    try:
        assert "note: gateway metrics: its workers not served" in gw.proc.text()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        gw.proc.stop()


def test_a_port_out_of_range_is_refused_naming_the_option(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "worker", "--metrics-port", "70000"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "error: metrics_port: must be 0-65535"
