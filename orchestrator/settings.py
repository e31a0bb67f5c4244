"""Settings, read from the environment (and an optional ``.env`` file).

Every variable is documented in the README's configuration table. A wrong value stops
the program with one line naming the variable (see :func:`load_settings`). The API
key and the passwords are :class:`~pydantic.SecretStr`: printing the settings shows
``**********``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from orchestrator import rules
from orchestrator.errors import ConfigError
from orchestrator.store.connection import (
    CLUSTER_SCHEME,
    SENTINEL_SCHEME,
    parse_cluster_url,
    parse_sentinel_url,
)
from orchestrator.wire.models import error_message

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)
#: Celery's Redis transport cannot run on Redis Cluster (its commands span slots).
_NO_CLUSTER_BROKER = (
    "a Redis Cluster cannot be Celery's broker (kombu's commands span slots): "
    "use amqp:// (RabbitMQ) or a Redis of its own"
)
_AMQP_SCHEMES = ("amqp://", "amqps://")


class Settings(BaseSettings):
    """All knobs of the orchestrator. Field ``foo_bar`` is read from ``FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Upstream API. With neither set, the local stack runs the emulator instead.
    workers_api_url: str | None = None
    workers_api_key: SecretStr | None = None

    # Redis: unset means "start an embedded server" (dev stack and tests only). The
    # store's Redis (jobs, updates, ledger, schedules); a redis+sentinel:// address asks
    # Sentinel for the primary; redis+cluster://h:p,h:p/ is a Redis Cluster, which
    # needs a BROKER_URL of its own (docs/scaling.md).
    redis_url: str | None = None
    # Celery's broker: amqp:// (RabbitMQ), or a Redis address as above. Unset: REDIS_URL.
    broker_url: str | None = None
    # Passwords stay out of the addresses, so no log line that prints one shows them.
    redis_password: SecretStr | None = None
    redis_sentinel_password: SecretStr | None = None
    broker_password: SecretStr | None = None
    key_prefix: Annotated[str, AfterValidator(rules.KEY_PREFIX.quiet_validator)] = "orch"
    # The store split into cells of their own hash tag, spread over a cluster's primaries
    # (docs/scaling.md); fixed for a deployment, like its key prefix.
    store_cells: Annotated[int, Field(ge=1, le=256)] = 1

    # HTTP client.
    http_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    http_connect_timeout: Annotated[float, Field(gt=0, le=120)] = 5.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 5
    retry_initial_delay: Annotated[float, Field(ge=0, le=60)] = 0.5
    retry_max_delay: Annotated[float, Field(gt=0, le=300)] = 8.0
    stream_read_timeout: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # Whole-exchange deadlines (connect, send, headers and body together), not per read:
    # one attempt of a JSON call, and one file download.
    http_deadline: Annotated[float, Field(gt=0, le=3600)] = 120.0
    file_deadline: Annotated[float, Field(gt=0, le=86_400)] = 600.0

    # Bounds on what the upstream sends (see RELIABILITY.md).
    file_max_bytes: Annotated[int, Field(ge=1, le=2**40)] = 100 * 2**20
    files_max_per_turn: Annotated[int, Field(ge=0, le=100_000)] = 1000
    event_max_bytes: Annotated[int, Field(ge=1024, le=64 * 2**20)] = 2**20
    answer_max_bytes: Annotated[int, Field(ge=64 * 1024, le=2**31)] = 32 * 2**20
    stream_max_parse_failures: Annotated[int, Field(ge=1, le=1000)] = 5

    # Jobs and files.
    files_dir: Path = Path("var/files")
    max_input_chars: Annotated[int, Field(gt=0, le=1_000_000)] = 100_000
    updates_maxlen: Annotated[int, Field(gt=0)] = 100_000
    # Per-job limits in seconds, each overridable per submit and per schedule (0: off):
    # not started upstream within JOB_QUEUE_TTL -> expired; no update relayed for
    # JOB_IDLE_TIMEOUT, or not ended JOB_DEADLINE after submission -> timed_out.
    job_queue_ttl: Annotated[float | None, Field(ge=0, le=rules.JOB_LIMIT_MAX_SECONDS)] = 86_400.0
    job_idle_timeout: Annotated[float | None, Field(ge=0, le=rules.JOB_LIMIT_MAX_SECONDS)] = 3_600.0
    job_deadline: Annotated[float | None, Field(ge=0, le=rules.JOB_LIMIT_MAX_SECONDS)] = 86_400.0

    # Retention (docs/retention.md): a finished job's records expire this long after it
    # ends; RETENTION_BY_TAG overrides it per tag (the longest matching wins).
    retention: Annotated[str, AfterValidator(rules.check_validator(rules.duration_seconds))] = "7d"
    retention_by_tag: Annotated[
        str, AfterValidator(rules.check_validator(rules.retention_by_tag))
    ] = ""
    # Finished jobs are archived (gzip JSON Lines, one file a UTC day) before they expire.
    archive_dir: Path | None = None
    archive_interval_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 10.0

    # Celery.
    visibility_timeout: Annotated[int, Field(ge=10)] = 3600
    task_max_retries: Annotated[int, Field(ge=0, le=1000)] = 20
    # A job written but never known sent is sent again after this long.
    resend_after_seconds: Annotated[float, Field(ge=1, le=86_400)] = 30.0
    # A recurring schedule's slot reached at most this late still runs (later: missed),
    # by a beat (unless its --misfire-grace says otherwise) and by a retiming update.
    schedule_misfire_grace: Annotated[float, Field(ge=0, le=86_400)] = 5.0

    # Stream following: a follower's lease on a stream, and how many one process holds.
    follow_lease_seconds: Annotated[float, Field(ge=1, le=600)] = 30.0
    follower_capacity: Annotated[int, Field(gt=0, le=100_000)] = 2000
    # A create task reads its new turn's stream this long and settles it if it ended
    # (orchestrator.jobs.quick); 0 hands every stream to the followers.
    quick_relay_seconds: Annotated[float, Field(ge=0, le=1)] = 0.05

    # Spend and traffic control (see docs/controls.md).
    budget_holds_usd: dict[str, str] = Field(
        default_factory=lambda: {"low": "0.25", "standard": "1", "high": "5", "unlimited": "25"}
    )
    hold_reclaim_seconds: Annotated[float, Field(ge=60)] = 6 * 3600.0
    fair_share_tag: Annotated[str, AfterValidator(rules.TAG_KEY.quiet_validator)] = "tenant"
    fleet_rate_per_second: Annotated[float | None, Field(gt=0, le=100_000)] = None
    fleet_rate_burst: Annotated[int, Field(ge=1, le=10_000)] = 1

    # Monitoring.
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9808
    # Each worker, beat and gateway process's own instruments (orchestrator.ops.exposition):
    # unset, not served; 0, a free port.
    process_metrics_port: Annotated[int | None, Field(ge=0, le=65535)] = None
    process_metrics_address: str = "127.0.0.1"
    # `orchestrator health` warns when used_memory passes this share of maxmemory.
    memory_warn_share: Annotated[float, Field(gt=0, le=1)] = 0.8

    # The HTTP gateway (see docs/gateway.md).
    gateway_signing_key: SecretStr | None = None  # signs read links; unset: no links
    gateway_link_seconds: Annotated[int, Field(ge=10, le=86_400)] = 900
    gateway_rate_per_second: Annotated[float, Field(gt=0, le=100_000)] = 50.0
    gateway_rate_burst: Annotated[int, Field(ge=1, le=100_000)] = 100
    # A process keeps a token's record and a lease of its requests this long (0: asks
    # Redis on every request): a revoked token passes for at most this long.
    gateway_token_cache_seconds: Annotated[float, Field(ge=0, le=60)] = 1.0
    # Flower's task-sent event for the tasks a gateway sends, as every other sender
    # sends it (Flower lists a task still waiting in its queue). Off, a submit costs one
    # publish less (about a third of the gateway's CPU for one), and Flower lists the
    # task once a worker receives it.
    gateway_task_sent_events: bool = True
    # Who sends a job submitted over HTTP: the outbox relay of the streams workers
    # (one Redis call per submit in the gateway), or the gateway itself (``direct``:
    # for a deployment whose gateway runs with no streams worker).
    gateway_send: Literal["relay", "direct"] = "relay"
    gateway_max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 2**20)] = 2**20
    gateway_sse_keepalive_seconds: Annotated[float, Field(gt=0, le=300)] = 15.0
    gateway_sse_buffer: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    # Close a live-update connection after this many events (0: never); the client
    # resumes with Last-Event-ID, so long streams spread over gateway processes.
    gateway_sse_max_events: Annotated[int, Field(ge=0)] = 0
    gateway_list_scan: Annotated[int, Field(ge=10, le=100_000)] = 2000

    # Webhooks (see docs/gateway.md): targets on private, loopback or link-local
    # addresses are refused unless allowed (tests and a private network may).
    webhook_allow_private: bool = False
    webhook_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0
    webhook_max_attempts: Annotated[int, Field(ge=1, le=50)] = 8
    # The wait before the second attempt, doubled for each next one, up to the most.
    webhook_backoff_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    webhook_backoff_max_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0

    @field_validator("gateway_signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("budget_holds_usd")
    @classmethod
    def _check_holds(cls, value: dict[str, str]) -> dict[str, str]:
        from decimal import Decimal, InvalidOperation

        for tier, amount in value.items():
            if tier not in ("low", "standard", "high", "unlimited"):
                raise ValueError(f"unknown budget tier {tier!r}")
            try:
                if Decimal(str(amount)) < 0:
                    raise ValueError(f"hold of {tier} must not be negative")
            except InvalidOperation:
                raise ValueError(f"hold of {tier} is not a number") from None
        return {k: str(v) for k, v in value.items()}

    @field_validator("workers_api_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith((*_REDIS_SCHEMES, CLUSTER_SCHEME)):
            raise ValueError(
                f"must start with redis://, rediss://, unix://, {SENTINEL_SCHEME} "
                f"or {CLUSTER_SCHEME}"
            )
        _check_sentinel(value)
        return value

    @field_validator("redis_password", "redis_sentinel_password", "broker_password")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or value.get_secret_value() == "" else value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith(CLUSTER_SCHEME):
            raise ValueError(_NO_CLUSTER_BROKER)
        if not value.startswith(_REDIS_SCHEMES + _AMQP_SCHEMES):
            raise ValueError(
                "must start with amqp://, amqps://, redis://, rediss://, unix:// "
                f"or {SENTINEL_SCHEME}"
            )
        _check_sentinel(value)
        return value

    @model_validator(mode="after")
    def _broker_beside_a_cluster(self) -> Settings:
        if self.broker_url is None and self.redis_url and self.redis_url.startswith(CLUSTER_SCHEME):
            # Raised as is (not a ValueError): it names BROKER_URL, not the model.
            raise ConfigError("BROKER_URL", "is not set, and " + _NO_CLUSTER_BROKER)
        return self

    @field_validator("archive_dir", mode="before")
    @classmethod
    def _check_archive_dir(cls, value: object) -> object:
        return None if value in (None, "") else value

    @field_validator("workers_api_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        return value

    @property
    def broker(self) -> str:
        """The broker's address: ``BROKER_URL``, else the store's ``REDIS_URL``."""
        url = self.broker_url or self.redis_url
        if url is None:
            raise ConfigError("REDIS_URL", "is not set (the dev stack sets it; workers need it)")
        return url

    @property
    def broker_kind(self) -> str:
        """``amqp`` (RabbitMQ), ``sentinel`` (Redis under Sentinel) or ``redis`` (a
        Redis Cluster is never the broker: refused when the settings are read)."""
        url = self.broker
        if url.startswith(_AMQP_SCHEMES):
            return "amqp"
        return "sentinel" if url.startswith(SENTINEL_SCHEME) else "redis"

    @property
    def broker_is_store(self) -> bool:
        """True when the broker lives in the store's own Redis (the one-box default)."""
        return self.broker_url is None or self.broker_url == self.redis_url

    def broker_secret(self) -> str | None:
        """The broker's password: ``BROKER_PASSWORD`` for the broker ``BROKER_URL``
        names; for the store's own Redis, ``REDIS_PASSWORD``."""
        secret = self.redis_password if self.broker_is_store else self.broker_password
        return None if secret is None else secret.get_secret_value()

    def redis_secrets(self) -> dict[str, str | None]:
        """The store's passwords, as :func:`orchestrator.store.connection.connect` takes them."""
        return {
            "password": _reveal(self.redis_password),
            "sentinel_password": _reveal(self.redis_sentinel_password),
        }

    @property
    def retention_seconds(self) -> int:
        return rules.duration_seconds(self.retention)

    @property
    def retention_overrides(self) -> dict[tuple[str, str], int]:
        """{(tag key, tag value): seconds} from RETENTION_BY_TAG."""
        return rules.retention_by_tag(self.retention_by_tag)

    @property
    def uses_emulator(self) -> bool:
        """True when no hosted API is configured (the dev stack then runs the emulator)."""
        return self.workers_api_url is None or self.workers_api_key is None


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def _check_sentinel(url: str) -> None:
    """A ``redis+sentinel://`` or ``redis+cluster://`` address checked for its form."""
    try:
        if url.startswith(SENTINEL_SCHEME):
            parse_sentinel_url(url)
        elif url.startswith(CLUSTER_SCHEME):
            parse_cluster_url(url)
    except ConfigError as exc:
        raise ValueError(str(exc).partition(": ")[2]) from None


def load_settings(**overrides: object) -> Settings:
    """Read the settings, raising :class:`ConfigError` naming the first bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # A complex value (e.g. BUDGET_HOLDS_USD) that is not valid JSON.
        match = re.search(r'field "(\w+)"', str(exc))
        variable = match.group(1).upper() if match else "settings"
        raise ConfigError(variable, "is not valid JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = str(first["loc"][0]).upper() if first["loc"] else "settings"
        # Never echo the rejected value: it may be a secret.
        raise ConfigError(variable, error_message(first["msg"])) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
