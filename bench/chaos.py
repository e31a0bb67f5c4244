"""Chaos scenarios against real processes: a private Redis, Celery workers and beats, and
the emulator, with faults injected while jobs run.

    python -m bench.chaos                          # every scenario, long form
    python -m bench.chaos sigkill --jobs 1000      # one scenario, sized
    python -m bench.chaos outage beats --seconds 30 --workdir var/chaos

Each scenario starts its own ``redis-server`` (free port, AOF, a password), the emulator
in this process and real ``orchestrator worker`` / ``orchestrator beat`` processes,
injects its faults, waits for every job and prints one row: jobs, faults injected, jobs
lost, duplicate upstream turns, duplicate or missing updates (checked against the
emulator's own event log, event by event), the ledger difference in micro-dollars
(against the emulator's ground truth), schedule slots doubled or missed, and what is
still held once every job has ended (``held``: budget holds, concurrency slots, places
in a queue, follow leases, outbox/dispatched/begun/live/ended entries; see
``bench/leftovers.py``). Every job runs under budget caps and per-tenant concurrency
limits, so it takes a hold and a slot, and some wait for one. The short versions CI
runs are in ``tests/test_chaos.py``; RELIABILITY.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from kombu.exceptions import OperationalError

from orchestrator.emulator import EmulatorConfig, EmulatorServer
from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import TERMINAL
from orchestrator.ledger import FIELDS, MONEY_FIELDS
from orchestrator.ops.processes import (
    QUICK_RETRIES,
    Proc,
    broker_depth,
    celery_beat,
    celery_worker,
    deployment_env,
    wait_for,
)
from orchestrator.ops.redis_server import RedisServer
from orchestrator.settings import load_settings
from orchestrator.store.schedules import ScheduleStore

from . import leftovers

API_KEY = "sk-chaos-" + secrets.token_hex(16)
REDIS_PASSWORD = "redis-" + secrets.token_hex(16)
PREFIX = "chaos"
TRANSIENT = (redis.RedisError, OperationalError, OSError)
HEADER = ("scenario", "jobs", "faults", "lost", "dup turns", "bad updates", "ledger Δ µ$", "slots",
          "held")  # fmt: skip


@dataclass
class Row:
    """One scenario's outcome; ``slots`` is None where no schedule ran."""

    scenario: str
    jobs: int = 0
    faults: int = 0
    lost: int = 0
    dup_turns: int = 0
    bad_updates: int = 0
    ledger_diff: int = 0
    slots: int | None = None
    held: int = 0
    seconds: float = 0.0
    note: str = ""

    def markdown(self) -> str:
        figures = (self.jobs, self.faults, self.lost, self.dup_turns, self.bad_updates,
                   self.ledger_diff, "-" if self.slots is None else self.slots,
                   self.held)  # fmt: skip
        cells = (self.scenario, *map(str, figures), f"{self.seconds:.0f}", self.note)
        return "| " + " | ".join(cells) + " |"


# A create that outlived the client's timeout finds its client gone: expected here.
logging.getLogger("uvicorn.error").addFilter(lambda r: "ClientDisconnect" not in repr(r.exc_info))


