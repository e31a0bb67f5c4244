"""What every scenario shares: the run context, child processes (emulator, Celery
workers, beat) with bounded waits, figures over repetitions, and the machine's profile.

Every child is started in its own session and stopped by its process group, so a
scenario that fails half-way still leaves nothing running (see :class:`Procs`).
"""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from orchestrator.ops.redis_server import free_port

API_KEY = "bench-key"
ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


# --- figures ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(runs: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of one figure over repetitions (each run kept)."""
    return {
        "median": statistics.median(runs),
        "min": min(runs),
        "max": max(runs),
        "runs": [round(r, 4) for r in runs],
    }


@dataclass
class Metric:
    """One figure of a scenario: ours per repetition, the baseline's, and the goal."""

    name: str
    unit: str
    ours: list[float]
    baseline: list[float] | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        base = statistics.median(self.baseline)
        return statistics.median(self.ours) / base if base else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "ours": summary(self.ours),
            "baseline": summary(self.baseline) if self.baseline else None,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


@dataclass
class Result:
    """What a scenario reports: its figures, parameters, baseline and notes."""

    scenario: str
    title: str
    baseline: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *args: Any, **kwargs: Any) -> Metric:
        metric = Metric(*args, **kwargs)
        self.metrics.append(metric)
        return metric

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "title": self.title,
            "baseline": self.baseline,
            "params": self.params,
            "metrics": [m.as_dict() for m in self.metrics],
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }


# --- the run context and child processes -----------------------------------------------


class Proc:
    """A child process in its own session, output to ``log``; ready on a log line."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: str = "") -> None:
        self.args, self.env, self.log, self.ready = args, env, log, ready
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Proc:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        if self.ready:
            wait_for(self._is_ready, timeout, f"{self.args[1:5]} ready (see {self.log})")
        return self

    def _is_ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.args[1:5]} exited early:\n{tail}")
        return self.ready in self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


@dataclass
class Context:
    """One benchmark run: the Redis server, sizes (quick or full), where logs go."""

    redis_url: str
    quick: bool
    out: Path
    logs: Path
    reps: int = 3
    procs: list[Proc] = field(default_factory=list)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def flush(self) -> None:
        with self.redis() as r:
            r.flushall()

    def size(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full

    def spawn(self, name: str, args: list[str], env: dict[str, str], ready: str = "") -> Proc:
        proc = Proc(args, env, self.logs / f"{name}.log", ready)
        self.procs.append(proc)
        return proc.start()

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def env(self, api_url: str, prefix: str = "bench", **extra: str) -> dict[str, str]:
        """The environment of an orchestrator process pointed at this run."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKERS_"))}
        env.update(
            REDIS_URL=self.redis_url,
            KEY_PREFIX=prefix,
            WORKERS_API_URL=api_url,
            WORKERS_API_KEY=API_KEY,
            EMULATOR_API_KEY=API_KEY,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        )
        env.update(extra)
        return env

    def emulator(self, name: str, turn_seconds: float = 0.0, events: int = 10) -> tuple[Proc, str]:
        """``bench.emulator`` in a subprocess; returns it and its base URL."""
        port = free_port()
        args = [
            sys.executable, "-m", "bench.emulator", "--port", str(port),
            "--turn-seconds", str(turn_seconds), "--events-per-turn", str(events),
        ]  # fmt: skip
        proc = self.spawn(name, args, self.env(""))
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/_bench/arrivals", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "the emulator")
        return proc, url

    def worker(
        self, name: str, env: dict[str, str], queues: str, concurrency: int = 8,
        pool: str = "threads",
    ) -> Proc:  # fmt: skip
        """``orchestrator worker`` consuming ``queues``."""
        args = [
            sys.executable, "-m", "orchestrator", "worker", "--queues", queues,
            "--pool", pool, "--concurrency", str(concurrency),
            "--hostname", f"{name}@%h", "--loglevel", "INFO",
        ]  # fmt: skip
        return self.spawn(name, args, env, ready="ready.")


def arrivals(api_url: str) -> dict[str, float]:
    """Arrival times the bench emulator recorded since last asked (and forget them)."""
    return dict(httpx.get(f"{api_url}/_bench/arrivals", timeout=30).json())


# --- the machine ----------------------------------------------------------------------


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine(redis_url: str) -> dict[str, Any]:
    from importlib.metadata import version

    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    with redis.Redis.from_url(redis_url) as r:
        redis_version = r.info("server")["redis_version"]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_server": redis_version,
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis_py": version("redis"),
        "httpx": version("httpx"),
        "uvicorn": version("uvicorn"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
