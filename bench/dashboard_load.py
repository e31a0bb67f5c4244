"""A short, realistic load that gives every panel of the Grafana dashboard data.

Jobs of three tenants and three tiers in rounds, follow-up turns on finished workers, a
tenant whose small daily cap refuses its later jobs (they fail), a tenant held to one
running job by a concurrency limit (its others wait), a cancel, a global cap with its
warn line, and a schedule triggered each round. Used by ``python -m bench.dashboard_shot``
and by ``tests/test_dashboard_queries.py``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import Job
from orchestrator.wire.models import Budget

#: (input, tier, tags) submitted each round.
ROUND: list[tuple[str, Budget, dict[str, str]]] = [
    ("Summarise this week's support tickets", "standard", {"tenant": "acme", "team": "support"}),
    ("Draft release notes for 2.4", "high", {"tenant": "acme", "team": "eng"}),
    ("Find three suppliers for recycled packaging", "low", {"tenant": "globex"}),
    ("Compare our pricing page with the competition", "standard", {"tenant": "globex"}),
    ("Translate the onboarding email to German", "low", {"tenant": "initech"}),
]
ENDED = ("completed", "failed", "cancelled", "expired", "timed_out")


@dataclass
class Load:
    orch: Orchestrator
    #: initech's daily cap: small, so that its later turns are refused (jobs that fail).
    initech_cap_usd: str = "0.60"
    #: the round that also submits a burst of batch jobs (the queues fill for a moment).
    burst_round: int = 3
    jobs: list[Job] = field(default_factory=list)
    schedule_id: str = ""
    cancelled: str = ""

    def setup(self) -> None:
        """Caps, a limit and a schedule (fired by beat every minute, and by each round)."""
        budgets = self.orch.budgets
        # A turn holds its tier's amount (low $0.25 ... high $5) until it settles.
        budgets.set_cap(scope="global", period="day", limit_usd="50.00", warn_at=0.8)
        budgets.set_cap(scope="tag:tenant=acme", period="day", limit_usd="20.00", warn_at=0.5)
        budgets.set_cap(
            scope="tag:tenant=initech", period="day", limit_usd=self.initech_cap_usd, warn_at=0.5
        )
        self.orch.limits.set("tag:tenant=globex", 1)
        schedule = self.orch.schedules.create(
            None, "Morning digest of new issues", {"type": "interval", "intervalSeconds": 60}
        )
        self.schedule_id = schedule.id

    def round(self, number: int) -> None:
        """One round of jobs; from the second on, follow-up turns on workers whose job
        completed, and in the second a cancel of a job still under way."""
        for text, budget, tags in ROUND:
            self.jobs.append(self.orch.submit(text, budget=budget, tags=tags))
        self.orch.schedules.trigger(self.schedule_id)
        if number == self.burst_round:
            for n in range(12):
                self.jobs.append(self.orch.submit(
                    f"Classify support ticket #{4100 + n}", budget="low",
                    tags={"tenant": "umbrella"}, priority="batch",
                ))  # fmt: skip
        if number >= 1:
            done = [j for j in self.jobs if self.orch.get(j.id).status == "completed"]
            for job in done[-2:]:
                # A worker whose turn is still settling refuses a continue: skip it.
                with contextlib.suppress(InputError):
                    follow = self.orch.continue_(
                        job.id, "Now shorter, please", budget=job.budget, tags=job.tags
                    )
                    self.jobs.append(follow)
        if number == 1 and not self.cancelled:
            victim = self.orch.submit(
                "Research every competitor's pricing history", budget="high",
                tags={"tenant": "acme", "team": "sales"},
            )  # fmt: skip
            self.jobs.append(victim)
            deadline = time.monotonic() + 60
            with contextlib.suppress(TimeoutError):
                self.orch.wait_status(victim.id, ("running", *ENDED), deadline)
            self.orch.cancel(victim.id, reason="no longer needed")
            self.cancelled = victim.id

    def run(self, rounds: int, pause: float) -> None:
        """``rounds`` rounds ``pause`` seconds apart (pacing the load, so the rates vary)."""
        self.setup()
        for number in range(rounds):
            if number:
                time.sleep(pause)
            self.round(number)

    def wait_all(self, timeout: float) -> dict[str, int]:
        """Wait (bounded) until every job ended; returns the count by end state."""
        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        for job in self.jobs:
            ended = self.orch.wait(job.id, timeout=max(deadline - time.monotonic(), 0.1))
            counts[ended.status] = counts.get(ended.status, 0) + 1
        return counts
