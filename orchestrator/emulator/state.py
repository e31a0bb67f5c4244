"""The emulator's memory: workers, their turns and update logs, schedules and
idempotency records, plus the ledger (:mod:`.ledger`) it keeps of them.

Everything lives on the server's event loop and is touched only from it, so no locks
are needed; a turn is one asyncio task that paces its events. Each worker has an
:class:`asyncio.Event` that is set (and replaced) whenever its update log grows or its
turn ends, so stream readers sleep until there is something to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from croniter import croniter

from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.faults import FaultInjector
from orchestrator.emulator.ledger import Ledger
from orchestrator.emulator.simulation import TurnPlan, WorkerFile, plan_turn
from orchestrator.money import from_micro
from orchestrator.wire.models import (
    WORKER_SCHEDULE_ADAPTER,
    CreateSchedule,
    CronWhen,
    DelayedWhen,
    File,
    IntervalWhen,
    Output,
    Source,
    Worker,
    WorkerSchedule,
)


@dataclass
class ScheduleRecord:
    """A stored schedule and whether it was cancelled."""

    schedule: WorkerSchedule
    cancelled: bool = False


@dataclass
class WorkerRecord:
    """One worker: its cumulative figures, files and the log of every update."""

    id: str
    created_at: int
    base_url: str
    turns: int = 0
    active: bool = False
    # Index just past the active turn's last event: a stream's natural length.
    planned_end: int = 0
    # Each update pre-encoded as one SSE event, shared by every stream that sends it.
    updates: list[bytes] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    turn_budget: str = "standard"
    costs_micro: list[int] | None = None  # internal, model, sandbox, tool
    usage: dict[str, int] | None = None
    output: list[Output] = field(default_factory=list)
    output_text: str = ""
    sources: list[Source] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, WorkerFile] = field(default_factory=dict)
    schedules: dict[str, ScheduleRecord] = field(default_factory=dict)

    def notify(self) -> None:
        """Wake every stream waiting on this worker (they re-check the log)."""
        old, self.changed = self.changed, asyncio.Event()
        old.set()

    def apply_turn(self, plan: TurnPlan) -> None:
        """Fold a completed turn into the cumulative snapshot."""
        c = plan.charges
        turn_costs = [c.internal_micro, c.model_micro, c.sandbox_micro, c.tool_micro]
        previous = self.costs_micro or [0, 0, 0, 0]
        self.costs_micro = [a + b for a, b in zip(previous, turn_costs, strict=True)]
        usage_delta = {
            "cache_read_tokens": c.cache_read_tokens,
            "cache_write_tokens": c.cache_write_tokens,
            "cost_micro": c.cost_micro,
            "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens,
            "reasoning_tokens": c.reasoning_tokens,
            "steps": c.steps,
            "total_tokens": c.total_tokens,
            "credits": c.credits,
            "duration_ms": c.duration_ms,
        }
        before = self.usage or {}
        self.usage = {k: before.get(k, 0) + v for k, v in usage_delta.items()}
        self.output.append(plan.output)
        self.output_text = plan.text
        self.sources.append(plan.source)
        self.messages.append(plan.messages[1])
        for f in plan.files:
            self.files[f.path] = f

    def file_url(self, path: str) -> str:
        """Absolute URL of one of this worker's files."""
        return f"{self.base_url}/api/workers/{self.id}/files/{quote(path)}"

    def to_wire(self) -> dict[str, Any]:
        """The Worker JSON, every field present."""
        costs: dict[str, Any] | None = None
        if self.costs_micro is not None:
            internal, model, sandbox, tool = (from_micro(m) for m in self.costs_micro)
            costs = {
                "internal_cost_usd": internal,
                "model_cost_usd": model,
                "sandbox_cost_usd": sandbox,
                "tool_cost_usd": tool,
            }
        usage: dict[str, Any] | None = None
        if self.usage is not None:
            usage = {k: v for k, v in self.usage.items() if k != "cost_micro"}
            usage["cost_usd"] = from_micro(self.usage["cost_micro"])
        worker = Worker.model_validate(
            {
                "id": self.id,
                "created_at": self.created_at,
                "files": [
                    File(filename=f.path, media_type=f.media_type, url=self.file_url(f.path))
                    for f in self.files.values()
                ],
                "messages": self.messages,
                "output": self.output,
                "output_text": self.output_text,
                "running": self.active,
                "sources": self.sources,
                "status": "running" if self.active else "completed",
                "costs": costs,
                "usage": usage,
            }
        )
        return worker.to_wire()


@dataclass(frozen=True)
class IdempotentResult:
    """The first answer to a POST with an ``Idempotency-Key``."""

    status: int
    body: bytes
    stream_worker: str | None = None


class TurnConflict(Exception):
    """A turn is already running on the worker."""


