"""What every scenario shares: the run context, child processes (emulator, Celery
workers, beat) with bounded waits, figures over repetitions, and the machine's profile.

Every child is started in its own session and stopped by its process group, so a
scenario that fails half-way still leaves nothing running (see :class:`Context`).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from kombu.entity import Queue

from orchestrator.celery import celery_config
from orchestrator.ops.processes import Proc, celery_worker, deployment_env, wait_for
from orchestrator.ops.redis_server import free_port
from orchestrator.settings import Settings

API_KEY = "bench-key"
ROOT = Path(__file__).resolve().parent.parent


def baseline_config(settings: Settings, task: str, queue: str) -> dict[str, Any]:
    """Our Celery configuration (same broker, acks, prefetch, serialisation) for a
    baseline's worker: ``task`` routed to ``queue`` of its own, none of our task modules."""
    config = celery_config(settings)
    config.update(
        include=[],
        task_routes={task: queue},
        task_queues=[Queue(queue)],  # type: ignore[no-untyped-call]
        task_default_queue=queue,
        worker_direct=False,
    )
    return config


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
        """Start ``args`` (its log under this run's logs) and wait until it logs ``ready``."""
        return self._started(Proc(args, env, self.logs / f"{name}.log", ready, cwd=ROOT))

    def _started(self, proc: Proc) -> Proc:
        self.procs.append(proc)  # before it starts: stop_all() ends it even if start fails
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
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        own = {"EMULATOR_API_KEY": API_KEY, "PYTHONPATH": pythonpath}
        return deployment_env(self.redis_url, prefix, api_url, API_KEY, **{**own, **extra})

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
        log = self.logs / f"{name}.log"
        return self._started(
            celery_worker(env, log, queues=queues, name=name, concurrency=concurrency,
                          pool=pool, cwd=ROOT)
        )  # fmt: skip


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
