"""Submit over HTTP to the first update: what the outbox relay's hop costs a user.

Two gateway processes on one deployment (one Redis, the emulator, one worker on every
queue as ``orchestrator up`` runs it): one with ``GATEWAY_SEND=relay`` (the default: the
streams worker's relay sends the first task) and one with ``GATEWAY_SEND=direct`` (the
gateway sends it itself), probed alternately, one job at a time. The lag is from just
before ``POST /v1/jobs`` to the job's first update stored: its move to ``running``
(which goes with the first batch of updates), seen on the job's status channel.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx

from orchestrator.ops.redis_server import free_port
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.store.tokens import TokenStore

from .harness import Context, Result, percentile, wait_for

PREFIX = "bgf"
PACE = 0.1  # seconds between probes: each turn has the stack to itself
TURN_SECONDS = 0.5  # long enough for the followers to take the stream


def _first_update(http: httpx.Client, moves: Any) -> tuple[float, float]:
    """(submit answered, first update stored), seconds from just before the submit. The
    first update is stored with the job's move to ``running``, published on its status
    channel (``moves``: subscribed to every job's)."""
    t0 = time.perf_counter()
    made = http.post("/v1/jobs", json={"input": "first update"})
    made.raise_for_status()
    answered = time.perf_counter() - t0
    channel = f"{PREFIX}:job:{made.json()['id']}:events"
    deadline = t0 + 30
    while time.perf_counter() < deadline:
        message = moves.get_message(timeout=1.0)
        if message is None or message["channel"] != channel:
            continue  # an earlier probe's later moves
        if message["data"] == "running":
            return answered, time.perf_counter() - t0
        if message["data"] not in ("submitted",):
            raise RuntimeError(f"the probe's job went {message['data']} before running")
    raise RuntimeError("no first update within 30 s")


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def scenario(ctx: Context) -> Result:
    probes = ctx.size(100, 20)
    res = Result(
        "gateway_first",
        "Submit over HTTP to the first update: the outbox relay against a gateway sending",
        baseline="the same stack's gateway sending the first task itself (GATEWAY_SEND=direct)",
        params={"probes per repetition and mode": probes, "pace_ms": PACE * 1000,
                "turn": f"{TURN_SECONDS} s, 5 events",
                "worker": "one, every queue (as orchestrator up)"},
    )  # fmt: skip
    _, api_url = ctx.emulator("emulator", turn_seconds=TURN_SECONDS, events=5)
    env = ctx.env(api_url, prefix=PREFIX, GATEWAY_RATE_PER_SECOND="100000",
                  GATEWAY_RATE_BURST="100000")  # fmt: skip
    ctx.worker("worker", env, queues="api,streams")
    urls = {}
    for mode in ("relay", "direct"):
        port = free_port()
        args = [sys.executable, "-m", "orchestrator", "serve", "--port", str(port),
                "--log-level", "warning"]  # fmt: skip
        ctx.spawn(f"gateway-{mode}", args, {**env, "GATEWAY_SEND": mode})
        urls[mode] = f"http://127.0.0.1:{port}"
        wait_for(lambda u=urls[mode]: _up(u), 30, f"the {mode} gateway")
    store = RedisStore(connect(ctx.redis_url), PREFIX)
    token, _ = TokenStore(store).create("admin", None, "bench")
    moves = store.r.pubsub(ignore_subscribe_messages=True)
    moves.psubscribe(f"{PREFIX}:job:*:events")
    headers = {"Authorization": f"Bearer {token}"}
    clients = {m: httpx.Client(base_url=u, headers=headers, timeout=30) for m, u in urls.items()}
    lag: dict[str, list[float]] = {"relay": [], "direct": []}
    p99: dict[str, list[float]] = {"relay": [], "direct": []}
    answer: dict[str, list[float]] = {"relay": [], "direct": []}
    try:
        for mode in clients:  # warm up: connections, scripts, the worker's first tasks
            _first_update(clients[mode], moves)
        for _ in range(ctx.reps):
            got: dict[str, list[tuple[float, float]]] = {"relay": [], "direct": []}
            for _ in range(probes):
                for mode, http in clients.items():
                    got[mode].append(_first_update(http, moves))
                    time.sleep(PACE)
            for mode, pairs in got.items():
                lag[mode].append(percentile([f for _, f in pairs], 50) * 1000)
                p99[mode].append(percentile([f for _, f in pairs], 99) * 1000)
                answer[mode].append(percentile([a for a, _ in pairs], 50) * 1000)
    finally:
        for http in clients.values():
            http.close()
        moves.close()
        store.r.close()
    res.add("submit to first update p50", "ms", lag["relay"], lag["direct"])
    res.add("submit to first update p99", "ms", p99["relay"], p99["direct"])
    res.add("submit answered p50", "ms", answer["relay"], answer["direct"])
    res.notes.append("probes alternate between the two gateways; each waits for its first "
                     "update before the next submit")  # fmt: skip
    return res
