"""Stopping a stack touches only what that stack made: a demo, or an ``up`` refused at
start, in the workdir of an ``up`` that runs leaves that up's ``stack.env`` alone."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.ops.stack import Stack
from orchestrator.settings import Settings


def test_a_stack_refused_at_start_leaves_another_stacks_shell_file(tmp_path: Path) -> None:
    theirs = tmp_path / "stack.env"
    theirs.write_text("REDIS_URL=redis://127.0.0.1:6390/0\n")
    out = io.StringIO()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        stack = Stack(Settings(), tmp_path, flower_port=port, out=out)
        with pytest.raises(InputError) as refused:
            stack.start()
        stack.stop()  # what `up` and `demo` do on the way out, whatever happened
    assert refused.value.field == "flower_port"
    assert theirs.read_text() == "REDIS_URL=redis://127.0.0.1:6390/0\n"
    # Nothing was started, so nothing is said to be stopped: the error is the one line.
    assert out.getvalue() == ""