class Cluster:
    """Redis (own port, password), the emulator, and named worker/beat processes."""

    def __init__(self, workdir: Path, *, fsync: str = "everysec", turn: float = 0.5,
                 events: int = 8, tenant_slots: int = 4, **env: str) -> None:  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.events, self.extra, self.started = workdir, events, env, 0
        self.tenant_slots = tenant_slots  # running turns (see leftovers.apply_controls)
        self.redis = RedisServer(appendfsync=fsync, data_dir=workdir / "redis",
                                 args=["--requirepass", REDIS_PASSWORD])  # fmt: skip
        config = EmulatorConfig(turn_seconds=turn, events_per_turn=events, seed=11)
        self.emulator = EmulatorServer(API_KEY, config)
        self.procs: dict[str, Proc] = {}
        self.specs: dict[str, tuple[str, ...]] = {}

    def __enter__(self) -> Cluster:
        self.redis.start()
        self.emulator.start()
        self.url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.redis.port}/0"
        self.env = deployment_env(
            self.url, PREFIX, self.emulator.url, API_KEY, FOLLOW_LEASE_SECONDS="3",
            VISIBILITY_TIMEOUT="10", RESEND_AFTER_SECONDS="2",
            FILES_DIR=str(self.workdir / "files"), **{**QUICK_RETRIES, **self.extra},
        )  # fmt: skip
        self.orch = Orchestrator(load_settings(
            redis_url=self.url, key_prefix=PREFIX, workers_api_url=self.emulator.url,
            workers_api_key=API_KEY,
        ))  # fmt: skip
        self.store = self.orch.store
        leftovers.apply_controls(self.orch, self.tenant_slots)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        self.http = httpx.Client(base_url=self.emulator.url, timeout=30, headers=auth)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            proc.stop(timeout=10)
        self.orch.close()
        self.http.close()
        self.emulator.stop()
        self.redis.stop()

    # --- processes -------------------------------------------------------------------

    def start(self, name: str, *args: str) -> Proc:
        """Start ``name`` (``beat*``: a beat with ``args``; else a worker on queue ``args[0]``)."""
        self.started += 1
        self.specs[name] = args
        log = self.workdir / f"{name}.{self.started}.log"
        if name.startswith("beat"):
            proc = celery_beat(self.env, log, *args)
        else:
            queues = args[0] if args else "api,streams"
            proc = celery_worker(self.env, log, queues=queues, name=name)
        self.procs[name] = proc.start()
        return proc

    def start_workers(self, count: int = 2) -> None:
        """``count`` workers consuming both queues (the one-box layout)."""
        for i in range(1, count + 1):
            self.start(f"w{i}")

    def kill(self, name: str) -> None:
        """SIGKILL the process group of ``name`` (no clean shutdown), then start it again."""
        self.procs[name].kill()
        self.start(name, *self.specs[name])

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    # --- the emulator ----------------------------------------------------------------

    def faults(self, **changes: Any) -> None:
        self.http.post("/_emulator/faults", json=changes).raise_for_status()

    def truth(self) -> dict[str, Any]:
        return dict(self.http.get("/_emulator/ledger").json())

    def injected(self) -> int:
        """Error answers the emulator injected (429, 5xx, lost responses)."""
        routes = self.truth()["requests_by_route"].values()
        return sum(n for by in routes for s, n in by.items() if s in ("429", "500", "502", "503"))

    # --- jobs --------------------------------------------------------------------------

    def submit(self, key: str) -> str:
        """Submit one job as a careful client does: retry a failure with the same key."""
        while True:
            try:
                tags = {"tenant": leftovers.tenant_of(key)}
                return self.orch.submit(f"chaos {key}", budget="low", idempotency_key=key,
                                        tags=tags).id  # fmt: skip
            except TRANSIENT:
                time.sleep(0.2)

    def feed(self, count: int, per_second: float) -> tuple[threading.Thread, list[str]]:
        """Submit ``count`` jobs at a steady rate from a thread; the list fills as it goes."""
        ids: list[str] = []

        def run() -> None:
            for i in range(count):
                ids.append(self.submit(f"j{i}"))
                time.sleep(1 / per_second)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, ids

    def pending(self, ids: list[str]) -> list[str]:
        try:
            with self.store.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self.store.keys.job(job_id), "status")
                states = pipe.execute()
        except TRANSIENT:
            return list(ids)
        return [j for j, s in zip(ids, states, strict=True) if s not in TERMINAL]

    def wait(self, ids: list[str], timeout: float) -> list[str]:
        """The jobs still not finished after ``timeout`` seconds (lost, if any)."""
        deadline = time.monotonic() + timeout
        left = self.pending(ids)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = self.pending(left)
        return left

    def all_jobs(self) -> list[str]:
        return list(self.store.r.zrange(self.store.keys.jobs, 0, -1))

    # --- the figures -----------------------------------------------------------------

    def measure(self, row: Row, ids: list[str], timeout: float = 180.0) -> Row:
        """Wait for ``ids`` (and every other job in the store), then for what they held to
        be given back (bounded: see ``leftovers.RELEASE_SECONDS``); fill in the row."""
        gone = [j for j in ids if self.store.get_job(j) is None]
        known = sorted((set(ids) | set(self.all_jobs())) - set(gone))
        left = self.wait(known, timeout)
        failed = [j for j in known if j not in left and _status(self.store, j) == "failed"]
        row.jobs, row.lost = len(ids), len(gone) + len(left) + len(failed)
        row.note = "; ".join(n for n in (row.note, *map(self.describe, left[:3])) if n)
        ended = [j for j in known if j not in left]
        held = leftovers.settle(self.orch, ended, left)  # before the ledger: a settle posts
        held.update(leftovers.unbounded(self.orch))  # and nothing kept for good by mistake
        row.held = sum(held.values())
        truth = self.truth()
        row.dup_turns = truth["turns_started"] - (len(known) - len(left) - len(failed))
        row.bad_updates = sum(self.update_errors(j) for j in ended)
        total = self.orch.costs()["total"]
        row.ledger_diff = sum(abs(total[f] - truth[f]) for f in MONEY_FIELDS)
        tokens = sum(total[f] != truth[f] for f in FIELDS if f not in MONEY_FIELDS)
        waited = self.logs().count("waits for a slot")
        # A worker that exited by itself (not killed by the scenario) explains jobs left
        # queued: say so, it is restarted by nothing here.
        exited = [n for n, p in self.procs.items() if not n.startswith("beat") and not p.alive()]
        notes = [row.note, f"workers exited: {', '.join(exited)}" * bool(exited),
                 f"{len(failed)} failed" * bool(failed),
                 f"{tokens} token fields off" * bool(tokens),
                 f"{waited} waits for a slot" * bool(waited),
                 leftovers.describe(self.orch, held, ended)]  # fmt: skip
        row.note = "; ".join(n for n in notes if n)
        return row

    def describe(self, job_id: str) -> str:
        """Where a job that never finished stands: its record, history and follow state."""
        r, keys = self.store.r, self.store.keys
        record = r.hgetall(keys.job(job_id))
        fields = ("status", "worker_id", "attempts", "turn", "update_from", "update_to")
        history = [h.get("status") for h in self.store.history(job_id)]
        follow = (r.zscore(keys.follows, job_id), r.hget(keys.follow_owners, job_id))
        outbox = r.zscore(keys.outbox, job_id)
        shown = {f: record[f] for f in fields if f in record}
        return f"stuck {job_id}: {shown} history {history} follow {follow} outbox {outbox}"

    def update_errors(self, job_id: str) -> int:
        """Updates of the job's turn missing, doubled or unlike the emulator's own log."""
        job = self.store.get_job(job_id)
        if job is None or job.worker_id is None or job.status != "completed":
            return 0
        start, end = job.update_from or 0, job.update_to or 0
        stored = self.store.read_updates(job.worker_id, start - 1, count=end - start + 1)
        stored = [(i, d) for i, d in stored if i < end]
        record = self.emulator.state.workers.get(job.worker_id)
        truth = record.updates[start:end] if record else []
        want = [json.loads(raw.decode().split("data: ", 1)[1]) for raw in truth]
        got = [d for _, d in stored]
        wrong = sum(a != b for a, b in zip(got, want, strict=False))
        indices_ok = [i for i, _ in stored] == list(range(start, start + len(stored)))
        return wrong + abs(len(got) - len(want)) + abs(end - start - self.events) + (not indices_ok)


