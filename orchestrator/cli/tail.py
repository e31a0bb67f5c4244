"""``orchestrator tail`` for people: the update chunks assembled into readable text.

Updates are opaque JSON; the UI-message chunks hosted agent APIs send (the wire
reference names ``start``, ``text-delta``, ``reasoning-delta``,
``tool-input-available``, ``tool-output-available``, ``error``, ``finish``) are rendered
as text, anything else is counted but not shown. A progress line (updates, characters,
seconds) is kept on stderr while it is a terminal; the turn ends with a summary line
carrying its status and cost. ``--raw`` prints each update as ``index<TAB>json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from orchestrator.cli import output
from orchestrator.jobs.model import TERMINAL
from orchestrator.ledger import total_cost_micro

#: Longest tool input shown inline (the rest is cut with an ellipsis).
TOOL_TEXT_MAX = 200


class Transcript:
    """Writes updates as text to ``out``; the progress line goes to ``progress``."""

    def __init__(self, out: TextIO | None = None, progress: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        # Only a terminal gets the in-place progress line; a file or pipe would keep
        # every redraw.
        progress = progress or sys.stderr
        self.progress = progress if progress.isatty() else None
        self.updates = 0
        self.chars = 0
        self.started = time.monotonic()
        self._mid_line = False  # the last thing written did not end its line
        self._shown_progress = False

    def feed(self, index: int, data: Any) -> None:
        """Render one update."""
        self.updates += 1
        kind = data.get("type") if isinstance(data, dict) else None
        if kind in ("text-delta", "reasoning-delta") and isinstance(data.get("delta"), str):
            self._text(data["delta"])
        elif kind == "tool-input-available":
            name = output.clean(data.get("toolName") or "tool")
            shown = json.dumps(data.get("input"), separators=(",", ":"))
            if len(shown) > TOOL_TEXT_MAX:
                shown = shown[: TOOL_TEXT_MAX - 1] + "…"
            self._line(f"[{name} {shown}]")
        elif kind == "error":
            self._line(f"[error: {data.get('errorText') or data.get('error') or '?'}]")
        elif kind == "finish":
            self._end_line()
        elif isinstance(data, dict) and data.get("truncated") is True:
            self._line(f"[update {index}: {data.get('bytes', '?')} bytes, too large to keep]")
        elif isinstance(data, dict) and isinstance(data.get("text"), str) and kind is None:
            self._text(data["text"])  # a plain {"text": ...} chunk
        self._draw_progress()

    def close(self, summary: str) -> None:
        """End the text, clear the progress line, print ``summary`` on its own line."""
        self._end_line()
        self._clear_progress()
        print(summary, file=self.out, flush=True)

    # --- writing ---

    def _text(self, text: str) -> None:
        self._clear_progress()
        self.out.write(output.clean(text.replace("\r", "")))
        self.out.flush()
        self.chars += len(text)
        self._mid_line = not text.endswith("\n")

    def _line(self, text: str) -> None:
        self._end_line()
        self._clear_progress()
        print(output.clean(text), file=self.out, flush=True)

    def _end_line(self) -> None:
        if self._mid_line:
            self._clear_progress()
            print(file=self.out, flush=True)
            self._mid_line = False

    def _draw_progress(self) -> None:
        if self.progress is None or self._mid_line:
            return
        elapsed = time.monotonic() - self.started
        line = f"… {self.updates} updates, {self.chars} chars, {elapsed:.1f} s"
        self.progress.write("\r" + line + "\x1b[K")
        self.progress.flush()
        self._shown_progress = True

    def _clear_progress(self) -> None:
        if self.progress is not None and self._shown_progress:
            self.progress.write("\r\x1b[K")
            self.progress.flush()
            self._shown_progress = False


def raw(updates: Iterable[tuple[int, Any]]) -> None:
    """The updates as stored: ``index<TAB>compact json`` per line."""
    for index, data in updates:
        print(f"{index}\t{json.dumps(data, separators=(',', ':'))}", flush=True)


def summary(job_id: str, status: str, updates: int, cost: dict[str, int] | None) -> str:
    """The line a tail ends with: the job, its status, its updates and its turn's cost."""
    if cost is None:
        money = "no cost posted" if status in TERMINAL - {"completed"} else "cost not posted yet"
    else:
        money = f"cost {output.usd(total_cost_micro(cost))}, {cost.get('total_tokens', 0)} tokens"
    return f"── {job_id} {status}: {updates} updates, {money}"
