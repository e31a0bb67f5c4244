"""The rooms of the package and what each may import (docs/architecture.md), checked.

Reads every module of ``orchestrator`` and ``workers_tasks`` with :mod:`ast` (nothing is
imported), builds the import graph — imports inside functions count, only
``if TYPE_CHECKING:`` blocks are exempt — and holds it to the rules below. Each rule is
also run against a small module that breaks it, so a checker that stopped seeing
violations would fail here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "workers_tasks")
MAX_LINES = 420

#: (room, prefixes it must not import, why)
FORBIDDEN: list[tuple[str, tuple[str, ...], str]] = [
    (
        "orchestrator.wire",
        (
            "orchestrator.store", "orchestrator.jobs", "orchestrator.schedules",
            "orchestrator.controls", "orchestrator.ops", "orchestrator.facade",
            "orchestrator.runtime", "orchestrator.celery", "orchestrator.cli",
            "celery", "kombu", "redis",
        ),
        "the wire layer speaks HTTP only: no store, no Celery",
    ),
    (
        "orchestrator.store",
        (
            "celery", "kombu", "httpx", "orchestrator.facade", "orchestrator.runtime",
            "orchestrator.cli", "orchestrator.ops", "orchestrator.controls",
            "orchestrator.celery", "orchestrator.jobs.steps", "orchestrator.jobs.follower",
            "orchestrator.schedules.facade", "orchestrator.schedules.run",
            "orchestrator.schedules.beat", "orchestrator.wire.client",
            "orchestrator.wire.aclient",
        ),
        "the store keeps data: it neither sends tasks nor calls the API",
    ),
    (
        "orchestrator.jobs.model",
        ("orchestrator.store", "orchestrator.celery", "celery", "redis"),
        "a job's record and rules stand alone",
    ),
    (
        "workers_tasks",
        ("redis", "httpx", "orchestrator.store.keys"),
        "tasks are thin: they call steps, never Redis or HTTP directly",
    ),
    (
        "orchestrator.emulator",
        (
            "orchestrator.store", "orchestrator.jobs", "orchestrator.schedules",
            "orchestrator.controls", "orchestrator.facade", "orchestrator.runtime",
            "orchestrator.celery", "celery", "redis",
        ),
        "the emulator plays the upstream: it shares only the wire models",
    ),
]

FORBIDDEN.append(
    (
        "orchestrator.gateway",
        (
            "orchestrator.cli", "orchestrator.emulator", "orchestrator.celery",
            "orchestrator.wire.client", "orchestrator.wire.aclient", "celery", "kombu", "redis",
            "orchestrator.hooks.delivery",
        ),
        "the gateway speaks through the facade and the store",
    )
)

FORBIDDEN.append(
    (
        "orchestrator.hooks",
        (
            "orchestrator.cli", "orchestrator.gateway", "orchestrator.facade",
            "orchestrator.jobs.steps", "orchestrator.jobs.lifecycle", "orchestrator.runtime",
            "orchestrator.controls", "orchestrator.celery", "redis",
        ),
        "webhooks are told of events by the job and budget code, never the other way",
    )
)

#: The only rooms that may import the gateway (the CLI serves it).
GATEWAY = "orchestrator.gateway"
GATEWAY_USERS = ("orchestrator.cli", "orchestrator.ops.stack", GATEWAY)

#: Only the store holds a Redis client.
REDIS_OWNER = "orchestrator.store"


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: set[str] = field(default_factory=set)


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(mod: Module, known: set[str]) -> set[str]:
    """Every module ``mod`` imports (resolved to a known module where one is named)."""
    found: set[str] = set()
    skipped = _type_checking_blocks(mod.tree)
    for node in ast.walk(mod.tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = mod.name.split(".")
                if not mod.is_package:
                    here = here[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def load(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name, is_package = module_name(path, root)
            tree = ast.parse(path.read_text(), filename=str(path))
            modules[name] = Module(name, path, is_package, tree)
    known = set(modules)
    for mod in modules.values():
        mod.imports = imports_of(mod, known)
    return modules


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rule_violations(modules: dict[str, Module]) -> Iterator[str]:
    for mod in modules.values():
        for room, banned, why in FORBIDDEN:
            if not under(mod.name, room):
                continue
            for target in sorted(mod.imports):
                if any(under(target, b) for b in banned):
                    yield f"{mod.name} imports {target} ({why})"
        if not any(under(mod.name, user) for user in GATEWAY_USERS):
            for target in sorted(mod.imports):
                if under(target, GATEWAY):
                    yield f"{mod.name} imports {target} (only the CLI and the stack may)"
        if not under(mod.name, REDIS_OWNER):
            for target in sorted(mod.imports):
                if under(target, "redis"):
                    yield f"{mod.name} imports {target} (only {REDIS_OWNER} holds Redis)"


def raw_store_access(modules: dict[str, Module]) -> Iterator[str]:
    """Outside the store: a raw client (``x.r``), a key built (``Keys(...)``, ``store.keys``)."""
    for mod in modules.values():
        if under(mod.name, REDIS_OWNER) or under(mod.name, "orchestrator.emulator"):
            continue
        for node in ast.walk(mod.tree):
            where = f"{mod.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and node.attr == "r":
                yield f"{where} touches a raw Redis client (.r)"
            elif isinstance(node, ast.Attribute) and node.attr == "keys":
                owner = node.value
                owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(
                    owner, "id", ""
                )
                if "store" in str(owner_name):
                    yield f"{where} builds a key (store.keys)"
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Keys"
            ):
                yield f"{where} builds keys (Keys(...))"


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {n: sorted(t for t in m.imports if t in modules and t != n) for n, m in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def oversized(modules: dict[str, Module]) -> Iterator[str]:
    for mod in modules.values():
        lines = len(mod.path.read_text().splitlines())
        if lines > MAX_LINES:
            yield f"{mod.name} has {lines} lines (over {MAX_LINES})"


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load(ROOT)


def test_each_room_imports_only_what_it_may(modules: dict[str, Module]) -> None:
    assert list(rule_violations(modules)) == []


def test_nothing_outside_the_store_touches_a_client_or_builds_a_key(
    modules: dict[str, Module],
) -> None:
    assert list(raw_store_access(modules)) == []


def test_there_are_no_import_circles(modules: dict[str, Module]) -> None:
    assert cycles(modules) == []


def test_no_module_is_oversized(modules: dict[str, Module]) -> None:
    assert list(oversized(modules)) == []


def test_a_modest_package_of_named_rooms(modules: dict[str, Module]) -> None:
    rooms = {n.split(".")[1] for n in modules if n.startswith("orchestrator.") and n.count(".")}
    assert {"wire", "store", "jobs", "schedules", "controls", "ops", "cli"} <= rooms
    assert not [n for n in modules if n.rsplit(".", 1)[-1] in {"utils", "helpers", "misc"}]


# --- the checker itself sees a broken rule ----------------------------------------


def _fake(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in ("orchestrator", "workers_tasks"):
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return load(tmp_path)


def test_the_checker_catches_each_kind_of_break(tmp_path: Path) -> None:
    fake = _fake(
        tmp_path,
        {
            "orchestrator/wire/__init__.py": "",
            "orchestrator/wire/client.py": "import redis\nfrom orchestrator.store import jobs\n",
            "orchestrator/store/__init__.py": "",
            "orchestrator/store/jobs.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from orchestrator.facade import X\n"
                "def f():\n    from orchestrator import facade\n"
            ),
            "orchestrator/facade.py": (
                "from orchestrator.store.jobs import RedisStore\n"
                "def wait(store):\n    return store.r.get(store.keys.job('x'))\n"
            ),
            "workers_tasks/tasks.py": "from orchestrator.store.keys import Keys\nKeys('p')\n",
            "orchestrator/gateway/__init__.py": "",
            "orchestrator/gateway/app.py": "import celery\n",
            "orchestrator/jobs/__init__.py": "",
            "orchestrator/jobs/steps.py": "from orchestrator.gateway import app\n",
        },
    )
    broken = list(rule_violations(fake))
    assert "orchestrator.wire.client imports redis (the wire layer speaks HTTP only: no store, no Celery)" in broken  # noqa: E501
    assert any(b.startswith("orchestrator.wire.client imports orchestrator.store.jobs") for b in broken)  # noqa: E501
    assert any(b.startswith("orchestrator.store.jobs imports orchestrator.facade") for b in broken)
    assert any(b.startswith("workers_tasks.tasks imports orchestrator.store.keys") for b in broken)
    assert any(b.startswith("orchestrator.gateway.app imports celery") for b in broken)
    assert any(b.startswith("orchestrator.jobs.steps imports orchestrator.gateway") for b in broken)
    raw = list(raw_store_access(fake))
    assert "orchestrator.facade:3 touches a raw Redis client (.r)" in raw
    assert "orchestrator.facade:3 builds a key (store.keys)" in raw
    assert "workers_tasks.tasks:2 builds keys (Keys(...))" in raw
    # The function-level import closes a circle; the TYPE_CHECKING one alone would not.
    assert cycles(fake) == [["orchestrator.facade", "orchestrator.store.jobs"]]
