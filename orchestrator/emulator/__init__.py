"""A local server that speaks the Workers API wire format (``shared/reference/wire.md``).

For development, tests and benchmarks: workers run simulated turns that stream
UI-message-chunk updates over SSE and bill exact, random costs; faults (429/500/503,
lost responses, slow answers, cut streams) can be injected; ``/_emulator/ledger`` tells
what it really did, to check a client's bookkeeping against.

- :func:`create_app` — the Starlette app.
- :func:`serve` — run it in the foreground with uvicorn.
- :class:`EmulatorServer` — run it in a background thread on 127.0.0.1 (a context
  manager exposing ``url`` and ``api_key``).
- :class:`EmulatorConfig`, :class:`FaultConfig` — turn pacing and faults.

From the command line: ``orchestrator emulator --port 8765`` (see ``orchestrator.cli``).
"""

from orchestrator.emulator.app import create_app
from orchestrator.emulator.config import EmulatorConfig, FaultConfig
from orchestrator.emulator.server import EmulatorServer, serve

__all__ = ["EmulatorConfig", "EmulatorServer", "FaultConfig", "create_app", "serve"]
