"""The ``orchestrator`` command line.

Each sub-module registers its commands on the shared parser. Errors of our own
(:class:`~orchestrator.errors.OrchestratorError`) are printed as one line on stderr with
a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kombu.exceptions import OperationalError

from orchestrator.cli import archive, controls, jobs, ops, repair, schedules, serve, stack
from orchestrator.errors import ConfigError, InputError, OrchestratorError
from orchestrator.store.connection import StoreError

EXIT_INPUT = 2
EXIT_ERROR = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: one line, exit 2, like InputError.
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    serve.register(sub)
    jobs.register(sub)
    schedules.register(sub)
    stack.register(sub)
    ops.register(sub)
    controls.register(sub)
    repair.register(sub)
    archive.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except TimeoutError as exc:
        print(f"timeout: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (StoreError, OperationalError) as exc:
        # Never a traceback for an unreachable Redis or broker; and never the URL,
        # which may carry a password.
        print(f"error: REDIS_URL: cannot reach Redis ({type(exc).__name__})", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python's final
        # flush of stdout from complaining too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
