"""The emulator's ledger: the ground truth a client's own bookkeeping is checked against.

Served as JSON by ``GET /_emulator/ledger``.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from orchestrator.emulator.simulation import TurnCharges


@dataclass
class Ledger:
    """Ground truth of what the emulator did; money in integer micro-dollars.

    Turns count when they start; money, tokens and ``turns_completed`` when they
    complete. ``events_emitted`` counts live updates produced, not stream replays.
    """

    workers_created: int = 0
    turns_started: int = 0
    turns_completed: int = 0
    events_emitted: int = 0
    schedules_created: int = 0
    schedules_cancelled: int = 0
    internal_cost_micro: int = 0
    model_cost_micro: int = 0
    sandbox_cost_micro: int = 0
    tool_cost_micro: int = 0
    usage_cost_micro: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    total_tokens: int = 0
    steps: int = 0
    credits: int = 0
    duration_ms: int = 0
    concurrent_turns: int = 0
    max_concurrent_turns: int = 0
    # The newest worker: how a test finds the worker of a ``stream: true`` create.
    last_worker_id: str | None = None
    # Turns running at once per budget tier: lets a test check a per-key limit.
    concurrent_by_budget: dict[str, int] = field(default_factory=dict)
    max_concurrent_by_budget: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    # The most /api requests that arrived within any one-second (five-second) window.
    # Over five seconds the jitter between a request leaving its client and arriving
    # here (a few ms, more on a loaded machine) no longer shows: that is the rate.
    max_requests_per_second: int = 0
    max_requests_per_5s: int = 0
    requests_by_route: dict[str, dict[str, int]] = field(default_factory=dict)
    _recent: deque[float] = field(default_factory=deque, repr=False)

    def turn_started(self, budget: str) -> None:
        self.turns_started += 1
        self.concurrent_turns += 1
        self.max_concurrent_turns = max(self.max_concurrent_turns, self.concurrent_turns)
        now = self.concurrent_by_budget.get(budget, 0) + 1
        self.concurrent_by_budget[budget] = now
        self.max_concurrent_by_budget[budget] = max(
            self.max_concurrent_by_budget.get(budget, 0), now
        )

    def turn_ended(self, budget: str) -> None:
        self.concurrent_turns -= 1
        self.concurrent_by_budget[budget] = self.concurrent_by_budget.get(budget, 1) - 1

    def count_arrival(self) -> None:
        """Record the arrival time of one ``/api`` request (before any fault)."""
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - 5.0:
            self._recent.popleft()
        last_second = len(self._recent) - bisect.bisect_right(self._recent, now - 1.0)
        self.max_requests_per_second = max(self.max_requests_per_second, last_second)
        self.max_requests_per_5s = max(self.max_requests_per_5s, len(self._recent))

    def count_request(self, route: str, status: int) -> None:
        """Record one ``/api`` request answered with ``status``."""
        self.requests += 1
        by_status = self.requests_by_route.setdefault(route, {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1

    def add_turn(self, c: TurnCharges) -> None:
        """Count a completed turn and what it billed."""
        self.turns_completed += 1
        self.internal_cost_micro += c.internal_micro
        self.model_cost_micro += c.model_micro
        self.sandbox_cost_micro += c.sandbox_micro
        self.tool_cost_micro += c.tool_micro
        self.usage_cost_micro += c.cost_micro
        self.input_tokens += c.input_tokens
        self.output_tokens += c.output_tokens
        self.reasoning_tokens += c.reasoning_tokens
        self.cache_read_tokens += c.cache_read_tokens
        self.cache_write_tokens += c.cache_write_tokens
        self.total_tokens += c.total_tokens
        self.steps += c.steps
        self.credits += c.credits
        self.duration_ms += c.duration_ms

    def to_json(self) -> dict[str, Any]:
        """The ledger as a JSON object (``requests_by_route``: route → status → count)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        data["requests_by_route"] = {k: dict(v) for k, v in self.requests_by_route.items()}
        return data
