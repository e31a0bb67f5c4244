"""Process-wide resources (settings, Redis store, API client), built once per process.

Celery's prefork pool forks after import, and sockets must not be shared across a
fork, so :func:`reset` is called in each child (see ``workers_tasks.tasks``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from orchestrator.controls.budgets import Budgets
from orchestrator.controls.limits import FleetRate, Limits
from orchestrator.settings import Settings, get_settings
from orchestrator.store.follows import FollowStore
from orchestrator.store.jobs import RedisStore
from orchestrator.store.lifecycle import LifecycleStore
from orchestrator.store.retention import RetentionPolicy
from orchestrator.store.spend import RateStore
from orchestrator.wire.client import WorkersClient


@dataclass
class Runtime:
    settings: Settings
    store: RedisStore
    _client: WorkersClient | None = None
    _budgets: Budgets | None = None
    _limits: Limits | None = None
    _ends: LifecycleStore | None = None

    @property
    def client(self) -> WorkersClient:
        """The upstream client (built on first use: only tasks that call out need it)."""
        if self._client is None:
            from orchestrator.ops.instruments import record_attempt

            throttle = None
            if self.settings.fleet_rate_per_second is not None:
                throttle = FleetRate(
                    RateStore(self.store),
                    self.settings.fleet_rate_per_second,
                    self.settings.fleet_rate_burst,
                )
            self._client = WorkersClient.from_settings(
                self.settings, on_attempt=record_attempt, throttle=throttle
            )
        return self._client

    @property
    def budgets(self) -> Budgets:
        if self._budgets is None:
            self._budgets = Budgets(self.store, self.settings.budget_holds_usd)
        return self._budgets

    @property
    def limits(self) -> Limits:
        if self._limits is None:
            self._limits = Limits(self.store, self.settings.fair_share_tag)
        return self._limits

    @property
    def ends(self) -> LifecycleStore:
        """The live index and the ended set (see :mod:`orchestrator.jobs.lifecycle`)."""
        if self._ends is None:
            self._ends = LifecycleStore(self.store)
        return self._ends

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.store.close()


_lock = threading.Lock()
_runtime: Runtime | None = None


def store_for(settings: Settings) -> RedisStore:
    """The store on ``REDIS_URL``, reading its broker where ``BROKER_URL`` puts it: the
    same Redis (the default), another Redis, or RabbitMQ."""
    from orchestrator.errors import ConfigError

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set")
    store = RedisStore.from_url(
        settings.redis_url,
        settings.key_prefix,
        updates_maxlen=settings.updates_maxlen,
        retention=retention_policy(settings),
        cells=settings.store_cells,
        tenant_tag=settings.fair_share_tag,
        **settings.redis_secrets(),
    )
    if settings.broker_is_store:
        return store
    if settings.broker_kind == "amqp":
        from orchestrator.ops.rabbitmq import RabbitQueues

        store.broker = RabbitQueues(settings.broker, settings.broker_secret())
    else:
        secrets = settings.redis_secrets()
        store.broker_on(
            settings.broker,
            password=settings.broker_secret(),
            sentinel_password=secrets["sentinel_password"],
        )
    return store


def follows_for(settings: Settings) -> FollowStore:
    """The stream follower's async store, on the store's Redis."""
    from orchestrator.errors import ConfigError

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set")
    return FollowStore.from_url(
        settings.redis_url,
        settings.key_prefix,
        retention=retention_policy(settings),
        cells=settings.store_cells,
        **settings.redis_secrets(),
    )


def retention_policy(settings: Settings) -> RetentionPolicy:
    """RETENTION, RETENTION_BY_TAG and ARCHIVE_DIR as the store's policy."""
    return RetentionPolicy(
        settings.retention_seconds,
        settings.retention_overrides,
        archive=settings.archive_dir is not None,
    )


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            settings = get_settings()
            _runtime = Runtime(settings, store_for(settings))
        return _runtime


def reset() -> None:
    """Forget the resources (after a fork, or in tests)."""
    global _runtime
    with _lock:
        _runtime = None
