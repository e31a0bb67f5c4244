"""How every command prints: one money format, one time format, ``--json``, errors.

Every command uses these, so the CLI reads the same everywhere:

- money: :func:`usd` (``$0.170925``, from integer micro-dollars);
- times: :func:`when` (ISO 8601 UTC with milliseconds, ``2026-01-31T12:00:00.000Z``);
- ``--json``: :func:`json_option` adds it, :func:`emit` prints one JSON document,
  :func:`emit_line` one JSON object per line (streams), :func:`done` the JSON or the
  line a command ends with;
- errors: :func:`error` prints one ``error: <field>: <message>`` line on stderr, or with
  ``--json`` :func:`error_json` one ``{"error": {"type", "field", "message"}}`` object;
- text from outside (ids, names, upstream text) goes through :func:`clean` before it
  reaches a terminal, so no escape sequence is echoed raw;
- :func:`table` and :func:`fields` for the human forms.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrator.money import format_usd

#: Exit statuses: 1 for a failure, 2 for input refused (argparse's own as well).
EXIT_ERROR = 1
EXIT_INPUT = 2

# C0 controls but tab and newline, DEL and C1 controls (ESC starts terminal sequences).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Lone surrogates: what Python makes of bytes that are not UTF-8 in argv or files.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def usd(micro: int | None) -> str:
    """Integer micro-dollars as ``$1.234567``; ``-`` when unknown."""
    return "-" if micro is None else format_usd(micro)


def when(value: int | float | str | datetime | None) -> str:
    """A time as ISO 8601 UTC, e.g. ``2026-01-31T12:00:00.000Z``; ``-`` when unknown.

    Takes epoch milliseconds, an aware datetime, or an ISO string with an offset (a naive
    one is taken as UTC)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value / 1000, UTC)
    elif isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return clean(value)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def clean(text: object) -> str:
    """``text`` safe for a terminal: control characters and undecodable bytes shown as
    ``\\xNN`` escapes, so a hostile id cannot move the cursor or recolour the screen."""
    raw = str(text)
    raw = _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", raw)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", raw)


def json_option(parser: argparse.ArgumentParser, text: str = "print JSON") -> None:
    """Add ``--json`` (every command has it; ``tests/test_cli_shape.py`` checks)."""
    parser.add_argument("--json", action="store_true", help=text)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return when(value)
    return str(value)


def emit(value: Any) -> None:
    """Print one JSON document (indented) on stdout."""
    print(json.dumps(value, indent=2, default=_default), flush=True)


def emit_line(value: Any) -> None:
    """Print one JSON value on one line (for streams: one object per line)."""
    print(json.dumps(value, default=_default), flush=True)


def done(as_json: bool, value: Any, line: str) -> int:
    """A command's outcome: ``value`` as JSON with ``--json``, else ``line`` as given
    (made safe by the caller where it carries outside text); exit status 0."""
    if as_json:
        emit(value)
    else:
        print(line)
    return 0


def error(message: str, prefix: str = "error") -> None:
    """One ``<prefix>: <message>`` line on stderr, whitespace folded, made safe."""
    print(f"{prefix}: {clean(' '.join(message.split()))}", file=sys.stderr, flush=True)


def error_json(kind: str, field: str | None, message: str) -> None:
    """An error as one JSON object on stderr, in the HTTP API's shape
    (``{"error": {"type", "field", "message"}}``), for a command run with ``--json``."""
    body = {"error": {"type": kind, "field": field, "message": " ".join(message.split())}}
    print(json.dumps(body, ensure_ascii=True), file=sys.stderr, flush=True)


def fields(pairs: Iterable[tuple[str, object]], width: int = 10) -> None:
    """``name      value`` lines (values made safe)."""
    for name, value in pairs:
        print(f"{name:<{width}}{clean(value)}")


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: tuple[int, ...] = (),
    footer: Sequence[str] | None = None,
) -> None:
    """Columns padded to their widest cell; ``right`` lists right-aligned columns."""
    rows = [[clean(cell) for cell in row] for row in rows]
    every = [headers, *rows, *([footer] if footer else [])]
    widths = [max(len(line[i]) for line in every) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))
    if footer:
        print(line(["-" * w for w in widths]))
        print(line(footer))


def undecodable(argv: Sequence[str]) -> str | None:
    """The first argument that was not valid UTF-8 (shown safely, cut short), or None."""
    for arg in argv:
        if _SURROGATE.search(arg):
            shown = clean(arg)
            return shown if len(shown) <= 60 else shown[:59] + "…"
    return None
