"""The HTTP gateway: live-update delivery lag over SSE, the gateway's memory, and the
cost of submitting over HTTP.

- fan-in: many SSE clients on one job; fan-out: many jobs with one client each. Updates
  are written straight to the update streams (``XADD``, ids as the follower's), each
  carrying its write time; lag = when a client parsed its SSE event minus that time.
  The clients run in ``CLIENT_PROCESSES`` processes of their own (each its own event
  loop), so the figure measures delivery by the gateway rather than one client process
  parsing every event on a core it shares with the gateway. Baseline, same run, in a
  process of its own: a bare reader doing blocking ``XREAD`` on the same streams
  straight from Redis (what a client of Redis itself would see).
- the gateway's RSS (one uvicorn process) with every client connected;
- submit: ``POST /v1/jobs`` over HTTP (keep-alive client, one at a time) against
  ``Orchestrator.submit()`` called in this process, same Redis, same run. A streams
  worker runs meanwhile: its outbox relay sends the jobs the gateway stores, as deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import httpx
import redis

from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import Submission
from orchestrator.ops.redis_server import free_port
from orchestrator.settings import load_settings
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.store.keys import Keys
from orchestrator.store.tokens import TokenStore

from .harness import Context, Result, cpu_seconds, percentile, rss_mb, wait_for

PREFIX = "bgw"
ROUNDS_EVERY = 0.2  # seconds between rounds of updates
#: Processes the SSE clients are spread over, each with its own event loop, so that
#: parsing 5,000 events a second is not done on one core shared with the gateway.
CLIENT_PROCESSES = 4


def _jobs(store: RedisStore, count: int) -> list[tuple[str, str]]:
    """``count`` jobs that are running on their own worker: (job id, worker id)."""
    out = []
    for i in range(count):
        job, _ = store.create_job(Submission(input=f"bench {i}"))
        worker = f"wrk_{job.id[4:]}"
        store.r.hset(store.keys.job(job.id), mapping={"worker_id": worker, "update_from": 0,
                                                      "status": "running"})  # fmt: skip
        out.append((job.id, worker))
    return out


async def _client(
    host: str, port: int, path: str, token: str, want: int, lags: list[float],
    connected: Callable[[], None],
) -> None:  # fmt: skip
    """One SSE client on a bare asyncio connection (HTTP/1.1 by hand, chunked body):
    light, so that the client processes measure the gateway, not themselves."""
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
               "Accept: text/event-stream\r\n\r\n")  # fmt: skip
    writer.write(request.encode())
    got = 0
    try:
        while got < want:
            line = await reader.readline()
            if not line:
                raise RuntimeError("the gateway closed a stream early")
            if line.startswith(b"retry:"):
                connected()
            elif line.startswith(b"data:"):
                payload = json.loads(line[5:])
                if "t" not in payload:
                    raise RuntimeError(f"not an update: {payload}")
                lags.append(time.time() - payload["t"])
                got += 1
    finally:
        writer.close()


async def _clients(host: str, port: int, token: str, paths: list[str], want: int,
                   conn: Connection) -> list[float]:  # fmt: skip
    """Every client of one client process; tells ``conn`` once all are connected."""
    lags: list[float] = []
    count = [0]

    def connected() -> None:
        count[0] += 1
        if count[0] == len(paths):
            conn.send(("connected", None))

    await asyncio.gather(
        *(_client(host, port, path, token, want, lags, connected) for path in paths)
    )
    return lags


def _client_process(host: str, port: int, token: str, paths: list[str], want: int,
                    conn: Connection) -> None:  # fmt: skip
    """A process of SSE clients with its own event loop: (``connected``, then ``lags``
    or ``error``) on ``conn``."""
    _fast_loop()
    try:
        conn.send(("lags", asyncio.run(_clients(host, port, token, paths, want, conn))))
    except BaseException as e:  # reported to the bench process, which raises it
        conn.send(("error", repr(e)))


def _bare_process(redis_url: str, workers: list[str], want: int, conn: Connection) -> None:
    """The baseline in a process of its own: blocking XREAD straight from Redis over every
    stream; (``connected``, then ``lags`` or ``error``) on ``conn``."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(PREFIX)
    positions = {keys.updates(w): "0-0" for w in workers}
    lags: list[float] = []
    try:
        r.ping()
        conn.send(("connected", None))
        while len(lags) < want * len(workers):
            for chunk_start in range(0, len(workers), 500):
                chunk = dict(list(positions.items())[chunk_start : chunk_start + 500])
                reply = r.xread(chunk, block=50, count=1000)
                now = time.time()
                for stream, entries in reply or []:
                    for eid, fields in entries:
                        lags.append(now - json.loads(fields["data"])["t"])
                        positions[stream] = eid
        conn.send(("lags", lags))
    except BaseException as e:
        conn.send(("error", repr(e)))
    finally:
        r.close()


