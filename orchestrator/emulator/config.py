"""Knobs of the emulator: how turns are simulated, and which faults it injects.

Both models are plain pydantic models so they can be given at start-up (to
:func:`~orchestrator.emulator.create_app`, :class:`~orchestrator.emulator.EmulatorServer`
or :func:`~orchestrator.emulator.serve`) and changed at run time through the control
routes (``POST /_emulator/config`` and ``POST /_emulator/faults``), which validate a
partial JSON body against the same fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class FaultConfig(BaseModel):
    """Faults injected into ``/api`` requests (never into ``/_emulator`` routes).

    Every ``rate_*`` is the fraction of eligible requests that get the fault:

    - ``rate_429``, ``rate_500``, ``rate_503``: answer with that status before doing
      anything. 429 and 503 carry ``Retry-After: <retry_after_seconds>`` and, when
      ``retry_after_ms`` is set, ``retry-after-ms`` too. Their sum must be at most 1
      (one random draw picks at most one of them).
    - ``rate_lost_response``: POSTs only; the action is performed (worker created,
      turn started, schedule stored, idempotency key recorded) and then the answer is a
      502, as if the response was lost on the way back.
    - ``rate_slow``: the response is delayed by ``slow_seconds``.
    - ``rate_cut_stream``: an SSE stream is closed abruptly (no terminating chunk)
      after a random number of events, before its natural end.

    ``seed`` makes the fault draws reproducible for a given request sequence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_429: Rate = 0.0
    rate_500: Rate = 0.0
    rate_503: Rate = 0.0
    rate_lost_response: Rate = 0.0
    rate_slow: Rate = 0.0
    rate_cut_stream: Rate = 0.0
    slow_seconds: Annotated[float, Field(ge=0.0, le=600.0)] = 1.0
    retry_after_seconds: Annotated[float, Field(ge=0.0, le=3600.0)] = 1.0
    retry_after_ms: Annotated[int | None, Field(ge=0, le=3_600_000)] = None
    seed: int | None = None

    @model_validator(mode="after")
    def _check_status_rates(self) -> Self:
        if self.rate_429 + self.rate_500 + self.rate_503 > 1.0:
            raise ValueError("rate_429 + rate_500 + rate_503 must be at most 1")
        return self

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """A copy with ``changes`` applied, validated as a whole."""
        return FaultConfig.model_validate({**self.model_dump(), **changes})


class EmulatorConfig(BaseModel):
    """How the emulator simulates a worker's turn.

    A turn lasts ``turn_seconds`` (0 means it completes as soon as the event loop runs
    it) and emits ``events_per_turn`` update events spaced evenly over that time: a
    ``start`` chunk first, a ``finish`` chunk last. ``seed`` makes the simulated costs,
    usage and texts reproducible. ``faults`` are the start-up fault settings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn_seconds: Annotated[float, Field(ge=0.0, le=3600.0)] = 1.0
    events_per_turn: Annotated[int, Field(ge=2, le=100_000)] = 10
    seed: int | None = None
    faults: FaultConfig = Field(default_factory=FaultConfig)

    def updated(self, changes: dict[str, Any]) -> EmulatorConfig:
        """A copy with ``changes`` applied, validated as a whole."""
        return EmulatorConfig.model_validate({**self.model_dump(), **changes})
