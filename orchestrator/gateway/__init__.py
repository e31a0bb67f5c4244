"""The HTTP gateway: ``/v1`` REST, live updates over SSE, tokens (see docs/gateway.md).

May import the facade, the store, jobs, schedules, controls and ops; nothing imports it
but the CLI and the dev stack.
"""
