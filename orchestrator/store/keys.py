"""Every Redis key the orchestrator uses, in one place (see docs/redis-layout.md).

All keys start with the configurable prefix, so several deployments (or test runs)
can share one Redis. Only modules of :mod:`orchestrator.store` use these names; everyone
else calls the store's methods.

On Redis Cluster the prefix is a hash tag, ``{<prefix>}``: every key of a deployment
hashes to one slot, so every script, transaction and multi-key command stays on one
primary (docs/scaling.md says what that gives and what it does not). ``KEY_PREFIX``
itself may not hold braces: the tag is made here, and only here.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.store.connection import is_cluster

LEDGER_DIMENSIONS = ("day", "budget", "tag", "schedule", "worker")


def hash_tag(prefix: str) -> str:
    """``prefix`` as a Redis Cluster hash tag (a prefix already tagged is kept)."""
    return prefix if prefix.startswith("{") and prefix.endswith("}") else f"{{{prefix}}}"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    @classmethod
    def for_client(cls, client: object, prefix: str) -> Keys:
        """The keys a store on ``client`` uses: under the hash tag on a Redis Cluster."""
        return cls(hash_tag(prefix) if is_cluster(client) else prefix)

    # --- jobs ---
    def job(self, job_id: str) -> str:
        """Hash: the job record (see :class:`orchestrator.jobs.model.Job`)."""
        return f"{self.prefix}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        """Pub/sub channel (not a key): the job's new status at each move; what
        ``Orchestrator.wait()`` blocks on. (The history is the job hash's ``history``.)"""
        return f"{self.prefix}:job:{job_id}:events"

    @property
    def files_dispatched(self) -> str:
        """Sorted set: ``<job id>|<file name>`` fetches sent, not yet begun by a worker,
        by send time (ms)."""
        return f"{self.prefix}:files:dispatched"

    def job_files(self, job_id: str) -> str:
        """Hash: file path -> JSON {size, sha256, path} of fetched files."""
        return f"{self.prefix}:job:{job_id}:files"

    @property
    def jobs(self) -> str:
        """Sorted set: job id by creation time (ms)."""
        return f"{self.prefix}:jobs"

    def jobs_by_tag(self, key: str, value: str) -> str:
        """Sorted set: ids of the jobs tagged ``key=value``, by creation time (ms)."""
        return f"{self.prefix}:jobs:tag:{key}={value}"

    def jobs_by_schedule(self, schedule_id: str) -> str:
        """Sorted set: ids of the jobs a schedule ran, by creation time (ms)."""
        return f"{self.prefix}:jobs:schedule:{schedule_id}"

    @property
    def job_indexes(self) -> str:
        """Set: the names of the per-tag and per-schedule job indexes (written by
        CREATE_JOB), so the prune pass can trim them of expired jobs' ids."""
        return f"{self.prefix}:jobs:indexes"

    @property
    def job_states(self) -> str:
        """Hash: status -> number of jobs currently in it (for gauges)."""
        return f"{self.prefix}:jobs:states"

    @property
    def jobs_live(self) -> str:
        """Sorted set: every job not yet ended, by the next time one of its limits (queue
        time-to-live, idle timeout, deadline) falls due (ms; ``NEVER`` when none
        applies). Added by CREATE_JOB, left in TRANSITION to an end state."""
        return f"{self.prefix}:jobs:live"

    @property
    def jobs_ended(self) -> str:
        """Sorted set: jobs ended here (cancelled, expired, timed out) whose wind-down or
        upstream turn's settlement is still to do, by the next time to look (ms)."""
        return f"{self.prefix}:jobs:ended"

    def idempotency(self, key: str) -> str:
        """String: the job id that a submission idempotency key maps to."""
        return f"{self.prefix}:idem:{key}"

    @property
    def outbox(self) -> str:
        """Sorted set: job ids written but whose task is not yet known sent (ms)."""
        return f"{self.prefix}:outbox"

    @property
    def outbox_wake(self) -> str:
        """List: ids of jobs the gateway stored for the relay to send (LPUSH by
        CREATE_JOB, popped by the streams workers' relay; capped, the outbox being the
        record of what is unsent)."""
        return f"{self.prefix}:outbox:wake"

    @property
    def dispatched(self) -> str:
        """Sorted set: job ids whose first task was sent but not yet taken by a worker,
        by send time (ms); left when the create step begins."""
        return f"{self.prefix}:dispatched"

    @property
    def begun(self) -> str:
        """Sorted set: job ids whose upstream call is under way (attempt counted, the job
        not yet submitted), by begin time (ms). One still queued long after, with no task
        of it in the broker, lost that task (e.g. its retry could not be sent while Redis
        was away) and is sent again; the upstream call's idempotency key makes the
        second call find the first one's worker."""
        return f"{self.prefix}:begun"

    def pass_lock(self, name: str) -> str:
        """String (with a TTL): one worker of the fleet runs the repair pass ``name``
        per TTL, so two never re-send the same lost task at once."""
        return f"{self.prefix}:pass:{name}"

    # --- Celery's broker ---
    @property
    def broker_prefix(self) -> str:
        """Prefix kombu puts on every broker key (its ``global_keyprefix``): the queue
        lists, ``unacked`` / ``unacked_index``, the restore lock and the bindings."""
        return f"{self.prefix}:broker:"

    def broker_queue(self, queue: str) -> str:
        """List: the messages waiting on ``queue`` at the default priority."""
        return self.broker_prefix + queue

    # --- upstream workers ---
    def worker(self, worker_id: str) -> str:
        """Hash: latest snapshot JSON, relayed-update count, counted cumulative costs."""
        return f"{self.prefix}:worker:{worker_id}"

    def updates(self, worker_id: str) -> str:
        """Stream: the worker's updates; entry id ``0-(n+1)`` is SSE update n."""
        return f"{self.prefix}:updates:{worker_id}"

    @property
    def follows(self) -> str:
        """Sorted set: job ids whose stream must be followed, by lease expiry (ms)."""
        return f"{self.prefix}:follows"

    @property
    def follow_owners(self) -> str:
        """Hash: job id -> the follower process holding its lease."""
        return f"{self.prefix}:follow-owners"

    @property
    def follow_wake(self) -> str:
        """Pub/sub channel: a job was put up for following; followers claim at once."""
        return f"{self.prefix}:follow-wake"

    # --- ledger ---
    def ledger(self, dimension: str, value: str) -> str:
        """Hash: summed cost/usage fields for one value of a dimension."""
        return f"{self.prefix}:ledger:{dimension}:{value}"

    @property
    def ledger_total(self) -> str:
        return f"{self.prefix}:ledger:total"

    def ledger_index(self, dimension: str) -> str:
        """Set: the values seen for a dimension (days, tiers, tags, ...)."""
        return f"{self.prefix}:ledger-index:{dimension}"

    def ledger_turn(self, job_id: str) -> str:
        """String: JSON of what the job's turn posted, the older layout's record (today
        it is the job hash's ``ledger`` field). Still read, and its presence still makes
        a replay a no-op: a deployment upgraded in place has them. Written only by a
        post for a job whose hash does not exist. Expires with the job."""
        return f"{self.prefix}:ledger-turn:{job_id}"

    @property
    def ledger_corrections(self) -> str:
        """Hash: reconcile correction id (``reconcile:<wid>:<n>``) -> JSON of what it
        posted. Kept: corrections are rare, and the audit of the ledger's repairs."""
        return f"{self.prefix}:ledger:corrections"

    # --- retention (see docs/retention.md) ---
    @property
    def retention(self) -> str:
        """Sorted set: ``<job id>|<worker id>`` of finished jobs by when their records
        expire (ms); the prune pass drops expired ones from ``jobs`` and the ledger's
        worker index."""
        return f"{self.prefix}:retention"

    @property
    def archive_queue(self) -> str:
        """Sorted set: finished jobs waiting for the archiver, by end time (ms); their
        records get their expiry once archived."""
        return f"{self.prefix}:archive:queue"

    def record_patterns(self) -> dict[str, tuple[str, str]]:
        """Record kind -> (SCAN pattern of its keys, suffix of other keys the pattern
        also matches: they are left out). The memory gauge samples these."""
        p = self.prefix
        return {
            "job": (f"{p}:job:job_*", ":files"),
            "job_files": (f"{p}:job:*:files", ""),
            "worker": (f"{p}:worker:*", ":schedules"),
            "updates": (f"{p}:updates:*", ""),
            "ledger_turn": (f"{p}:ledger-turn:*", ""),
            "ledger_row": (f"{p}:ledger:*", ""),
            "idempotency": (f"{p}:idem:*", ""),
        }

    # --- schedules ---
    def schedule(self, schedule_id: str) -> str:
        return f"{self.prefix}:schedule:{schedule_id}"

    def schedule_runs(self, schedule_id: str) -> str:
        return f"{self.prefix}:schedule:{schedule_id}:runs"

    @property
    def schedules_due(self) -> str:
        return f"{self.prefix}:schedules:due"

    @property
    def schedules_all(self) -> str:
        return f"{self.prefix}:schedules"

    # --- operations ---
    def heartbeat(self, name: str) -> str:
        """String (with a TTL): epoch ms of the last heartbeat task the worker ``name`` ran."""
        return f"{self.prefix}:heartbeat:{name}"

    # --- schedules: beat and runs (see docs/schedules.md) ---
    def schedule_slots(self, schedule_id: str) -> str:
        """Sorted set: the slots (ms) of the schedule's recorded runs, for order and trim."""
        return f"{self.prefix}:schedule:{schedule_id}:slots"

    @property
    def schedules_dispatched(self) -> str:
        """Sorted set: ``<schedule id>|<slot ms>`` sent, not yet begun by a worker, by
        send time (ms)."""
        return f"{self.prefix}:schedules:dispatched"

    @property
    def schedules_pending(self) -> str:
        """Sorted set: ``<schedule id>|<slot ms>`` claimed by a beat, not yet known sent."""
        return f"{self.prefix}:schedules:pending"

    @property
    def schedules_buffered(self) -> str:
        """Sorted set: schedule id -> the one slot (ms) waiting for its previous run."""
        return f"{self.prefix}:schedules:buffered"

    def worker_schedules(self, worker_id: str) -> str:
        """Set: ids of the schedules that run the worker."""
        return f"{self.prefix}:worker:{worker_id}:schedules"

    @property
    def schedules_upstream(self) -> str:
        """Hash: imported upstream schedule id -> our schedule id."""
        return f"{self.prefix}:schedules:upstream"

    # --- spend and traffic control (see docs/controls.md) ---
    @property
    def budget_caps(self) -> str:
        """Hash: scope (``global`` or ``tag:k=v``) -> JSON of its cap."""
        return f"{self.prefix}:budget:caps"

    def budget_reserved(self, scope: str, period: str) -> str:
        """String: micro-dollars held by turns in flight for a scope and period key."""
        return f"{self.prefix}:budget:reserved:{scope}:{period}"

    @property
    def budget_holds(self) -> str:
        """Hash: job id -> JSON of its hold (amount and the reserved keys it went into)."""
        return f"{self.prefix}:budget:holds"

    @property
    def budget_hold_times(self) -> str:
        """Sorted set: job id -> when its hold was taken (ms), to reclaim leaked holds."""
        return f"{self.prefix}:budget:hold-times"

    @property
    def budget_overshoots(self) -> str:
        """Hash: scope -> JSON {count, micro} of turns that cost more than their hold."""
        return f"{self.prefix}:budget:overshoots"

    def budget_warned(self, cap: str, period: str) -> str:
        """String (with TTL): set once a cap's warning threshold was reported."""
        return f"{self.prefix}:budget:warned:{cap}:{period}"

    @property
    def budget_waiting(self) -> str:
        """Sorted set: job id -> start of the period it waits for (ms)."""
        return f"{self.prefix}:budget:waiting"

    @property
    def limits(self) -> str:
        """Hash: limit key (``tag:k=v`` or ``budget:tier``) -> max running turns."""
        return f"{self.prefix}:limits"

    def limit_running(self, key: str) -> str:
        """Set: job ids holding a running slot of a limit key."""
        return f"{self.prefix}:limit:{key}:running"

    def limit_waiting(self, key: str) -> str:
        """Sorted set: the jobs waiting for a slot, every fairness group in one set, all
        at score 0 as ``<group>|<sequence>|<job id>`` (lexical order: by group, oldest
        first)."""
        return f"{self.prefix}:limit:{key}:waiting"

    @property
    def limit_sequence(self) -> str:
        """String: a counter that orders waiting jobs by arrival."""
        return f"{self.prefix}:limit:sequence"

    def limit_groups(self, key: str) -> str:
        """List: fairness groups with waiting jobs, in round-robin order."""
        return f"{self.prefix}:limit:{key}:groups"

    @property
    def limit_parked(self) -> str:
        """Hash: job id -> the limit key it waits on (a job waits in one queue at once)."""
        return f"{self.prefix}:limit:parked"

    @property
    def rate(self) -> str:
        """Hash: the fleet rate limit: ``tat`` (ms), ``pause_until`` (ms), settings."""
        return f"{self.prefix}:rate"

    # --- cells (docs/scaling.md; control keys) ---
    @property
    def tenant_cells(self) -> str:
        """Hash: tenant -> the cell it lives in (``STORE_CELLS`` above 1)."""
        return f"{self.prefix}:cells:tenants"

    @property
    def cell_tenants(self) -> str:
        """Hash: cell -> how many tenants were placed in it."""
        return f"{self.prefix}:cells:counts"

    # --- the HTTP gateway (see docs/gateway.md) ---
    @property
    def tokens(self) -> str:
        """Hash: token id -> JSON of its record (role, tenant, name, SHA-256 of the token)."""
        return f"{self.prefix}:tokens"

    @property
    def token_hashes(self) -> str:
        """Hash: SHA-256 (hex) of a token -> its token id (the token itself is never kept)."""
        return f"{self.prefix}:tokens:by-hash"

    def token_bucket(self, digest: str) -> str:
        """Hash (with a TTL): the request bucket of the token with this SHA-256 (hex):
        ``level`` and ``at`` (ms). Named by the hash, so one script finds everything."""
        return f"{self.prefix}:tokens:bucket:{digest}"

    # --- webhooks (see docs/gateway.md) ---
    @property
    def webhooks(self) -> str:
        """Hash: subscription id -> JSON {id, url, events, tenant, created_at} (no secret)."""
        return f"{self.prefix}:webhooks"

    @property
    def webhook_secrets(self) -> str:
        """Hash: subscription id -> its signing secret (``whsec_…``), read only to sign."""
        return f"{self.prefix}:webhooks:secrets"

    def webhook_delivery(self, delivery_id: str) -> str:
        """Hash: one event for one subscription: subscription, event id and type, payload,
        attempts, state, last error; expires a week after it is delivered."""
        return f"{self.prefix}:webhook:delivery:{delivery_id}"

    @property
    def webhooks_due(self) -> str:
        """Sorted set: delivery ids to (re)try, by when (ms); the sweep claims them."""
        return f"{self.prefix}:webhooks:due"

    @property
    def webhooks_dead(self) -> str:
        """Sorted set: delivery ids whose last attempt failed, by when (ms)."""
        return f"{self.prefix}:webhooks:dead"
