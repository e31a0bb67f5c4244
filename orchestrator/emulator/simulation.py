"""What one simulated turn produces: its update events, answer, files and charges.

Pure functions of a random generator and the turn's identity, so the state module only
has to pace the events and apply the result. Money is drawn as integer micro-dollars,
so cumulative sums are exact and convert to Decimals of at most six decimals.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from orchestrator.wire.models import Output, OutputContent, Source

REPORT_PATH = "report.md"
PLOT_PATH = "data/charts/plot.bin"

_WORDS = (
    "the", "analysis", "shows", "steady", "growth", "across", "regions", "while", "costs",
    "remain", "within", "budget", "and", "next", "step", "is", "to", "validate", "data",
    "against", "latest", "quarterly", "figures", "café", "naïve", "résumé",
)  # fmt: skip


@dataclass(frozen=True)
class TurnCharges:
    """What one turn costs and uses (a delta, not a cumulative figure)."""

    internal_micro: int
    model_micro: int
    sandbox_micro: int
    tool_micro: int
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    steps: int
    credits: int
    duration_ms: int

    @property
    def cost_micro(self) -> int:
        """The turn's total cost: the sum of the four cost kinds."""
        return self.internal_micro + self.model_micro + self.sandbox_micro + self.tool_micro

    @property
    def total_tokens(self) -> int:
        """Input, output and reasoning tokens (cache traffic is counted apart)."""
        return self.input_tokens + self.output_tokens + self.reasoning_tokens


@dataclass(frozen=True)
class WorkerFile:
    """A file a worker produced: its relative path, media type and bytes."""

    path: str
    media_type: str
    content: bytes


@dataclass(frozen=True)
class TurnPlan:
    """Everything a turn will emit and leave behind; ``events[-1]`` is the finish."""

    turn: int
    events: list[dict[str, Any]]
    text: str
    output: Output
    source: Source
    messages: list[dict[str, Any]]
    files: list[WorkerFile]
    charges: TurnCharges
    budget: str = "standard"


def plan_turn(
    rng: random.Random,
    *,
    worker_id: str,
    turn: int,
    user_input: str,
    budget: str,
    events_per_turn: int,
    turn_seconds: float,
) -> TurnPlan:
    """Plan turn ``turn`` of a worker: ``events_per_turn`` events, ``start`` to ``finish``."""
    middle = events_per_turn - 2
    with_tool = middle >= 3
    n_deltas = middle - 1 if with_tool else middle
    words = [rng.choice(_WORDS) for _ in range(n_deltas)]
    text_id = f"t{turn}"
    deltas = [
        {"type": "text-delta", "id": text_id, "delta": word if i == 0 else " " + word}
        for i, word in enumerate(words)
    ]
    events: list[dict[str, Any]] = [{"type": "start", "turn": turn}, *deltas]
    if with_tool:
        tool_event = {
            "type": "tool-input-available",
            "toolCallId": f"call_{turn}_{rng.getrandbits(32):08x}",
            "toolName": "web_search",
            "input": {"query": user_input[:80]},
        }
        events.insert(1 + n_deltas // 2, tool_event)
    events.append({"type": "finish"})

    text = "".join(str(d["delta"]) for d in deltas) or f"Turn {turn} done."
    suffix = f"{rng.getrandbits(32):08x}"
    output = Output(id=f"msg_{turn}_{suffix}", content=[OutputContent(text=text)])
    source = Source(
        id=f"src_{turn}_{suffix}",
        title=f"Source {turn}",
        url=f"https://example.com/sources/{worker_id}/{turn}",
    )
    messages: list[dict[str, Any]] = [
        {"id": f"usr_{turn}_{suffix}", "role": "user", "parts": [_text_part(user_input)]},
        {"id": output.id, "role": "assistant", "parts": [_text_part(text)]},
    ]
    report = f"# Report, turn {turn}\n\nRequest: {user_input}\n\n{text}\n".encode()
    files = [
        WorkerFile(REPORT_PATH, "text/markdown", report),
        WorkerFile(PLOT_PATH, "application/octet-stream", binary_content(worker_id, turn)),
    ]
    return TurnPlan(
        turn=turn,
        events=events,
        text=text,
        output=output,
        source=source,
        messages=messages,
        files=files,
        charges=draw_charges(rng, turn_seconds),
        budget=budget,
    )


def _text_part(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def draw_charges(rng: random.Random, turn_seconds: float) -> TurnCharges:
    """Random but plausible charges of one turn; money in whole micro-dollars."""
    input_tokens = rng.randint(200, 8_000)
    return TurnCharges(
        internal_micro=rng.randint(0, 2_000),
        model_micro=rng.randint(1_000, 90_000),
        sandbox_micro=rng.randint(0, 12_000),
        tool_micro=rng.randint(0, 6_000),
        input_tokens=input_tokens,
        output_tokens=rng.randint(50, 3_000),
        reasoning_tokens=rng.randint(0, 2_000),
        cache_read_tokens=rng.randint(0, input_tokens),
        cache_write_tokens=rng.randint(0, 1_000),
        steps=rng.randint(1, 12),
        credits=rng.randint(1, 50),
        duration_ms=round(turn_seconds * 1000) + rng.randint(0, 50),
    )


def binary_content(worker_id: str, turn: int) -> bytes:
    """Deterministic bytes for a worker's turn that contain every byte value.

    A seeded permutation of 0..255 guarantees each value (NUL, CR, LF, 0xFF...) occurs;
    a hash chain after it adds 2 KiB of incompressible bytes.
    """
    values = list(range(256))
    random.Random(f"{worker_id}:{turn}").shuffle(values)
    chunks = [bytes(values)]
    digest = hashlib.sha256(f"{worker_id}:{turn}".encode()).digest()
    for _ in range(64):
        digest = hashlib.sha256(digest).digest()
        chunks.append(digest)
    return b"".join(chunks)
