"""One hostile upstream, every fault class at once, beside two tenants' live jobs.

:class:`tests.hostile_api.HostileAPI` plays the Workers API over real HTTP; a real
``celery worker`` process (api and streams queues, with its stream follower) and a real
Redis run the jobs. Each hostile job's input names its fault class (see ``HOSTILE``:
create/continue answers, unsafe worker ids, streams, retrieve answers and absurd
figures, files). Meanwhile tenants ``a`` and ``b`` (each limited to 2 running turns
and capped at 20 USD a day) run well-behaved turns and continue some of them.

Afterwards:

- every job is in its expected end state; the classes whose turn never ends upstream
  (``RUNNING_FOREVER``) end ``timed_out`` by their deadline, their hold kept for the
  turn's settlement (it goes on upstream, billed);
- :func:`tests.held.assert_nothing_held`: no hold, slot, lease, outbox or dispatched
  entry, no unbegun fetch;
- every published file has its entry in ``files()``;
- the ledger equals, field by field, what the upstream billed for well-formed turns
  (the server's own ground truth);
- ``orchestrator reconcile`` (the CLI, in a subprocess) finds no difference; its only
  error lines are the workers whose upstream answer is unreadable or absurd.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.celery import make_app
from orchestrator.facade import Orchestrator
from orchestrator.ledger import FIELDS
from orchestrator.settings import load_settings
from orchestrator.store.holdings import Holdings

from .held import assert_nothing_held
from .hostile_api import FILES, RUNNING_FOREVER, HostileAPI
from .processes import celery_worker, stack_env, wait_for

pytestmark = pytest.mark.slow

F, C = "failed", "completed"
#: Fault class -> the end state its job must reach.
HOSTILE = {
    # create / continue answers
    "create:429": F, "create:500-then-ok": C, "create:503": F, "create:400": F,
    "create:401": F, "create:truncated": F, "create:html": F, "create:502-html": F,
    "create:short-body": F, "create:drip": F, "create:gzip-bomb": F, "create:503-bomb": F,
    # worker ids
    "id:traversal": F, "id:slash": F, "id:empty": F, "id:too-long": F, "id:colliding": F,
    "id:newline": F,
    # the update stream
    "stream:404": F, "stream:nonjson": F, "stream:wrong-type": F, "stream:500-then-ok": C,
    "stream:cut-then-ok": C, "stream:oversize": C, "stream:drip": C,
    "stream:ids-scrambled": C, "stream:stall-then-ok": C,
    "stream:gzip-bomb": C,
    # retrieve at the end of the turn, and its figures
    "retrieve:500-then-ok": C, "retrieve:404": F, "retrieve:truncated": F, "cost:nan": F,
    "cost:negative": F, "cost:1e308": F, "cost:9.3e12": F, "cost:string": F,
    "tokens:2^63": F, "tokens:2^53+1": F, "tokens:float": F, "status:unknown": F,
    "costs:null": C,
    # published files
    **dict.fromkeys(FILES, C),
}  # fmt: skip
#: Classes whose retrieve answer is unreadable or absurd: reconcile reports them.
UNREADABLE = [c for c in HOSTILE if c.startswith(("cost:", "tokens:", "status:"))
              and c != "costs:null"] + ["retrieve:404", "retrieve:truncated"]  # fmt: skip
DEEP = FILES["files:deep-path"][0]
#: What each published file's entry in files() must say.
FILE_ENTRIES = {
    "endless": "passed the 1048576-byte limit", "huge": "over the 1048576-byte limit",
    "n" * 250: "sha256", DEEP: "deeper than 32 levels", "../../etc/passwd": "refused",
    "/etc/passwd": "refused", "a/../../b": "refused", "redirect": "HTTP 302",
    "bomb": "limit", "missing": "HTTP 404", "flaky": "HTTP 500",
}  # fmt: skip
TENANT_JOBS = 8
MiB = 2**20


def entry_says(info: dict[str, Any], says: str) -> bool:
    return ("sha256" in info) if says == "sha256" else says in json.dumps(info)


def test_a_hostile_upstream_beside_two_tenants(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with HostileAPI(event_gap=0.03) as api:
        api.drip_seconds = 0.2
        env = stack_env(
            redis_url, key_prefix, api.url, "sk-hostile", FILES_DIR=str(tmp_path / "files"),
            MAX_RETRIES="2", TASK_MAX_RETRIES="1", HTTP_DEADLINE="1", FILE_DEADLINE="2",
            FILE_MAX_BYTES=str(MiB), EVENT_MAX_BYTES=str(64 * 1024), ANSWER_MAX_BYTES=str(MiB),
            STREAM_MAX_PARSE_FAILURES="2", STREAM_READ_TIMEOUT="1", FOLLOW_LEASE_SECONDS="3",
            RESEND_AFTER_SECONDS="5", FILES_MAX_PER_TURN="25",
        )  # fmt: skip
        settings = load_settings(redis_url=redis_url, key_prefix=key_prefix,
                                 workers_api_url=api.url, workers_api_key="sk-hostile")  # fmt: skip
        with Orchestrator(settings, app=make_app(settings)) as orch:
            for tenant in ("a", "b"):
                orch.limits.set(f"tag:tenant={tenant}", 2)
                orch.budgets.set_cap(scope=f"tag:tenant={tenant}", limit_usd=Decimal("20"))
            worker = celery_worker(env, tmp_path / "worker.log", concurrency=8).start()
            try:
                run(orch, api, tmp_path)
            finally:
                worker.stop()
    assert time.monotonic() - started < 120


def run(orch: Orchestrator, api: HostileAPI, tmp_path: Path) -> None:
    tenants: list[str] = []
    hostile: dict[str, str] = {}
    forever: dict[str, str] = {}
    classes = list(HOSTILE)
    for i in range(max(len(classes), TENANT_JOBS)):  # interleaved, as traffic would be
        for tenant in ("a", "b"):
            if i < TENANT_JOBS:
                job = orch.submit(f"ok#{tenant}{i}", tags={"tenant": tenant}, budget="low")
                tenants.append(job.id)
        if i < len(classes):
            cls = classes[i]
            job = orch.submit(f"{cls}#s", tags={"src": "hostile"},
                              fetch_files=cls.startswith("files:"))  # fmt: skip
            hostile[cls] = job.id
    for cls in RUNNING_FOREVER:  # they end by their deadline (timed_out)
        forever[cls] = orch.submit(f"{cls}#s", tags={"src": "hostile"}, deadline=5).id

    ends = {job_id: orch.wait(job_id, timeout=60) for job_id in [*tenants, *hostile.values()]}
    # A second turn for two workers of each tenant: cumulative figures, counted once.
    continued = [
        orch.continue_(str(ends[job_id].worker_id), f"ok#again{n}", budget="low",
                       tags=ends[job_id].tags).id
        for n, job_id in enumerate(tenants[:4])
    ]
    # A create answered with the worker of another job (one not continued above): a
    # second turn on that worker, billed once, posted once under the new job.
    reused_worker = str(ends[tenants[-1]].worker_id)
    reused = orch.submit(f"id:reused#{reused_worker}", tags={"src": "hostile"}).id
    ends.update({job_id: orch.wait(job_id, timeout=60) for job_id in [*continued, reused]})
    assert ends[reused].status == "completed" and ends[reused].worker_id == reused_worker
    file_jobs = {cls: hostile[cls] for cls in FILES}
    fetched = {c: min(len(set(names)), 25) for c, names in FILES.items()}  # FILES_MAX_PER_TURN
    wait_for(lambda: all(len(orch.files(j)) == fetched[c] for c, j in file_jobs.items()),
             60, "every fetched file to be recorded")  # fmt: skip

    # End states.
    got = {cls: ends[job_id].status for cls, job_id in hostile.items()}
    wrong = {c: (got[c], ends[hostile[c]].error) for c in got if got[c] != HOSTILE[c]}
    assert got == HOSTILE, wrong
    assert {ends[j].status for j in [*tenants, *continued]} == {"completed"}
    # Nothing held; the classes that never end upstream are followed still.
    finished = [*tenants, *continued, reused, *hostile.values()]
    wait_for(lambda: clear(orch, finished), 20, "every finished job to hold nothing")
    assert_nothing_held(orch.store, finished, all_idle=False)
    assert all(row["running"] == 0 and row["waiting"] == 0 for row in orch.limits.status())
    assert all(row["reserved_micro"] == 0 for row in orch.budgets.status())
    # A turn that never ends upstream ends here by its deadline: slot and lease freed at
    # once; its hold and its place in the ended set stay until the upstream turn is
    # settled (it still runs, billed).
    for cls, job_id in forever.items():
        job = orch.wait(job_id, timeout=30)
        assert job.status == "timed_out" and "deadline" in str(job.error), (cls, job.error)
        held = set(Holdings(orch.store).held([job_id]).get(job_id, []))
        assert held <= {"budget_hold", "hold_time", "unsettled"}, (cls, held)
    # Every published file has its entry.
    for cls, job_id in file_jobs.items():
        files = orch.files(job_id)
        if cls == "files:a-then-a-b":  # fetched at once: whichever lands first wins
            assert sorted("sha256" in info for info in files.values()) == [False, True], files
            continue
        for name, info in files.items():
            says = "sha256" if cls == "files:many" else FILE_ENTRIES[name]
            assert entry_says(info, says), (name, info)
    # The ledger equals what the upstream billed for well-formed turns.
    total = orch.costs()["total"]
    billed = {f: sum(row[f] for row in api.billed.values()) for f in FIELDS}
    assert {f: total[f] for f in FIELDS} == billed
    assert api.billed, "nothing was billed"
    # Reconcile: no difference; errors only for the workers it cannot read.
    report = reconcile(orch, tmp_path)
    by_worker = {str(e.worker_id): c for c, j in hostile.items() if (e := ends[j]).worker_id}
    shown = [(by_worker.get(d["subject"]), d) for d in report["differences"]]
    assert report["differences"] == [], shown
    unreadable = {str(ends[hostile[c]].worker_id) for c in UNREADABLE}
    assert {line.split(":")[0] for line in report["errors"]} == unreadable, report["errors"]


def clear(orch: Orchestrator, job_ids: list[str]) -> bool:
    return not Holdings(orch.store).held(job_ids)


def reconcile(orch: Orchestrator, tmp_path: Path) -> dict[str, Any]:
    """``orchestrator reconcile --json`` over a subprocess, with the workers' environment."""
    settings = orch.settings
    env = stack_env(str(settings.redis_url), settings.key_prefix,
                    str(settings.workers_api_url), "sk-hostile", MAX_RETRIES="0")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "reconcile", "--hours", "1", "--grace", "0",
         "--json"], env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return dict(json.loads(done.stdout))
