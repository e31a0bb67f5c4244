"""End to end: an upstream that answers create with a hostile worker id.

A small HTTP server of our own plays the Workers API and answers ``POST /api/workers``
with a worker whose id is ``../../etc``, ``a/b``, empty, ``victim:schedules`` and so
on. Real Redis, a real ``celery worker`` process. Each such job must end ``failed``
with a reason naming the worker id, give back its budget hold and its concurrency slot
(the tenant is limited to one running job, so one stuck job would block all the
others), and never be followed: no stream is asked for, nothing is written under the
hostile id.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator.facade import Orchestrator
from orchestrator.settings import load_settings

from .processes import celery_worker, stack_env

pytestmark = pytest.mark.slow

HOSTILE_IDS = ["../../etc", "a/b", "", "victim:schedules", "../up", "w" * 129, "wrk_1\n",
               "wrk 1", ".."]  # fmt: skip


class HostileUpstream:
    """``POST /api/workers`` answers a worker whose id is ``ids[input]``; any other
    request is counted and answered 404."""

    def __init__(self, ids: dict[str, str]) -> None:
        seen: Counter[str] = Counter()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                seen[f"POST {self.path}"] += 1
                if self.path != "/api/workers" or body.get("input") not in ids:
                    self._answer(404, {"error": {"message": "no such route"}})
                    return
                worker = {"id": ids[body["input"]], "object": "worker", "status": "running",
                          "running": True, "created_at": 1}  # fmt: skip
                self._answer(200, worker)

            def do_GET(self) -> None:
                seen[f"GET {self.path}"] += 1
                self._answer(404, {"error": {"message": "no such route"}})

        self.seen = seen
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[HostileUpstream]:
    server = HostileUpstream({f"hostile {i}": wid for i, wid in enumerate(HOSTILE_IDS)})
    yield server
    server.close()


def test_hostile_worker_ids_fail_the_job_and_free_hold_and_slot(
    redis_url: str, key_prefix: str, upstream: HostileUpstream, tmp_path: Path
) -> None:
    env = stack_env(
        redis_url, key_prefix, upstream.url, "sk-hostile",
        FILES_DIR=str(tmp_path / "files"), TASK_MAX_RETRIES="2",
    )  # fmt: skip
    settings = load_settings(
        redis_url=redis_url, key_prefix=key_prefix, workers_api_url=upstream.url,
        workers_api_key="sk-hostile", files_dir=env["FILES_DIR"],
    )  # fmt: skip
    with Orchestrator(settings) as orch:
        orch.budgets.set_cap(scope="tag:tenant=acme", limit_usd=Decimal("100"))
        orch.limits.set("tag:tenant=acme", 1)
        worker = celery_worker(env, tmp_path / "worker.log").start()
        try:
            jobs = [
                orch.submit(f"hostile {i}", tags={"tenant": "acme"})
                for i in range(len(HOSTILE_IDS))
            ]
            ends = {job.id: orch.wait(job.id, timeout=30) for job in jobs}
        finally:
            worker.stop()
        for job_id, end in ends.items():
            assert end.status == "failed", (job_id, end.status, end.error)
            assert end.worker_id is None, end.worker_id
            assert end.error and "worker id" in end.error, end.error
        # Nothing held: no budget hold, no slot, nobody waiting, nothing reserved.
        store = orch.store
        assert store.r.hlen(store.keys.budget_holds) == 0
        assert orch.limits.status() == [
            {"key": "tag:tenant=acme", "limit": 1, "running": 0, "waiting": 0}
        ]
        assert all(row["reserved_micro"] == 0 for row in orch.budgets.status())
        # Never followed: no stream, no file, no schedule route was asked for.
        assert set(upstream.seen) == {"POST /api/workers"}, upstream.seen
        # Nothing was written under a key made from a hostile id.
        assert not [k for k in store.r.scan_iter(f"{key_prefix}:*") if "victim" in k or ".." in k]
