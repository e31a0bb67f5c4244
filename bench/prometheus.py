"""A real Prometheus server (Debian's ``/usr/bin/prometheus``) scraping our exporter.

Used by ``python -m bench.dashboard_shot`` and ``tests/test_dashboard_queries.py`` to
evaluate the Grafana dashboard's queries against what the exporter really serves. The
server gets a free port, a config of its own and a storage directory under ``workdir``;
:meth:`Prometheus.stop` ends it (it runs in its own process group).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from orchestrator.ops.processes import Proc, wait_for
from orchestrator.ops.redis_server import free_port

PROMETHEUS = "/usr/bin/prometheus"
READY_LINE = "Server is ready to receive web requests."


class QueryError(Exception):
    """Prometheus refused or failed a query (its own error text)."""


class Prometheus:
    """One Prometheus scraping ``targets`` (``host:port`` of exporters) every
    ``scrape_seconds``."""

    def __init__(self, targets: list[str], workdir: Path, scrape_seconds: float = 1.0) -> None:
        self.targets = targets
        self.workdir = workdir
        self.scrape_seconds = scrape_seconds
        self.port = 0
        self.proc: Proc | None = None
        self.http = httpx.Client(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        interval = f"{int(self.scrape_seconds * 1000)}ms"
        config = self.workdir / "prometheus.yml"
        scrape = {"scrape_interval": interval, "scrape_timeout": interval}
        job = {"job_name": "orchestrator", "static_configs": [{"targets": self.targets}]}
        # JSON is YAML: no YAML writer needed.
        config.write_text(json.dumps({"global": scrape, "scrape_configs": [job]}))
        self.port = free_port()
        args = [
            PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={self.workdir / 'data'}", "--storage.tsdb.retention.time=1d",
            "--log.level=info",
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        self.proc = Proc(args, env, self.workdir / "prometheus.log", READY_LINE)
        self.proc.start(timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
        self.http.close()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _api(self, path: str, params: dict[str, Any]) -> Any:
        response = self.http.get(self.url + path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def scraped(self, count: int = 2) -> bool:
        """Whether every target is up and was scraped at least ``count`` times."""
        data = self._api("/api/v1/query", {"query": 'count_over_time(up{job="orchestrator"}[1h])'})
        ups = self._api("/api/v1/query", {"query": 'up{job="orchestrator"}'})["result"]
        seen = [int(float(r["value"][1])) for r in data["result"]]
        return (
            len(seen) == len(self.targets) and min(seen) >= count
            and all(r["value"][1] == "1" for r in ups)
        )  # fmt: skip

    def wait_scraped(self, count: int = 2, timeout: float = 30.0) -> None:
        wait_for(lambda: self.scraped(count), timeout, f"{count} scrapes of {self.targets}", 0.2)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """The matrix of ``expr`` over [start, end] every ``step`` seconds: a list of
        ``{"metric": labels, "values": [[t, "v"], ...]}``. QueryError on a bad query."""
        params = {"query": expr, "start": start, "end": end, "step": step}
        data = self._api("/api/v1/query_range", params)
        if data.get("resultType") != "matrix":
            raise QueryError(f"expected a matrix, got {data.get('resultType')}")
        return list(data["result"])
