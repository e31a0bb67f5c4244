"""The local stack: every part of the system on one machine, in the foreground.

``orchestrator up`` (and ``demo``) use this. Redis comes from ``REDIS_URL`` or is an
embedded real server; the hosted API comes from ``WORKERS_API_URL``/``WORKERS_API_KEY``
or, when those are unset, the local emulator stands in (and says so). A Celery worker
serving every queue, beat, Flower, the gateway and the Prometheus exporter run as child
processes in their own process groups (the worker, beat and the gateway each serve their
own instruments on a port of their own: :attr:`Stack.scrape_targets`), and
:meth:`Stack.stop` ends every one of them, so no orphan is left. Each line the stack
says is ``<part> <message>``, or with ``json_lines`` one JSON object
``{"part", "message"}`` per line.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, get_args

import httpx
from pydantic import SecretStr

from orchestrator.errors import InputError, OrchestratorError
from orchestrator.ops.processes import GATEWAY_READY, WORKER_READY, Proc, wait_for
from orchestrator.ops.redis_server import RedisServer, free_port, port_taken
from orchestrator.settings import Settings

FLOWER_PORT = 5555  # Flower's usual port, taken when free
# A port picked free may be bound by another process before the part binds it.
BIND_FAILED = "address already in use"  # uvicorn's, Tornado's and the metrics server's
PORT_ATTEMPTS = 3


def _plain_settings() -> list[str]:
    """The variable names of the settings that are not secrets."""
    return [
        name.upper() for name, spec in Settings.model_fields.items()
        if SecretStr not in (spec.annotation, *get_args(spec.annotation))
    ]  # fmt: skip


class _PortTaken(Exception):
    pass


@dataclass
class Component:
    """One part of the stack: its child process (log ``<workdir>/<name>.log``), and the
    URL that must answer 2xx (with ``headers``) for it to count as up: at start, and in
    every health report unless ``watch`` is off."""

    name: str
    proc: Proc
    url: str = ""
    ready: bool = False
    probe: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    watch: bool = True
    # Launches it once more on a newly picked port (None: its port was asked for).
    again: Callable[[], None] | None = None

    def answers(self) -> bool:
        if not self.probe:
            return True
        try:
            httpx.get(self.probe, headers=self.headers, timeout=2).raise_for_status()
        except httpx.HTTPError:
            return False
        return True


@dataclass
class Stack:
    """Starts and stops the parts; ``env`` is what every child process sees."""

    settings: Settings
    workdir: Path
    with_beat: bool = True
    with_flower: bool = True
    flower_port: int | None = None  # None: 5555, or a free port when that is taken
    with_gateway: bool = True
    gateway_port: int = 0  # 0: a free port
    with_metrics: bool = True
    json_lines: bool = False
    fresh_data: bool = False  # a data set of its own for this run (the demo's)
    shell_file: bool = True  # write stack.env for the CLI in another shell
    out: TextIO = sys.stdout
    env: dict[str, str] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    redis: RedisServer | None = None
    emulator_key: str | None = None
    wrote_shell_env: bool = False
    # What Prometheus scrapes, by part: ``host:port`` of each /metrics.
    scrape_targets: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 90.0) -> None:
        """Start every part and wait (bounded) until each says it is ready and answers
        what :meth:`health` asks it."""
        self._check_ports()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items()}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("FILES_DIR", str(self.workdir / "files"))
        # The dev stack archives finished jobs before they expire (docs/retention.md).
        self.env.setdefault("ARCHIVE_DIR", str(self.workdir / "archive"))
        redis_url = self.settings.redis_url
        if redis_url is None:
            self.redis = RedisServer(data_dir=self._redis_dir()).start()
            redis_url = self.redis.url
            self._say(f"redis     embedded redis-server at {redis_url} (AOF on, noeviction)")
        else:
            self._say(f"redis     {_redact(redis_url)} (from REDIS_URL)")
            if self.fresh_data:
                # Someone's Redis: never emptied, a key namespace of this run's instead.
                prefix = f"{self.settings.key_prefix}-demo-{secrets.token_hex(4)}"
                self.env["KEY_PREFIX"] = prefix
                self._say(f"redis     this run's keys start with {prefix}:")
        self.env["REDIS_URL"] = redis_url
        if self.settings.broker_url:
            self._say(f"broker    {_redact(self.settings.broker_url)} (from BROKER_URL)")
        if self.settings.uses_emulator:
            self._start_emulator()
        else:
            self._say(f"api       {self.settings.workers_api_url} (hosted API, key from env)")
        py = sys.executable
        self._start_own_metrics("worker", [py, "-m", "orchestrator", "worker"], WORKER_READY)
        if self.with_beat:
            self._start_own_metrics("beat", [py, "-m", "orchestrator", "beat"], "beat: Starting")
        if self.with_gateway:
            self._start_gateway()
        if self.with_metrics:
            self._start_metrics()
        deadline = time.monotonic() + timeout
        if self.with_flower and _has_flower():
            # Flower asks the workers about themselves as it starts, and warns of each
            # question none answered: it starts once the worker is there to answer.
            worker = next(i for i, c in enumerate(self.components) if c.name == "worker")
            for index in range(worker + 1):
                self._wait_ready(index, deadline)
            self._start_flower()
        for index in range(len(self.components)):
            if not self.components[index].ready:
                self._wait_ready(index, deadline)
        targets = "  ".join(f"{name} {where}" for name, where in self.scrape_targets.items())
        self._say(f"scrape    {targets}  (each serves /metrics)")
        if self.shell_file:
            self._write_shell_env()

    def _check_ports(self) -> None:
        """A port the user asked for must be free before anything starts."""
        asked = {"flower_port": self.flower_port if self.with_flower else None,
                 "gateway_port": self.gateway_port if self.with_gateway else None}  # fmt: skip
        for name, port in asked.items():
            if port and port_taken(port):
                raise InputError(name, f"127.0.0.1:{port} is in use (give another port)")

    def _redis_dir(self) -> Path:
        """The embedded server's data, whichever binary runs it (one that cannot read
        it refuses to start; see :class:`RedisServer`). A fresh run gets a directory
        of its own, emptied first, and leaves ``up``'s data alone."""
        if not self.fresh_data:
            return self.workdir / "redis"
        path = self.workdir / "redis-demo"
        shutil.rmtree(path, ignore_errors=True)
        return path

    @property
    def shell_env(self) -> Path:
        return self.workdir / "stack.env"

    def _write_shell_env(self) -> None:
        """What another shell needs to point the CLI at this stack and have it answer as
        the stack would, in a file only the user can read (it holds the emulator's key; a
        hosted key and passwords stay in the user's own environment and are not written)."""
        self.env["SCRAPE_TARGETS"] = ",".join(self.scrape_targets.values())
        names = ["REDIS_URL", "KEY_PREFIX", "GATEWAY_URL", "ARCHIVE_DIR", "FILES_DIR"]
        names += ["SCRAPE_TARGETS"]
        if self.emulator_key:
            names += ["WORKERS_API_URL", "WORKERS_API_KEY"]
        # And every other setting the parts were given, so the CLI there decides as they
        # do (WEBHOOK_ALLOW_PRIVATE, BROKER_URL, MAX_INPUT_CHARS, ...).
        names += [name for name in _plain_settings() if name in os.environ and name not in names]
        lines = [f"{name}={shlex.quote(self.env[name])}\n" for name in names if name in self.env]
        fd = os.open(self.shell_env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(lines)
        self.wrote_shell_env = True
        self._say(f"shell     set -a; . {self.shell_env}; set +a   # the CLI, in another shell")

    def _start_emulator(self) -> None:
        self.emulator_key = "emu-" + secrets.token_urlsafe(16)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.env.update(
            WORKERS_API_URL=url, WORKERS_API_KEY=self.emulator_key,
            EMULATOR_API_KEY=self.emulator_key,
        )  # fmt: skip
        args = [sys.executable, "-m", "orchestrator", "emulator", "--port", str(port)]
        args += ["--turn-seconds", os.environ.get("EMULATOR_TURN_SECONDS", "2")]
        self._say(
            f"api       no WORKERS_API_URL/WORKERS_API_KEY configured: the local emulator "
            f"stands in for the hosted API at {url}"
        )
        self._spawn(
            "emulator", args, "Uvicorn running", url=url, probe=f"{url}/_emulator/config",
            headers={"Authorization": f"Bearer {self.emulator_key}"}, again=self._start_emulator,
        )  # fmt: skip

    def _start_flower(self) -> None:
        user = os.environ.get("FLOWER_USER") or "admin"
        password = os.environ.get("FLOWER_PASSWORD") or secrets.token_urlsafe(12)
        self.env.update(FLOWER_USER=user, FLOWER_PASSWORD=password)
        port = self.flower_port
        if port is None:
            port = FLOWER_PORT if not port_taken(FLOWER_PORT) else free_port()
        args = [sys.executable, "-m", "orchestrator", "flower", "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        again = self._start_flower if self.flower_port is None else None
        self._spawn("flower", args, "Visit me at", url=url, probe=f"{url}/healthcheck", again=again)
        shown = password if "FLOWER_PASSWORD" not in os.environ else "(from FLOWER_PASSWORD)"
        self._say(f"flower    {url}  user {user}  password {shown}")

    def _start_gateway(self) -> None:
        """The HTTP API. Its link-signing key comes from the environment, or is made for
        this run (links then die with the stack, which is what a dev stack wants)."""
        if not self.env.get("GATEWAY_SIGNING_KEY"):
            self.env["GATEWAY_SIGNING_KEY"] = secrets.token_urlsafe(32)
        port = self.gateway_port or free_port()
        url = f"http://127.0.0.1:{port}"
        self.env["GATEWAY_URL"] = url
        args = [sys.executable, "-m", "orchestrator", "serve", "--port", str(port)]
        args += self._metrics_port("gateway")
        again = self._start_gateway if not self.gateway_port else None
        self._spawn("gateway", args, GATEWAY_READY, url=url, probe=f"{url}/healthz", again=again)
        self._say(
            f"gateway   {url}/v1  (console {url}/, docs {url}/docs; a token: "
            "orchestrator tokens create)"
        )

    def _start_own_metrics(self, name: str, args: list[str], ready_line: str) -> None:
        """A part whose only port is its own metrics', its health probe too."""
        extra = self._metrics_port(name)
        url = f"http://{self.scrape_targets[name]}/metrics"
        again = functools.partial(self._start_own_metrics, name, args, ready_line)
        self._spawn(name, args + extra, ready_line, probe=url, again=again)

    def _metrics_port(self, name: str) -> list[str]:
        """The options giving a part its own metrics port (a free one), noted for scraping."""
        port = free_port()
        self.scrape_targets[name] = f"127.0.0.1:{port}"
        return ["--metrics-port", str(port)]

    def _start_metrics(self) -> None:
        port = free_port()
        args = [sys.executable, "-m", "orchestrator", "metrics", "--port", str(port)]
        url = f"http://127.0.0.1:{port}/metrics"
        self.scrape_targets["metrics"] = f"127.0.0.1:{port}"
        # A scrape reads the whole store: asked once at start, not every health report.
        self._spawn(
            "metrics", args, "metrics on http", url=url, probe=url, again=self._start_metrics
        )
        self.components[-1].watch = False

    def _spawn(
        self, name: str, args: list[str], ready_line: str, url: str = "", probe: str = "",
        headers: dict[str, str] | None = None, again: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """Launch a part; every part but Flower starts before any is waited for (see
        :meth:`start`)."""
        proc = Proc(args, self.env, self.workdir / f"{name}.log", ready_line).launch()
        self.components.append(
            Component(name, proc, url, probe=probe, headers=headers or {}, again=again)
        )

    def _wait_ready(self, index: int, deadline: float) -> None:
        for attempt in range(PORT_ATTEMPTS):
            comp = self.components[index]
            left = deadline - time.monotonic()
            try:
                what = f"{comp.name} to be ready (log: {comp.proc.log})"
                wait_for(functools.partial(self._up, comp), left, what, 0.1)
                break
            except _PortTaken:
                if comp.again is None or attempt == PORT_ATTEMPTS - 1:
                    raise OrchestratorError(self._exited(comp)) from None
                self._launch_again(index)
        comp.ready = True
        self._say(f"{comp.name:<9} ready{'  ' + comp.url if comp.url else ''}")

    def _up(self, comp: Component) -> bool:
        try:
            return comp.proc.is_ready() and comp.answers()
        except RuntimeError:
            if BIND_FAILED in comp.proc.launch_text().lower():
                raise _PortTaken from None
            raise OrchestratorError(self._exited(comp)) from None

    @staticmethod
    def _exited(comp: Component) -> str:
        """Why a part exited at start: its log's last line (the whole log is kept)."""
        lines = comp.proc.launch_text().strip().splitlines() or ["(it printed nothing)"]
        return f"{comp.name}: exited at start: {lines[-1].strip()} (log: {comp.proc.log})"

    def _launch_again(self, index: int) -> None:
        """Launch the part at ``index`` again on another port, in the same place."""
        lost = self.components.pop(index)
        self._say(f"{lost.name:<9} its port was taken before it bound it: picking another")
        assert lost.again is not None
        lost.again()
        self.components.insert(index, self.components.pop())
        if lost.name == "emulator":
            # Every part launched after it was given the emulator's old URL; each Proc
            # holds self.env, which now names the new one.
            for later in self.components[index + 1 :]:
                later.proc.stop()
                later.proc.launch()

    def health(self) -> dict[str, str]:
        """One word per part: ok, or what is wrong."""
        report: dict[str, str] = {}
        if self.redis is not None:
            alive = self.redis.process is not None and self.redis.process.poll() is None
            report["redis"] = "ok" if alive else "down"
        for comp in self.components:
            if not comp.proc.alive():
                report[comp.name] = f"exited ({comp.proc.log})"
            else:
                answers = not comp.watch or comp.answers()
                report[comp.name] = "ok" if answers else "not answering"
        return report

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after a grace period) and Redis."""
        started = bool(self.components) or self.redis is not None
        # Every part is asked at once, then given one shared grace period.
        for comp in reversed(self.components):
            comp.proc.terminate()
        deadline = time.monotonic() + 15
        for comp in self.components:
            comp.proc.wait_stopped(timeout=max(deadline - time.monotonic(), 0.1))
        if self.redis is not None:
            self.redis.stop()
        # Only our own file: a demo, or an up refused at start, in the workdir of an up
        # that runs must leave that up's stack.env where its user's shells read it.
        if self.wrote_shell_env:
            self.shell_env.unlink(missing_ok=True)
        if started:
            self._say("stopped   every process this stack started")

    def _say(self, line: str) -> None:
        if self.json_lines:
            part, _, message = line.partition(" ")
            line = json.dumps({"part": part, "message": message.strip()})
        print(line, file=self.out, flush=True)


def _has_flower() -> bool:
    try:
        import flower  # noqa: F401
    except ImportError:
        return False
    return True


def _redact(url: str) -> str:
    """A Redis or AMQP URL without its password, for printing."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