class EmulatorState:
    """All mutable state of one emulator app, plus its configuration."""

    def __init__(self, api_key: str, config: EmulatorConfig) -> None:
        self.api_key = api_key
        self.config = config
        self.faults = FaultInjector(config.faults)
        self.rng = random.Random(config.seed)
        self.workers: dict[str, WorkerRecord] = {}
        self.idempotency: dict[tuple[str, str], IdempotentResult] = {}
        self.ledger = Ledger()
        # The serving event loop, set at start-up, so other threads can schedule work.
        self.loop: asyncio.AbstractEventLoop | None = None

    def configure(self, config: EmulatorConfig) -> None:
        """Apply new turn settings; a new seed restarts the simulation's randomness."""
        if config.seed != self.config.seed:
            self.rng = random.Random(config.seed)
        self.config = config

    # --- workers and turns -------------------------------------------------------

    def create_worker(self, user_input: str, budget: str, base_url: str) -> WorkerRecord:
        """Make a worker and start its first turn."""
        worker = WorkerRecord(
            id=f"wrk_{secrets.token_hex(12)}",
            created_at=int(time.time()),
            base_url=base_url.rstrip("/"),
        )
        self.workers[worker.id] = worker
        self.ledger.workers_created += 1
        self.ledger.last_worker_id = worker.id
        self.start_turn(worker, user_input, budget)
        return worker

    def start_turn(self, worker: WorkerRecord, user_input: str, budget: str) -> None:
        """Start the worker's next turn; :class:`TurnConflict` if one is running."""
        if worker.active:
            raise TurnConflict(worker.id)
        worker.turns += 1
        plan = plan_turn(
            self.rng,
            worker_id=worker.id,
            turn=worker.turns,
            user_input=user_input,
            budget=budget,
            events_per_turn=self.config.events_per_turn,
            turn_seconds=self.config.turn_seconds,
        )
        worker.active = True
        worker.planned_end = len(worker.updates) + len(plan.events)
        worker.messages.append(plan.messages[0])
        ledger = self.ledger
        worker.turn_budget = budget
        ledger.turn_started(budget)
        worker.task = asyncio.get_running_loop().create_task(
            self._run_turn(worker, plan, self.config.turn_seconds, ledger),
            name=f"turn {worker.id}#{plan.turn}",
        )

    async def _run_turn(
        self, worker: WorkerRecord, plan: TurnPlan, seconds: float, ledger: Ledger
    ) -> None:
        # The ledger is passed in, not read from self: after a reset, a cancelled turn
        # must not touch the fresh ledger.
        loop = asyncio.get_running_loop()
        started = loop.time()
        step = seconds / (len(plan.events) - 1)
        try:
            for i, event in enumerate(plan.events[:-1]):
                if i and step > 0:
                    await asyncio.sleep(max(0.0, started + i * step - loop.time()))
                _emit(worker, event, ledger)
                worker.notify()
            if seconds > 0:
                await asyncio.sleep(max(0.0, started + seconds - loop.time()))
        except asyncio.CancelledError:
            # Cancelled from outside stop_turns (e.g. the loop shutting down): end the
            # turn unfinished so its streams close.
            if worker.task is asyncio.current_task():
                _end_turn(worker, ledger)
            raise
        # The finish event and the completed snapshot appear together (no await in
        # between), so a client that sees the stream end then reads a finished worker.
        _emit(worker, plan.events[-1], ledger)
        worker.apply_turn(plan)
        ledger.add_turn(plan.charges)
        _end_turn(worker, ledger)

    # --- schedules ---------------------------------------------------------------

    def create_schedule(self, worker: WorkerRecord, body: CreateSchedule) -> WorkerSchedule:
        """Store a schedule with its next run time (UTC) and return it."""
        now = datetime.now(UTC)
        when = body.when
        extra: dict[str, Any] = {}
        if isinstance(when, DelayedWhen):
            next_run = now + timedelta(seconds=when.delay_in_seconds)
            extra["delay_in_seconds"] = when.delay_in_seconds
        elif isinstance(when, CronWhen):
            next_run = croniter(when.cron, now).get_next(datetime)
            extra["cron"] = when.cron
        elif isinstance(when, IntervalWhen):
            next_run = now + timedelta(seconds=when.interval_seconds)
            extra["interval_seconds"] = when.interval_seconds
        else:
            next_run = when.date
        schedule = WORKER_SCHEDULE_ADAPTER.validate_python(
            {
                "type": when.type,
                "id": f"sch_{secrets.token_hex(12)}",
                "budget": body.budget or "standard",
                "input": body.input,
                "next_run_at": next_run,
                **extra,
            }
        )
        worker.schedules[schedule.id] = ScheduleRecord(schedule)
        self.ledger.schedules_created += 1
        return schedule

    def cancel_schedule(self, worker: WorkerRecord, schedule_id: str) -> bool | None:
        """True if cancelled now, False if it already was, None if unknown."""
        record = worker.schedules.get(schedule_id)
        if record is None:
            return None
        if record.cancelled:
            return False
        record.cancelled = True
        self.ledger.schedules_cancelled += 1
        return True

    # --- lifecycle ---------------------------------------------------------------

    def stop_turns(self) -> None:
        """End every running turn unfinished now; their streams then close."""
        for worker in self.workers.values():
            if worker.task is not None:
                worker.task.cancel()
                # Ended here rather than in the task: a task cancelled before its first
                # step never runs its handler.
                _end_turn(worker, self.ledger)

    def reset(self) -> None:
        """Forget every worker, schedule, idempotency record and the ledger.

        Configuration and fault settings stay; the random sequences restart.
        """
        self.stop_turns()
        self.workers.clear()
        self.idempotency.clear()
        self.ledger = Ledger()
        self.rng = random.Random(self.config.seed)
        self.faults.reseed()

    async def aclose(self) -> None:
        """Stop every turn and wait for the tasks to end (server shutdown)."""
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        self.stop_turns()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _emit(worker: WorkerRecord, event: dict[str, Any], ledger: Ledger) -> None:
    index = len(worker.updates)
    # "at" (epoch ms) lets a client measure its relay lag; clients treat it as opaque.
    stamped = {**event, "at": round(time.time() * 1000, 1)}
    data = json.dumps(stamped, separators=(",", ":"), ensure_ascii=False)
    worker.updates.append(f"id: {index}\ndata: {data}\n\n".encode())
    ledger.events_emitted += 1


def _end_turn(worker: WorkerRecord, ledger: Ledger) -> None:
    worker.active = False
    worker.planned_end = len(worker.updates)
    worker.task = None
    ledger.turn_ended(worker.turn_budget)
    worker.notify()
