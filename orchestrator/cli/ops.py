"""Operations commands: ``orchestrator metrics`` (the Prometheus exporter) and
``orchestrator health`` (the container healthcheck).

``health`` prints one line and exits 0 when everything it checks is fine, 1 with the
first reason otherwise:

- Redis answers ``PING`` (through the store's own connection settings);
- the Celery broker accepts a connection (kombu, as a worker would connect);
- Redis's ``maxmemory-policy`` cannot evict our keys (skipped where ``CONFIG`` is
  disabled, as on some managed services);
- Redis's ``used_memory`` is below ``MEMORY_WARN_SHARE`` (80 %) of ``maxmemory``: past
  it the line warns (``warning: ...``) but the exit stays 0, since nothing is broken
  yet; a server differing from the compact-record settings is warned of the same way;
- with ``--url`` (repeatable): each URL answers 2xx (Flower's ``/healthcheck``, the exporter);
- with ``--max-age S``: the heartbeat named ``--name`` (default ``celery@<hostname>``,
  Celery's own node name) was written less than S seconds ago. A heartbeat is the Redis
  key ``Keys.heartbeat(name)`` holding the epoch milliseconds of the last beat
  (``RedisStore.heartbeat``).
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from orchestrator import rules
from orchestrator.cli import output
from orchestrator.cli.output import json_option
from orchestrator.errors import InputError
from orchestrator.settings import Settings, load_settings
from orchestrator.store.connection import StoreError

if TYPE_CHECKING:
    from orchestrator.store.jobs import RedisStore

EXIT_UNHEALTHY = 1
_CREDENTIALS = re.compile(r"(\w+://)[^@/\s]*@")


def register(sub: Any) -> None:
    """Add the ``metrics`` and ``health`` commands to the CLI's subparsers."""
    met = sub.add_parser(
        "metrics", help="serve Prometheus metrics read from Redis (jobs, queues, money)"
    )
    met.add_argument(
        "--port", type=int, default=None, help="TCP port (default: $METRICS_PORT, 9808)"
    )
    met.add_argument("--address", default="127.0.0.1", help="address to bind (default: loopback)")
    json_option(met, 'print {"url"} on stdout once serving')
    met.set_defaults(func=run_metrics)

    health = sub.add_parser(
        "health", help="check Redis and the broker (exit 0 healthy, 1 not); for healthchecks"
    )
    health.add_argument(
        "--max-age",
        type=float,
        default=None,
        metavar="S",
        help="also require the heartbeat --name to be younger than S seconds",
    )
    health.add_argument(
        "--name", default=None, help="heartbeat name (default: celery@<this hostname>)"
    )
    health.add_argument(
        "--url",
        action="append",
        default=[],
        help="also require this URL to answer 2xx (repeat for several)",
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    json_option(health, 'print {"ok", "checks"} or {"ok", "reason"}')
    health.set_defaults(func=run_health)


def run_metrics(args: argparse.Namespace) -> int:
    """Serve the metrics in the foreground until SIGTERM or Ctrl-C (exit 0)."""
    settings = load_settings()
    port = settings.metrics_port if args.port is None else args.port
    if not 0 <= port < 65536:
        raise InputError("port", "must be 0-65535")
    from orchestrator.ops import collector
    from orchestrator.runtime import store_for

    store = store_for(settings)  # ConfigError without REDIS_URL
    try:
        store.ping()
    except Exception as exc:
        print(f"warning: Redis does not answer yet ({type(exc).__name__})", file=sys.stderr)
    try:
        host, bound = collector.serve(store, args.address, port)
    except OSError as exc:
        raise InputError(
            "port", f"cannot listen on {args.address}:{port}: {exc.strerror}"
        ) from None
    url = f"http://{host}:{bound}/metrics"
    if args.json:
        output.emit_line({"url": url})
    print(f"metrics on {url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    store.close()
    return 0


def run_health(args: argparse.Namespace) -> int:
    """Run the checks; print ``ok: ...`` or ``unhealthy: <reason>`` (one line)."""
    if args.max_age is not None:
        rules.positive_seconds(args.max_age, "max_age")
    rules.positive_seconds(args.timeout, "timeout")
    settings = load_settings()
    from orchestrator.runtime import store_for

    store = store_for(settings)  # ConfigError without REDIS_URL
    notes: list[str] = []
    try:
        notes.append(_check_redis(store))
        notes.append(_check_broker(settings, args.timeout))
        notes.append(_check_policy(store))
        notes += _check_memory(store, settings.memory_warn_share)
        notes += [_check_url(url, args.timeout) for url in args.url]
        if args.max_age is not None:
            notes.append(_check_heartbeat(store, args.name, args.max_age))
    except _Unhealthy as exc:
        reason = _redact(str(exc))
        if args.json:
            output.emit_line({"ok": False, "reason": reason, "checks": notes})
        else:
            print(f"unhealthy: {output.clean(reason)}", flush=True)
        return EXIT_UNHEALTHY
    finally:
        store.close()
    if args.json:
        output.emit_line({"ok": True, "checks": notes})
    else:
        print("ok: " + ", ".join(notes), flush=True)
    return 0


class _Unhealthy(Exception):
    """One failed check; the message is the reason printed."""


def _redact(text: str) -> str:
    # Connection errors may quote a URL; never print its password.
    return _CREDENTIALS.sub(r"\1***@", " ".join(text.split()))


def _check_redis(store: RedisStore) -> str:
    started = time.perf_counter()
    try:
        store.ping()
    except (StoreError, OSError) as exc:
        raise _Unhealthy(f"redis: {type(exc).__name__}: {exc}") from None
    return f"redis answered in {(time.perf_counter() - started) * 1000:.1f} ms"


def _check_broker(settings: Settings, timeout: float) -> str:
    from orchestrator.celery import make_app

    app = make_app(settings)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout
            )
    except Exception as exc:
        raise _Unhealthy(f"broker: {type(exc).__name__}: {exc}") from None
    return "broker reachable"


def _check_policy(store: RedisStore) -> str:
    try:
        policy = store.check_eviction_policy(unknown_ok=True)
    except InputError as exc:
        raise _Unhealthy(f"redis {exc}") from None
    if policy is None:
        return "maxmemory-policy unknown (CONFIG disabled)"
    return f"maxmemory-policy {policy or 'noeviction'}"


def _check_memory(store: RedisStore, share: float) -> list[str]:
    """Warnings (not failures) about Redis memory; see the module's docstring."""
    used, most = store.memory_info()
    notes = []
    if most and used >= share * most:
        notes.append(
            f"warning: redis used_memory {used} is {used / most:.0%} of maxmemory {most}"
            f" (warns from {share:.0%}: finished jobs expire after RETENTION; see"
            " docs/retention.md)"
        )
    elif most:
        notes.append(f"redis memory {used / most:.0%} of maxmemory")
    for name, value in store.config_differences().items():
        notes.append(f"warning: redis {name} is {value} (compact records want it otherwise)")
    return notes


def _check_url(url: str, timeout: float) -> str:
    import httpx

    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise _Unhealthy(f"{url}: {type(exc).__name__}") from None
    if not response.is_success:
        raise _Unhealthy(f"{url}: HTTP {response.status_code}")
    return f"{url} answered {response.status_code}"


def _check_heartbeat(store: RedisStore, name: str | None, max_age: float) -> str:
    name = name or f"celery@{socket.gethostname()}"
    raw = store.heartbeat(name)
    if raw is None:
        raise _Unhealthy(f"no heartbeat from {name}")
    try:
        age = time.time() - int(raw) / 1000
    except ValueError:
        raise _Unhealthy(f"heartbeat of {name} is not epoch milliseconds") from None
    if age > max_age:
        raise _Unhealthy(f"last heartbeat of {name} is {age:.0f} s old (max {max_age:g} s)")
    return f"heartbeat of {name} {max(age, 0):.0f} s old"
