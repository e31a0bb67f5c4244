"""Every key a Lua script touches is one the caller passed in ``KEYS``.

Redis Cluster routes a script by its declared keys and does not check the ones a script
reaches on its own: a key built inside a script (from ARGV, a stored value, a string)
works on one Redis and silently lands on the wrong node of a cluster. This check reads
every script of ``orchestrator/store/scripts`` and follows each key argument of each
``redis.call`` back to where its value comes from: ``KEYS[...]`` directly, a local bound
only to such values, a loop over ``KEYS`` or over a table filled only with them, or a
function parameter every call site passes such a value. Anything else fails, naming the
script and the call; so does a command whose key positions the table below does not know.
"""

from __future__ import annotations

import re
from types import ModuleType

import pytest

from orchestrator.store.scripts import chain, gateway, jobs, records, schedules, spend

#: Command -> key argument positions (1-based after the name); "all" for variadic keys.
KEY_ARGS: dict[str, tuple[int, ...] | str] = {
    **dict.fromkeys(
        [
            "GET", "SET", "INCR", "INCRBY", "DECRBY", "PTTL", "PEXPIRE", "DUMP", "RESTORE",
            "PERSIST",
            "HGET", "HSET", "HSETNX", "HDEL", "HMGET", "HINCRBY", "HEXISTS", "HKEYS", "HGETALL",
            "ZADD", "ZREM", "ZSCORE", "ZCARD", "ZRANGE", "ZRANGEBYSCORE", "ZRANGEBYLEX",
            "ZLEXCOUNT", "ZREMRANGEBYRANK", "SADD", "SREM", "SCARD", "SISMEMBER", "LLEN", "LREM",
            "LPOS", "LPUSH", "LTRIM", "RPUSH", "XADD", "XLEN", "XRANGE", "XTRIM", "XDEL",
        ],
        (1,),
    ),
    "LMOVE": (1, 2),
    "DEL": "all",
    "EXISTS": "all",
    "PUBLISH": (),  # a channel, not a key
}

_CALL = re.compile(r"redis\.p?call\(")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _scripts() -> list[tuple[str, str]]:
    found = []
    modules: list[ModuleType] = [chain, gateway, jobs, records, schedules, spend]
    for module in modules:
        for name, value in vars(module).items():
            if isinstance(value, str) and "redis.call(" in value and name.isupper():
                found.append((f"{module.__name__.rsplit('.', 1)[1]}.{name}", value))
    # A fragment (a Lua function other scripts include) is checked inside those scripts,
    # where its call sites are.
    return [(n, v) for n, v in found if not any(v in o and v != o for _, o in found)]


def _strip_comments(lua: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in lua.splitlines())


def _args(text: str, start: int) -> list[str]:
    """The top-level comma-separated arguments of the call whose '(' ends at ``start``."""
    depth, quote, parts, current = 0, "", [], ""
    for ch in text[start:]:
        if quote:
            current += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                parts.append(current.strip())
                return parts
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    raise AssertionError("unbalanced call")


def _from_keys(expr: str, lua: str, seen: frozenset[str] = frozenset()) -> bool:
    """True when ``expr`` can only hold a value of ``KEYS``."""
    expr = expr.strip()
    if expr.startswith("KEYS[") and _closes_at_end(expr[4:]):
        return True
    if expr in seen:
        return True  # a cycle adds no source of its own; the others are checked
    if not re.fullmatch(_NAME, expr) or expr == "KEYS":
        return False
    seen = seen | {expr}
    sources: list[str] = []
    # local a, b = x, y  /  a = x
    for m in re.finditer(rf"(?:local\s+)?((?:{_NAME}\s*,\s*)*{_NAME})\s*=(?!=)([^\n]*)", lua):
        names = [n.strip() for n in m.group(1).split(",")]
        if expr in names:
            values = _split_top(m.group(2))
            i = names.index(expr)
            sources.append(values[i] if i < len(values) else "nil")
    # for _, a in ipairs(t)
    for m in re.finditer(rf"for\s+{_NAME}\s*,\s*{expr}\s+in\s+ipairs\(({_NAME})\)", lua):
        table = m.group(1)
        if table == "KEYS":
            sources.append("KEYS[i]")
        else:
            sources.extend(a[1] for a in _inserts(table, lua) if len(a) == 2)
            if not _inserts(table, lua):
                sources.append("nil")
    # function f(..., a, ...): every call site's argument at a's position
    for m in re.finditer(rf"function\s+({_NAME})\(([^)]*)\)", lua):
        params = [p.strip() for p in m.group(2).split(",")]
        if expr in params:
            i = params.index(expr)
            for call in re.finditer(rf"(?<!function ){m.group(1)}\(", lua):
                sources.append(_args(lua, call.end())[i])
    return bool(sources) and all(_from_keys(s, lua, seen) for s in sources)


def _closes_at_end(text: str) -> bool:
    """``[...]`` with its first bracket closed by its last character."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth == 0:
            return i == len(text) - 1
    return False


def _split_top(text: str) -> list[str]:
    return _args(text + ")", 0)


def _inserts(table: str, lua: str) -> list[list[str]]:
    return [_args(lua, m.end()) for m in re.finditer(rf"table\.insert\(\s*(?={table}\s*,)", lua)]


def _violations(lua: str) -> list[str]:
    lua = _strip_comments(lua)
    bad = []
    for m in _CALL.finditer(lua):
        args = _args(lua, m.end())
        command = args[0].strip("'\"").upper()
        if command not in KEY_ARGS:
            bad.append(f"{args[0]}: key positions unknown (add it to KEY_ARGS)")
            continue
        spec = KEY_ARGS[command]
        positions = range(1, len(args)) if spec == "all" else spec
        for p in positions:
            arg = args[p] if p < len(args) else "<missing>"
            if not _from_keys(arg, lua):
                bad.append(f"{command} {arg}")
    return bad


@pytest.mark.parametrize("name,lua", _scripts(), ids=[n for n, _ in _scripts()])
def test_every_key_a_script_touches_comes_from_keys(name: str, lua: str) -> None:
    assert _violations(lua) == [], name


def test_the_check_catches_keys_built_inside_a_script() -> None:
    built = "local k = ARGV[1] .. ':job'\nredis.call('HGET', k, 'status')"
    stored = "for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do redis.call('DEL', k) end"
    passed = "local function f(a) redis.call('GET', a) end\nf(KEYS[1])\nf(ARGV[1])"
    tabled = (
        "local t = {}\ntable.insert(t, ARGV[2])\n"
        "for _, r in ipairs(t) do redis.call('SADD', r, 1) end"
    )
    moved = "redis.call('LMOVE', KEYS[1], ARGV[1], 'LEFT', 'RIGHT')"
    suffixed = "redis.call('GET', KEYS[1] .. ':x')"
    assert _violations(suffixed) == ["GET KEYS[1] .. ':x'"]
    assert _violations(built) == ["HGET k"]
    assert "DEL k" in _violations(stored)
    assert _violations(passed) == ["GET a"]
    assert _violations(tabled) == ["SADD r"]
    assert _violations(moved) == ["LMOVE ARGV[1]"]
    fine = "local a, b = KEYS[1], KEYS[2]\nredis.call('LMOVE', a, b, 'LEFT', 'RIGHT')"
    assert _violations(fine) == []
