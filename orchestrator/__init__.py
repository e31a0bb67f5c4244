"""orchestrator: a distributed job orchestrator for a hosted AI Workers API."""

from orchestrator.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    ConfigError,
    InputError,
    NotFoundError,
    OrchestratorError,
    RateLimitError,
    StreamError,
    UnknownIdError,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy, so that importing the package (the Celery app, the emulator) stays light.
    if name == "Orchestrator":
        from orchestrator.facade import Orchestrator

        return Orchestrator
    raise AttributeError(name)


__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "ConfigError",
    "InputError",
    "NotFoundError",
    "Orchestrator",
    "OrchestratorError",
    "RateLimitError",
    "StreamError",
    "UnknownIdError",
    "__version__",
]
