"""The ``orchestrator`` command line.

Each sub-module registers its commands on the shared parser; every command takes
``--json`` and prints through :mod:`orchestrator.cli.output`. Errors, ours
(:class:`~orchestrator.errors.OrchestratorError`) and argparse's alike, are one line on
stderr with a non-zero exit status (2 for refused input), never a usage dump or a
traceback; a command run with ``--json`` writes them as one JSON object in the HTTP
API's error shape instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from kombu.exceptions import OperationalError

from orchestrator import __version__
from orchestrator.cli import (
    archive,
    cancel,
    controls,
    gateway,
    jobs,
    ops,
    output,
    repair,
    schedules,
    serve,
    stack,
    webhooks,
)
from orchestrator.errors import APIError, ConfigError, InputError, OrchestratorError, UnknownIdError
from orchestrator.store.connection import StoreError

EXIT_INPUT = output.EXIT_INPUT
EXIT_ERROR = output.EXIT_ERROR
SHELLS = ("bash", "zsh", "fish", "tcsh")
#: Set to see the traceback of an unexpected error (a bug) instead of its one line.
DEBUG_VARIABLE = "ORCHESTRATOR_DEBUG"


class _UsageError(SystemExit):
    """argparse's own usage error, for :func:`main` to tell as it tells ours (a
    SystemExit still, with the input status, for any other caller of the parser)."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_INPUT)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, like InputError (the usage is one --help away); main
        # prints it, as JSON when the command line asks for --json.
        raise _UsageError(message)


def _usage_field(message: str) -> tuple[str, str]:
    """argparse's refusal as (field, message), the field naming the argument or option:
    ``argument --budget: invalid choice: ...`` is ``--budget``; a missing or unrecognized
    argument is the first one named (the message names the rest)."""
    head, sep, rest = message.partition(": ")
    if sep and head.startswith("argument "):
        return head.removeprefix("argument "), rest
    named = _USAGE_NAMED.get(head)
    if sep and named is not None:
        what, also = named
        first, *others = rest.split(", " if "required" in head else " ")
        return first, what + (f" ({also}: {', '.join(others)})" if others else "")
    ambiguous = _AMBIGUOUS.match(message)
    if ambiguous:
        return ambiguous.group(1), message
    one_of = _ONE_OF.match(message)
    if one_of:
        return one_of.group(1).split()[0], message
    return "arguments", message  # a refusal argparse words otherwise: still a field


# argparse's lists of what is missing or unknown (Python's own wording), and what to
# say of the first; the rest follow in the message.
_USAGE_NAMED = {
    "the following arguments are required": ("is required", "also missing"),
    "unrecognized arguments": ("is not an argument of this command", "also unrecognized"),
}
_AMBIGUOUS = re.compile(r"ambiguous option: (\S+?)(?:=\S*)? could match")
_ONE_OF = re.compile(r"one of the arguments (.+) is required")


def build_parser() -> argparse.ArgumentParser:
    # The docstring's first line, less its markup: --help is plain text.
    parser = _Parser(prog="orchestrator", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument(
        "--version", action="version", version=f"orchestrator {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    serve.register(sub)
    gateway.register(sub)
    jobs.register(sub)
    cancel.register(sub)
    schedules.register(sub)
    stack.register(sub)
    ops.register(sub)
    controls.register(sub)
    repair.register(sub)
    webhooks.register(sub)
    archive.register(sub)
    _register_completion(sub)
    return parser


def _register_completion(sub: Any) -> None:
    comp = sub.add_parser(
        "completion",
        help='print the shell completion script: eval "$(orchestrator completion bash)"',
    )
    comp.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    output.json_option(comp, 'print {"shell", "script"}')
    comp.set_defaults(func=run_completion)


def run_completion(args: argparse.Namespace) -> int:
    """Print argcomplete's registration script for ``orchestrator`` in ``args.shell``."""
    from argcomplete.shell_integration import shellcode

    script = shellcode(["orchestrator"], shell=args.shell)
    return output.done(args.json, {"shell": args.shell, "script": script}, script)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if argv is None and "_ARGCOMPLETE" in os.environ:  # a completion request from the shell
        import argcomplete

        argcomplete.autocomplete(parser)
    arguments = list(sys.argv[1:] if argv is None else argv)
    bad = output.undecodable(arguments)
    if bad is not None:
        output.error(f"arguments: '{bad}' is not valid UTF-8 text")
        return EXIT_INPUT
    try:
        args = parser.parse_args(arguments)
    except _UsageError as exc:
        field, message = _usage_field(exc.message)
        if "--json" in arguments:
            output.error_json("invalid_request", field, message)
        else:
            output.error(f"{field}: {message}")
        return EXIT_INPUT
    as_json = bool(getattr(args, "json", False))

    def refused(kind: str, field: str | None, message: str, prefix: str = "error") -> None:
        if as_json:
            output.error_json(kind, field, message)
        else:
            output.error(f"{field}: {message}" if field else message, prefix)

    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        kind = "not_found" if isinstance(exc, UnknownIdError) else "invalid_request"
        refused(kind, exc.field, exc.message)
        return EXIT_INPUT
    except ConfigError as exc:
        refused("configuration_error", None, str(exc), "configuration error")
        return EXIT_INPUT
    except OrchestratorError as exc:
        refused("upstream_error" if isinstance(exc, APIError) else "error", None, str(exc))
        return EXIT_ERROR
    except TimeoutError as exc:
        refused("timeout", None, str(exc), "timeout")
        return EXIT_ERROR
    except (StoreError, OperationalError) as exc:
        # Never a traceback for an unreachable Redis or broker; and never the URL,
        # which may carry a password.
        refused("unavailable", "REDIS_URL", f"cannot reach Redis ({type(exc).__name__})")
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python's final
        # flush of stdout from complaining too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug, not the user's doing: still one line (our errors never carry secrets);
        # the traceback is one variable away.
        if os.environ.get(DEBUG_VARIABLE):
            raise
        why = f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_VARIABLE}=1 for details)"
        refused("internal_error", None, why)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
