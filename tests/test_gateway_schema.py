"""schemathesis against the OpenAPI document a real gateway serves: every operation is
fuzzed (positive and negative data, bounded examples) with an admin token, and no answer
may be a 5xx, an undocumented status, or a body that breaks its documented schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.jobs import RedisStore

from .conftest import Emulator
from .gateway_support import start_gateway

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES = 20  # per operation and mode: the whole run stays well under a minute


def test_every_route_holds_to_its_documented_schema(
    env: dict[str, str], tmp_path: Path, store: RedisStore, emulator: Emulator
) -> None:
    from schemathesis import GenerationMode, checks

    gw = start_gateway(env, tmp_path, store, GATEWAY_RATE_PER_SECOND="100000",
                       GATEWAY_RATE_BURST="100000")  # fmt: skip
    try:
        headers = {"Authorization": f"Bearer {gw.token('admin')}"}
        schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
        wanted = [
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
        ]
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 28
        tried: dict[str, int] = {}

        def fuzz(operation: Any, mode: Any) -> None:
            label = f"{operation.method.upper()} {operation.path} {mode.name}"
            tried[label] = 0

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )  # fmt: skip
            def run(case: Any) -> None:
                tried[label] += 1
                case.call_and_validate(headers=headers, checks=wanted, timeout=10)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # Nothing in the operation can be made invalid (no parameters, no body).
                assert mode == GenerationMode.NEGATIVE, label
                tried[label] = -1

        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(operation, mode)
        assert all(count != 0 for count in tried.values()), tried
        assert sum(count > 0 for count in tried.values()) >= 2 * len(operations) - 4
        assert "Traceback" not in gw.proc.text()
    finally:
        gw.proc.stop()
