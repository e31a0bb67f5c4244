"""Schedules facade (placeholder until written)."""

from __future__ import annotations

from typing import Any


class ScheduleAPI:
    def __init__(self, orchestrator: Any) -> None:
        self.orchestrator = orchestrator
