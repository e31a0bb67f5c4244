"""Serving a process's own instruments (:mod:`orchestrator.ops.instruments`) to Prometheus.

``orchestrator worker``, ``beat`` and ``serve`` take ``--metrics-port`` (default
``$PROCESS_METRICS_PORT``; unset: not served) and ``--metrics-address`` (default
``$PROCESS_METRICS_ADDRESS``, loopback). The port answers every path, ``/metrics`` by
convention, without auth, as the exporter does: bind it where only Prometheus reaches.
Only what this process counts is served; the figures read from Redis are the
exporter's (:mod:`orchestrator.ops.collector`).

A process whose work runs in child processes (the prefork pool, ``serve --workers N``)
serves all of them only in prometheus_client's multiprocess mode: set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory of its own before it starts (each
process writes its figures there; the port sums them). Without it the port serves the
main process alone (a prefork worker: its stream follower and relay), or, for the
gateway, nothing, and says so at start.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InputError

#: prometheus_client's own variable: read when it is imported, so set before start.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

if TYPE_CHECKING:
    from orchestrator.settings import Settings


def add_options(parser: Any) -> None:
    """The ``--metrics-port`` and ``--metrics-address`` options of a long-running command."""
    parser.add_argument(
        "--metrics-port", type=int, default=None, metavar="PORT",
        help="serve this process's own metrics on PORT, 0: a free one (default: "
        "$PROCESS_METRICS_PORT; unset: not served)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-address", default=None, metavar="ADDRESS",
        help="address the metrics port binds (default: $PROCESS_METRICS_ADDRESS, 127.0.0.1)",
    )  # fmt: skip


def wanted(args: argparse.Namespace, settings: Settings) -> tuple[str, int] | None:
    """The address and port asked for (the options over the settings), None for none;
    InputError ``metrics_port`` for a port out of range."""
    port = settings.process_metrics_port if args.metrics_port is None else args.metrics_port
    if port is None:
        return None
    if not 0 <= port < 65536:
        raise InputError("metrics_port", "must be 0-65535")
    return args.metrics_address or settings.process_metrics_address, port


def serve(part: str, where: tuple[str, int] | None) -> str | None:
    """Serve the default registry in a daemon thread; say ``<part> metrics on <url>`` on
    stderr and return the URL (None when ``where`` is None). InputError ``metrics_port``
    when the port cannot be bound (its text holds the OS's reason, which the stack
    reads to pick another port)."""
    if where is None:
        return None
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

    registry = REGISTRY
    directory = os.environ.get(MULTIPROCESS_DIR)
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    address, port = where
    try:
        server, _thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise InputError(
            "metrics_port", f"cannot listen on {address}:{port}: {exc.strerror}"
        ) from None
    host, bound = server.server_address[:2]
    url = f"http://{host!s}:{bound}/metrics"
    print(f"{part} metrics on {url}", file=sys.stderr, flush=True)
    return url


def pooled(part: str, what: str) -> bool:
    """For a process whose ``what`` runs in child processes: whether they are served
    (multiprocess mode is on); if not, say so once, at start."""
    if os.environ.get(MULTIPROCESS_DIR):
        return True
    print(
        f"note: {part} metrics: {what} not served (set {MULTIPROCESS_DIR} to an empty "
        "directory to serve them)", file=sys.stderr, flush=True,
    )  # fmt: skip
    return False