def _fast_loop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _await(conns: list[Connection], what: str, timeout: float) -> list[Any]:
    """Each connection's next message, which must be ``what``; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    out = []
    for conn in conns:
        try:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"no {what} from a client process within {timeout} s")
            kind, value = conn.recv()
        except EOFError:
            raise RuntimeError(f"a client process ended before {what}") from None
        if kind != what:
            raise RuntimeError(f"a client process: {kind} {value}")
        out.append(value)
    return out


def _deliver(
    ctx: Context, gateway: str, token: str, jobs: list[tuple[str, str]], per_job: int,
    rounds: int, memory: Callable[[], float], cpu: Callable[[], float],
) -> tuple[list[float], list[float], float, float]:  # fmt: skip
    """Connect ``per_job`` clients to each job (spread over ``CLIENT_PROCESSES``
    processes), then write ``rounds`` updates to every job; (gateway lags, bare-reader
    lags, gateway RSS with all connected, gateway CPU seconds while delivering)."""
    store = RedisStore(connect(ctx.redis_url), PREFIX)
    host, port = gateway.removeprefix("http://").split(":")
    paths = [f"/v1/jobs/{job_id}/events" for job_id, _ in jobs for _ in range(per_job)]
    mp = multiprocessing.get_context("spawn")
    procs: list[BaseProcess] = []
    conns: list[Connection] = []
    try:
        for i in range(CLIENT_PROCESSES):
            mine, theirs = mp.Pipe()
            args = (host, int(port), token, paths[i::CLIENT_PROCESSES], rounds, theirs)
            procs.append(mp.Process(target=_client_process, args=args, daemon=True))
            conns.append(mine)
        mine, theirs = mp.Pipe()
        bare = mp.Process(target=_bare_process, daemon=True,
                          args=(ctx.redis_url, [w for _, w in jobs], rounds, theirs))  # fmt: skip
        procs.append(bare)
        for proc in procs:
            proc.start()
        _await(conns, "connected", 300)
        _await([mine], "connected", 60)
        time.sleep(1.0)  # let the gateway's reader settle on every feed
        rss = memory()
        cpu0 = cpu()
        for n in range(rounds):
            with store.r.pipeline(transaction=False) as pipe:
                for _, worker in jobs:
                    data = json.dumps({"t": time.time(), "n": n})
                    pipe.xadd(store.keys.updates(worker), {"data": data}, id=f"0-{n + 1}")
                pipe.execute()
            time.sleep(ROUNDS_EVERY)
        lags = [lag for got in _await(conns, "lags", 300) for lag in got]
        spent = cpu() - cpu0
        base = _await([mine], "lags", 60)[0]
    finally:
        for proc in procs:
            if proc.pid is None:
                continue  # never started
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        store.r.close()
    return lags, base, rss, spent


def scenario(ctx: Context) -> Result:
    clients_one_job = ctx.size(1000, 200)
    many_jobs = ctx.size(1000, 200)
    rounds = ctx.size(20, 10)
    submits = ctx.size(300, 100)
    res = Result(
        "gateway",
        "HTTP gateway: SSE delivery lag, its memory, submit over HTTP",
        baseline="a bare blocking XREAD reader on the same streams; in-process submit()",
        params={"clients on one job": clients_one_job, "jobs with one client": many_jobs,
                "updates per job": rounds, "submits": submits, "gateway": "1 uvicorn process"},
    )  # fmt: skip
    port = free_port()
    env = ctx.env("http://127.0.0.1:9", prefix=PREFIX, GATEWAY_RATE_PER_SECOND="100000",
                  GATEWAY_RATE_BURST="100000")  # fmt: skip
    args = [sys.executable, "-m", "orchestrator", "serve", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    proc = ctx.spawn("gateway", args, env)  # its ready line is below the log level
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url), 30, "the gateway")
    store = RedisStore(connect(ctx.redis_url), PREFIX)
    token, _ = TokenStore(store).create("admin", None, "bench")
    lag: dict[str, list[float]] = {}
    base: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {"one": [], "many": []}
    per_event: dict[str, list[float]] = {}
    for _ in range(ctx.reps):
        for name, count, per_job in (("one", 1, clients_one_job), ("many", many_jobs, 1)):
            jobs = _jobs(store, count)
            probes = (lambda: rss_mb(proc.pid), lambda: cpu_seconds(proc.pid))
            got, bare, mb, spent = _deliver(ctx, url, token, jobs, per_job, rounds, *probes)
            per_event.setdefault(name, []).append(spent / max(len(got), 1) * 1e6)
            if len(got) != count * per_job * rounds:
                raise RuntimeError(f"{name}: {len(got)} of {count * per_job * rounds} delivered")
            lag.setdefault(name, []).append(percentile(got, 99) * 1000)
            lag.setdefault(name + "50", []).append(percentile(got, 50) * 1000)
            base.setdefault(name, []).append(percentile(bare, 99) * 1000)
            rss[name].append(mb)
    m = res.add(f"lag p99, {clients_one_job} clients on one job", "ms", lag["one"], base["one"],
                goal="≤ 250 ms")  # fmt: skip
    m.met = max(lag["one"]) <= 250
    res.add(f"lag p50, {clients_one_job} clients on one job", "ms", lag["one50"])
    m = res.add(f"lag p99, {many_jobs} jobs with one client each", "ms", lag["many"],
                base["many"], goal="≤ 250 ms")  # fmt: skip
    m.met = max(lag["many"]) <= 250
    res.add(f"lag p50, {many_jobs} jobs with one client each", "ms", lag["many50"])
    res.add("gateway CPU per event delivered, one job", "µs", per_event["one"])
    res.add("gateway CPU per event delivered, many jobs", "µs", per_event["many"])
    res.add("gateway RSS, one job's clients connected", "MiB", rss["one"])
    res.add("gateway RSS, every job's client connected", "MiB", rss["many"])
    # The outbox relay that sends what the gateway stores, in a streams worker as
    # deployed (GATEWAY_SEND=relay): its sends share the machine with the submits.
    relay = ctx.worker("relay", env, queues="streams", concurrency=2)
    http_ms, local_ms, floor_ms = _submits(ctx, url, token, env, submits)
    # Every job the gateway stored was sent (the SSE part's jobs, never sent, are
    # running: not the relay's).
    wait_for(lambda: not store.wakes.unsent(store.unsent(-60_000, 10_000)), 60, "the relay")
    ctx.stop(relay)
    m = res.add("submit p50", "ms", http_ms, local_ms, goal="≤ 2x in-process submit()")
    m.met = m.ratio is not None and m.ratio <= 2
    res.add("GET /healthz p50 (one Redis PING: the HTTP floor)", "ms", floor_ms)
    res.notes.append(
        "submit: the jobs submitted over HTTP are sent by the outbox relay of a streams "
        "worker running meanwhile (GATEWAY_SEND=relay); in-process submit() sends its own"
    )
    res.notes.append(
        f"lag: from the update's write to Redis to its SSE event parsed by a client; the "
        f"clients run in {CLIENT_PROCESSES} processes of their own, the bare reader in "
        "another (all share the machine's cores with the gateway)"
    )
    store.r.close()
    ctx.stop(proc)
    return res


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _submits(
    ctx: Context, url: str, token: str, env: dict[str, str], count: int
) -> tuple[list[float], list[float], list[float]]:
    """p50 (ms) of ``count`` submits over HTTP and in-process, and of as many
    ``GET /healthz`` (the HTTP round trip's floor here), per repetition."""
    settings = load_settings(redis_url=ctx.redis_url, key_prefix=PREFIX,
                             workers_api_url=env["WORKERS_API_URL"],
                             workers_api_key=env["WORKERS_API_KEY"])  # fmt: skip
    http_ms: list[float] = []
    local_ms: list[float] = []
    floor_ms: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    with Orchestrator(settings) as orch, httpx.Client(base_url=url, headers=headers) as http:
        orch.submit("warm up")
        http.post("/v1/jobs", json={"input": "warm up"}).raise_for_status()
        for _ in range(ctx.reps):
            times = []
            for i in range(count):
                t0 = time.perf_counter()
                http.post("/v1/jobs", json={"input": f"http {i}"}).raise_for_status()
                times.append(time.perf_counter() - t0)
            http_ms.append(percentile(times, 50) * 1000)
            times = []
            for i in range(count):
                t0 = time.perf_counter()
                orch.submit(f"local {i}")
                times.append(time.perf_counter() - t0)
            local_ms.append(percentile(times, 50) * 1000)
            times = []
            for _ in range(count):
                t0 = time.perf_counter()
                http.get("/healthz").raise_for_status()
                times.append(time.perf_counter() - t0)
            floor_ms.append(percentile(times, 50) * 1000)
    return http_ms, local_ms, floor_ms