def _status(store: Any, job_id: str) -> str:
    return str(store.r.hget(store.keys.job(job_id), "status"))


def slot_errors(c: Cluster, ids: list[str]) -> tuple[int, int, int]:
    """(slots run, slots doubled or unaccounted for, slots missed by policy)."""
    ss = ScheduleStore(c.store)

    def settled() -> bool:
        if ss.pending() or broker_depth(c.env, ("api",)):
            return False
        recorded = sum(c.store.r.zcard(c.store.keys.schedule_slots(i)) for i in ids)
        return recorded >= sum(s.counts["claimed"] for s in ss.many(ids))

    wait_for(settled, 180, "every claimed slot to be run", every=0.5)
    ran = bad = missed = 0
    for s in ss.many(ids):
        slots = [int(r["slot"]) for r in ss.runs(s.id, 1_000_000)]
        step, anchor = s.timing.interval_ms or 1, s.timing.anchor_ms
        grid = (s.next_run_ms - anchor) // step - 1  # slots before the next run
        ran += len(slots)
        missed += s.counts["missed"]
        bad += len(slots) - len(set(slots)) + abs(len(set(slots)) + s.counts["missed"] - grid)
        bad += sum((slot - anchor) % step != 0 for slot in slots)
    return ran, bad, missed


# --- the scenarios ---------------------------------------------------------------------


