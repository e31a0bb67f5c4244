"""``orchestrator serve`` (the HTTP gateway) and ``orchestrator tokens`` (its API tokens)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator import rules
from orchestrator.cli import output
from orchestrator.cli.output import json_option
from orchestrator.errors import InputError, UnknownIdError
from orchestrator.ops import exposition
from orchestrator.settings import load_settings

ROLES = ("read", "submit", "admin")


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve the HTTP API (/v1, SSE) with uvicorn")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="gateway processes")
    serve.add_argument("--log-level", default="info", help="uvicorn's log level")
    exposition.add_options(serve)
    json_option(serve, 'print {"url", "workers"} on stdout before serving')
    serve.set_defaults(func=run_serve)

    tokens = sub.add_parser("tokens", help="API tokens of the HTTP gateway")
    tsub = tokens.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    create = tsub.add_parser("create", help="make a token (printed once, stored hashed)")
    create.add_argument("--role", choices=ROLES, required=True, help="what the token may do")
    create.add_argument("--tenant", default=None, help="bind to the jobs tagged tenant=VALUE")
    create.add_argument("--name", default="", help="a label for the list")
    json_option(create, "print the record and the token as JSON")
    create.add_argument(
        "--header-file", type=Path, default=None,
        help="write 'Authorization: Bearer <token>' to this new file (mode 600, for curl -H @FILE)"
        " instead of printing the token",
    )  # fmt: skip
    create.set_defaults(func=run_create)
    lst = tsub.add_parser("list", help="the live tokens (never the tokens themselves)")
    json_option(lst, "print the records as JSON")
    lst.set_defaults(func=run_list)
    revoke = tsub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", help="the token's id (tok_...)")
    json_option(revoke, 'print {"id", "revoked"}')
    revoke.set_defaults(func=run_revoke)


def run_serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise InputError("port", "must be 1-65535")
    if not 1 <= args.workers <= 64:
        raise InputError("workers", "must be 1-64")
    settings = load_settings()
    if settings.redis_url is None:
        raise InputError("REDIS_URL", "must be set for the gateway")
    import uvicorn

    where = exposition.wanted(args, settings)
    # uvicorn's worker processes count each in its own memory; this one counts nothing.
    if where is not None and args.workers > 1 and not exposition.pooled("gateway", "its workers"):
        where = None
    exposition.serve("gateway", where)
    url = f"http://{args.host}:{args.port}"
    if args.json:
        output.emit_line({"url": url, "workers": args.workers})
    print(f"gateway on {url}/v1", file=sys.stderr, flush=True)
    uvicorn.run(
        "orchestrator.gateway.app:create_app", factory=True, host=args.host, port=args.port,
        workers=args.workers, log_level=args.log_level, proxy_headers=False,
        # Live-update streams never end by themselves: on shutdown they are cut after
        # this long, and their clients resume on another process with Last-Event-ID.
        timeout_graceful_shutdown=5,
    )  # fmt: skip
    return 0


def _tokens() -> Any:
    from orchestrator.runtime import store_for
    from orchestrator.store.tokens import TokenStore

    return TokenStore(store_for(load_settings()))


def run_create(args: argparse.Namespace) -> int:
    tenant = None if args.tenant is None else rules.TAG_VALUE.check(args.tenant, "tenant")
    if len(args.name) > 100 or rules.input_problem(args.name or "x") is not None:
        raise InputError("name", "must be at most 100 printable characters")
    if args.header_file is not None:
        # The file is made before the token: a token whose only copy could not be
        # written would be a live credential nobody holds.
        fd = _new_file(args.header_file)
        try:
            token, record = _tokens().create(args.role, tenant, args.name)
        except BaseException:
            os.close(fd)
            args.header_file.unlink()
            raise
        with os.fdopen(fd, "w") as out:
            out.write(f"Authorization: Bearer {token}\n")
        shown = _shown(record)
        if args.json:
            output.emit({**shown, "header_file": str(args.header_file)})
        else:
            use = f"{args.header_file}  (curl -H @{args.header_file} ...)"
            output.fields([("id", record["id"]), ("role", record["role"]),
                           ("tenant", tenant or "-"), ("header", use)])  # fmt: skip
        return 0
    token, record = _tokens().create(args.role, tenant, args.name)
    shown = _shown(record)
    if args.json:
        output.emit({**shown, "token": token})
    else:
        output.fields([("token", token), ("id", record["id"]), ("role", record["role"]),
                       ("tenant", tenant or "-")])  # fmt: skip
        print("the token is shown only now; it is stored as its SHA-256", file=sys.stderr)
    return 0


def _new_file(path: Path) -> int:
    """A new mode-600 file opened for writing; InputError ``header_file`` if it cannot be."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError("header_file", f"{path} exists; give a new file") from None
    except OSError as exc:
        raise InputError("header_file", f"cannot create {path}: {exc.strerror}") from None


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    """A token's record as shown: never its hash; the time in the one format."""
    shown = {k: v for k, v in record.items() if k != "sha256"}
    shown["created_at"] = output.when(record["created_at"])
    return shown


def run_list(args: argparse.Namespace) -> int:
    records = [_shown(r) for r in _tokens().list()]
    if args.json:
        output.emit(records)
        return 0
    if not records:
        print("no tokens (make one: orchestrator tokens create --role read)")
        return 0
    rows = [[r["id"], r["role"], r["tenant"] or "-", r["created_at"], r["name"]] for r in records]
    output.table(["id", "role", "tenant", "created", "name"], rows)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    token_id = rules.TOKEN_ID.check(args.id, "id")
    if not _tokens().revoke(token_id):
        raise UnknownIdError("id", f"no token {token_id}")
    return output.done(args.json, {"id": args.id, "revoked": True}, f"revoked {args.id}")
