"""Fault injection: the random draws that decide which ``/api`` request misbehaves.

One :class:`random.Random` (seeded from :attr:`FaultConfig.seed`) drives every draw, in
a fixed order per request, so a seeded run with the same request sequence injects the
same faults.
"""

from __future__ import annotations

import random

from starlette.responses import Response

from orchestrator.emulator.config import FaultConfig
from orchestrator.emulator.responses import error_response


class FaultInjector:
    """Holds the current :class:`FaultConfig` and makes the draws."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)

    def configure(self, config: FaultConfig, *, reseed: bool = False) -> None:
        """Replace the settings; ``reseed`` restarts the random sequence from the seed."""
        self.config = config
        if reseed:
            self.reseed()

    def reseed(self) -> None:
        """Restart the random sequence from the configured seed."""
        self._rng = random.Random(self.config.seed)

    def status_fault(self) -> Response | None:
        """A 429/500/503 answer for this request, or None to go on."""
        cfg = self.config
        draw = self._rng.random()
        if draw < cfg.rate_429:
            return error_response(
                429, "rate_limit_error", "rate limited (injected)", headers=self._retry_headers()
            )
        draw -= cfg.rate_429
        if draw < cfg.rate_500:
            return error_response(500, "api_error", "internal error (injected)")
        draw -= cfg.rate_500
        if draw < cfg.rate_503:
            return error_response(
                503,
                "overloaded_error",
                "service unavailable (injected)",
                headers=self._retry_headers(),
            )
        return None

    def slow_seconds(self) -> float:
        """How long to hold this request before answering (0 for no delay)."""
        if self._rng.random() < self.config.rate_slow:
            return self.config.slow_seconds
        return 0.0

    def lose_response(self) -> bool:
        """Whether this POST's response is replaced by a 502 after the action ran."""
        return self._rng.random() < self.config.rate_lost_response

    def cut_after(self, natural_length: int) -> int | None:
        """Number of events after which to cut a stream of ``natural_length`` events.

        None means the stream runs to its natural end.
        """
        if natural_length <= 0 or self._rng.random() >= self.config.rate_cut_stream:
            return None
        return self._rng.randrange(natural_length)

    def _retry_headers(self) -> dict[str, str]:
        cfg = self.config
        headers = {"Retry-After": f"{cfg.retry_after_seconds:g}"}
        if cfg.retry_after_ms is not None:
            headers["retry-after-ms"] = str(cfg.retry_after_ms)
        return headers