def sigkill(c: Cluster, jobs: int, per_second: float = 10.0) -> Row:
    """SIGKILL a random stream or API worker every 2-4 s (and restart it) while jobs run."""
    for name, queue in (("api1", "api"), ("api2", "api"), ("str1", "streams"), ("str2", "streams")):
        c.start(name, queue)
    feeder, ids = c.feed(jobs, per_second)
    rng, kills = random.Random(5), 0
    # Kill while jobs arrive and for a while after, but not for ever: a slow machine must
    # not turn the kills into a livelock; measure() then reports any job left behind.
    stop_by = time.monotonic() + jobs / per_second + 30
    while (feeder.is_alive() or c.pending(ids)) and time.monotonic() < stop_by:
        time.sleep(rng.uniform(2, 4))
        c.kill(rng.choice(sorted(c.procs)))
        kills += 1
    return c.measure(Row("SIGKILL api/stream workers", faults=kills), ids)


def redis_restart(c: Cluster, jobs: int) -> Row:
    """SIGKILL redis-server mid-run and start it again on the same port (AOF replays)."""
    c.start_workers()
    feeder, ids = c.feed(jobs, per_second=max(10.0, jobs / 20))
    wait_for(lambda: len(ids) >= jobs // 2, 120, "half the jobs submitted")
    c.redis.restart(kill=True)
    feeder.join()
    return c.measure(Row(f"redis SIGKILL+restart ({c.redis.appendfsync})", faults=1), ids)


def redis_outage(c: Cluster, jobs: int, seconds: float = 20.0) -> Row:
    """Redis unreachable for ``seconds`` (stopped, then started on the same port)."""
    c.start_workers()
    c.start("beat1")
    every = {"type": "interval", "intervalSeconds": 2}
    sids = [c.orch.schedules.create(None, f"outage {i}", every).id for i in range(10)]
    feeder, ids = c.feed(jobs, per_second=max(5.0, jobs / (seconds + 10)))
    time.sleep(3)
    c.redis.stop()
    time.sleep(seconds)
    c.redis.start()
    feeder.join()
    time.sleep(6)  # let beat fire a few slots after the outage
    c.procs["beat1"].stop()
    _, bad, missed = slot_errors(c, sids)
    note = f"{missed} slots missed by policy"
    return c.measure(Row(f"redis away {seconds:g} s", faults=1, slots=bad, note=note), ids)


def storm(c: Cluster, jobs: int) -> Row:
    """429 with Retry-After, 5xx, responses past the client timeout, cut streams, lost answers."""
    c.faults(rate_429=0.2, rate_500=0.08, rate_503=0.08, rate_slow=0.05, slow_seconds=1.5,
             rate_cut_stream=0.3, rate_lost_response=0.05, retry_after_seconds=0.3,
             seed=21)  # fmt: skip
    c.start_workers()
    ids = [c.submit(f"s{i}") for i in range(jobs)]
    row = c.measure(Row("upstream fault storm"), ids)
    logs = c.logs()
    row.faults = c.injected() + logs.count("stream broken after") + logs.count("timed out (")
    return row


def beats(c: Cluster, schedules: int, seconds: float = 60.0, min_kills: int = 0) -> Row:
    """Three beats, one SIGKILLed (and restarted) every 1-3 s, over thousands of slots.

    Runs ``seconds``, and on until ``min_kills`` kills were made: a restart takes longer
    on a loaded machine, and the kill count is what the scenario is about. Bounded at
    twice ``seconds`` all the same."""
    c.start("w1", "api,streams")
    flags = ("--misfire-grace", "5", "--resend-after", "2")
    for name in ("beat1", "beat2", "beat3"):
        c.start(name, *flags)
    every = {"type": "interval", "intervalSeconds": 1}
    sids = [c.orch.schedules.create(None, f"b{i}", every).id for i in range(schedules)]
    rng, kills, start = random.Random(9), 0, time.monotonic()
    end, cap = start + seconds, start + 2 * seconds
    while time.monotonic() < end or (kills < min_kills and time.monotonic() < cap):
        time.sleep(rng.uniform(1, 3))
        c.kill(rng.choice(["beat1", "beat2", "beat3"]))
        kills += 1
    for name in ("beat1", "beat2", "beat3"):
        c.procs[name].stop()
    ran, bad, missed = slot_errors(c, sids)
    row = c.measure(Row("3 beats, kills", faults=kills, slots=bad), [])
    notes = [f"{ran} slots decided, {missed} missed by policy", row.note]
    row.jobs, row.note = ran, "; ".join(n for n in notes if n)
    return row


def power_loss(c: Cluster, jobs: int) -> Row:
    """A host crash with ``appendfsync everysec``: the AOF loses its last second of writes."""
    aof_dir = c.redis.data_dir / "appendonlydir"
    sizes: list[tuple[float, Path, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            incr = sorted(aof_dir.glob("*.incr.aof"))
            if incr:
                sizes.append((time.monotonic(), incr[-1], incr[-1].stat().st_size))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    c.start_workers()
    feeder, ids = c.feed(jobs, per_second=max(10.0, jobs / 20))
    wait_for(lambda: len(ids) >= jobs // 2, 120, "half the jobs submitted")
    crash = time.monotonic()
    c.redis.stop(kill=True)
    stop.set()
    _, path, size = [s for s in sizes if s[0] <= crash - 1.0][-1]
    cut = path.stat().st_size - size
    with open(path, "r+b") as f:
        f.truncate(size)
    c.redis.start()
    feeder.join()
    # The client holds job ids the store no longer knows: it submits them again, by key.
    gone = [i for i, job_id in enumerate(ids) if c.store.get_job(job_id) is None]
    for i in gone:
        ids[i] = c.submit(f"j{i}")
    note = f"AOF lost its last {cut} bytes; {len(gone)} jobs gone, submitted again by key"
    return c.measure(Row("host crash (everysec)", faults=1, note=note), ids)


SCENARIOS: dict[str, tuple[Callable[..., Row], dict[str, Any], dict[str, Any]]] = {
    # name: (function, cluster options, default sizes of the long form); ``tenant_slots``:
    # about what the long form's arrival rate keeps running, so some jobs wait for a
    # slot and the run takes about as long as without the limits
    "sigkill": (sigkill, {"turn": 1.5, "events": 10, "tenant_slots": 7}, {"jobs": 1000}),
    "restart-everysec": (redis_restart, {"fsync": "everysec", "tenant_slots": 8}, {"jobs": 400}),
    "restart-always": (redis_restart, {"fsync": "always", "tenant_slots": 8}, {"jobs": 400}),
    "outage": (redis_outage, {}, {"jobs": 300, "seconds": 20.0}),
    "storm": (storm, {"HTTP_TIMEOUT": "1", "tenant_slots": 16}, {"jobs": 500}),
    "beats": (beats, {"turn": 0.0, "events": 2, "tenant_slots": 8},
              {"schedules": 100, "seconds": 60.0}),
    "power-loss": (power_loss, {"fsync": "everysec", "tenant_slots": 8}, {"jobs": 400}),
}


def run(name: str, workdir: Path, **sizes: Any) -> Row:
    """Run one scenario in its own cluster under ``workdir``; the row, timed."""
    function, options, defaults = SCENARIOS[name]
    started = time.monotonic()
    with Cluster(workdir / name, **options) as cluster:
        row = function(cluster, **{**defaults, **sizes})
    row.seconds = time.monotonic() - started
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default all)")
    parser.add_argument("--jobs", type=int, help="jobs per scenario (schedules for beats)")
    parser.add_argument("--seconds", type=float, help="outage or beat run length")
    parser.add_argument("--workdir", type=Path, help="keep logs and Redis data here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenario) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    print("| " + " | ".join((*HEADER, "s", "notes")) + " |")
    print("|" + "---|" * (len(HEADER) + 2))
    worst = 0
    for name in args.scenario or list(SCENARIOS):
        sizes: dict[str, Any] = {}
        if args.jobs is not None:
            sizes["schedules" if name == "beats" else "jobs"] = args.jobs
        if args.seconds is not None and name in ("outage", "beats"):
            sizes["seconds"] = args.seconds
        row = run(name, workdir, **sizes)
        print(row.markdown(), flush=True)
        figures = (row.lost, row.dup_turns, row.bad_updates, row.ledger_diff, row.slots or 0,
                   row.held)  # fmt: skip
        worst = max(worst, *figures)
    print(f"logs and Redis data: {workdir}", file=sys.stderr)
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
