"""Budget caps: USD per UTC day or month, for the whole deployment or one tag value.

Enforcement is reserve-then-settle, atomic in Redis. Before a turn goes upstream a hold
for its budget tier is reserved against every cap that applies (the deployment's, and
one per tag of the job); the script refuses if spent + reserved + hold would pass any
cap, so concurrent submissions can never together start more than a cap allows. When
the turn completes its real cost is already in the ledger (which is where "spent" is
read from) and the hold is released. A turn that costs more than its hold is recorded
as an overshoot: the upstream bills what it bills.

With several store cells (``STORE_CELLS``) a cell holds one tenant's jobs, so a cap
spanning tenants is held and counted in the control keys instead: its hold is settled
there once the turn is posted in its cell, adding the turn's cost to the row the cap
reads (docs/scaling.md, "Cells").
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from orchestrator import rules
from orchestrator.errors import InputError, OrchestratorError
from orchestrator.hooks import events as hooks
from orchestrator.jobs.model import Job
from orchestrator.ledger import total_cost_micro
from orchestrator.money import format_usd, to_micro
from orchestrator.store.batch import Batch
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.spend import BudgetStore, CapHold
from orchestrator.wire.models import input_error

log = logging.getLogger(__name__)

Period = Literal["day", "month"]
DEFAULT_HOLDS_USD = {"low": "0.25", "standard": "1", "high": "5", "unlimited": "25"}


def parse_scope(scope: str) -> tuple[str, str] | None:
    """``None`` for ``global``; ``(key, value)`` for ``tag:key=value``; InputError else."""
    if scope == "global":
        return None
    if isinstance(scope, str):
        kind, _, rest = scope.partition(":")
        key, sep, value = rest.partition("=")
        if kind == "tag" and sep and rules.TAG_KEY.ok(key) and rules.TAG_VALUE.ok(value):
            return key, value
    raise InputError("scope", f"{rules.shown(scope)} is not 'global' or 'tag:key=value'")


class BudgetCap(BaseModel):
    """A cap on spend: ``scope`` is ``global`` or ``tag:key=value``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Annotated[str, AfterValidator(rules.check_validator(parse_scope))]
    period: Period = "day"
    # A Decimal, int or decimal text (a float is inexact: refused, as over HTTP), at
    # least one micro-dollar, at most rules.CAP_MAX_USD.
    limit_usd: Annotated[Decimal, BeforeValidator(rules.check_validator(rules.cap_usd))]
    warn_at: Annotated[float, Field(gt=0, le=1)] = 0.8
    on_exceed: Literal["refuse", "wait"] = "refuse"

    @property
    def limit_micro(self) -> int:
        return to_micro(self.limit_usd)

    @property
    def name(self) -> str:
        return f"{self.scope}/{self.period}"


class BudgetExceeded(OrchestratorError):
    """A cap would be passed: names the cap and what is left of it."""

    def __init__(self, cap: BudgetCap, left_micro: int, hold_micro: int) -> None:
        self.cap = cap
        self.left_micro = max(left_micro, 0)
        super().__init__(
            f"budget cap {cap.name} of {format_usd(cap.limit_micro)} reached: "
            f"{format_usd(self.left_micro)} left, this turn holds {format_usd(hold_micro)}"
        )


def period_key(period: Period, at_ms: int) -> str:
    day = _day_of(at_ms // 86_400_000)  # every turn asks: one date a day is computed
    return day if period == "day" else day[:7]


@functools.lru_cache(maxsize=4)
def _day_of(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def next_period_ms(period: Period, at_ms: int) -> int:
    """Start of the next UTC day or month, in epoch ms."""
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        nxt = datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    else:
        year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
        nxt = datetime(year, month, 1, tzinfo=UTC)
    return int(nxt.timestamp() * 1000)


def ledger_member(scope: str, period: Period, at_ms: int) -> tuple[str, str]:
    """The ledger rollup that holds a scope's spend in the period containing ``at_ms``."""
    key = period_key(period, at_ms)
    tag = parse_scope(scope)
    if tag is None:
        return period, key
    return f"tag-{period}", f"{tag[0]}={tag[1]}|{key}"


def cap_holds(caps: list[BudgetCap], at: int) -> list[CapHold]:
    """What a reservation at ``at`` checks of each cap (:class:`CapHold`)."""
    return [
        CapHold(*ledger_member(cap.scope, cap.period, at), cap.scope,
                period_key(cap.period, at), cap.limit_micro)
        for cap in caps
    ]  # fmt: skip


def turn_members(tags: dict[str, str], at_ms: int) -> list[tuple[str, str]]:
    """Extra ledger rollups a turn is posted to, so caps can read spend per period."""
    members = [("month", period_key("month", at_ms))]
    for key, value in sorted(tags.items()):
        for period in ("day", "month"):
            members.append((f"tag-{period}", f"{key}={value}|{period_key(period, at_ms)}"))
    return members


class Budgets:
    """Caps, holds and spend: the policy over a :class:`BudgetStore`."""

    def __init__(self, store: RedisStore, holds_usd: dict[str, str] | None = None) -> None:
        self.store = store
        self.spend = BudgetStore(store)
        holds = {**DEFAULT_HOLDS_USD, **(holds_usd or {})}
        self.holds = {tier: to_micro(Decimal(str(v))) for tier, v in holds.items()}

    # --- caps ----------------------------------------------------------------------

    def set_cap(self, **fields: Any) -> BudgetCap:
        """Create or replace a cap; InputError naming the field if it is malformed."""
        if "limit_usd" in fields:
            rules.new_cap_usd(fields["limit_usd"])
        try:
            cap = BudgetCap.model_validate(fields)
        except ValidationError as exc:
            raise input_error(exc) from None
        self.spend.put_cap(cap.name, cap.model_dump_json())
        return cap

    def remove_cap(self, scope: str, period: Period = "day") -> bool:
        parse_scope(scope)
        if period not in get_args(Period):
            raise InputError("period", f"{rules.shown(period)} is not 'day' or 'month'")
        return self.spend.remove_cap(f"{scope}/{period}")

    def caps(self) -> list[BudgetCap]:
        return [BudgetCap.model_validate_json(raw) for raw in self.spend.caps()]

    def applicable(self, job: Job) -> list[BudgetCap]:
        scopes = {"global"} | {f"tag:{k}={v}" for k, v in job.tags.items()}
        return [cap for cap in self.caps() if cap.scope in scopes]

    # --- holds ---------------------------------------------------------------------

    def spans(self, cap: BudgetCap) -> bool:
        """Whether the cap is held and counted in the control keys: with several
        cells, a cap on more than one tenant (docs/scaling.md)."""
        cells = self.store.cells
        return cells.count > 1 and not cap.scope.startswith(f"tag:{cells.tenant_tag}=")

    def reserve(self, job: Job, at_ms: int | None = None) -> int:
        """Hold the tier's amount against every applicable cap; returns the hold (micro).

        Raises :class:`BudgetExceeded` for the first cap that would be passed; nothing
        is held then. A job that already holds returns at once (a redelivered task).
        With several cells, the caps spanning tenants are held first, in the control
        keys; the job's cell then holds its tenant's caps (or none: its hold there
        marks that the job holds, so every path that gives a hold back runs).
        """
        caps = self.applicable(job)
        if not caps:
            return 0
        at = at_ms or now_ms()
        amount = self.holds.get(job.budget, self.holds["standard"])
        spanning = [cap for cap in caps if self.spans(cap)]
        own = [cap for cap in caps if not self.spans(cap)]
        if spanning:
            refused = self.spend.reserve(job.id, amount, at, cap_holds(spanning, at), spanning=True)
            if refused is not None:
                raise BudgetExceeded(spanning[refused.cap_index], refused.left_micro, amount)
        refused = self.spend.reserve(job.id, amount, at, cap_holds(own, at))
        if refused is not None:
            self._settle_spanning(job.id)  # nothing ran: its hold goes back whole
            raise BudgetExceeded(own[refused.cap_index], refused.left_micro, amount)
        self._warn(caps, at)
        return amount

    def release(self, job_id: str) -> int | None:
        """Release a job's hold (idempotent); returns the amount, or None if none held.
        Called once its turn is posted, or known to have none."""
        released = self.spend.release(job_id)
        if released is not None:  # a hold spanning tenants comes with one in the cell
            self._settle_spanning(job_id)
        return released

    def hold_into(self, batch: Batch, job_id: str) -> int:
        """Queue a read of the job's raw hold (for :meth:`release_into`); its index."""
        return self.spend.hold_into(batch, job_id)

    def release_into(self, batch: Batch, job_id: str, raw_hold: str) -> int:
        """Queue the release of a hold read by :meth:`hold_into`; the index of its reply
        (1 if released, 0 if it was released already). The turn is posted by then: its
        hold on caps spanning tenants is settled now."""
        self._settle_spanning(job_id)
        return self.spend.release_into(batch, job_id, raw_hold)

    def _settle_spanning(self, job_id: str) -> None:
        """Settle the job's hold on caps spanning tenants, if it has one: what its turn
        posted in its cell (nothing, if none was) counts once against those caps, in the
        period it is settled in, and the hold goes back."""
        raw = self.spend.spanning_hold(job_id)
        if raw is None:
            return
        job = self.store.get_job(job_id)
        at = now_ms()
        caps = [c for c in self.applicable(job) if self.spans(c)] if job is not None else []
        rows = sorted({ledger_member(cap.scope, cap.period, at) for cap in caps})
        self.spend.settle_spanning(job_id, raw, self.store.turn_cost(job_id), rows)

    @staticmethod
    def amount_of(raw_hold: str | None) -> int | None:
        """The amount (micro-USD) of a hold read by :meth:`hold_into`; None for no hold."""
        return BudgetStore.amount_of(raw_hold)

    def record_overshoot(self, job: Job, hold_micro: int, cost_micro: int) -> None:
        """A turn cost more than its hold: count it per scope, and say so in the log."""
        over = cost_micro - hold_micro
        for cap in self.applicable(job):
            self.spend.add_overshoot(cap.name, over)
        log.warning(
            "job %s cost %s, %s more than its %s hold", job.id, format_usd(cost_micro),
            format_usd(over), format_usd(hold_micro),
        )  # fmt: skip

    def reclaim(self, older_than_ms: int) -> int:
        """Release holds older than this (their job died between reserve and settle)."""
        released = 0
        cutoff = now_ms() - older_than_ms
        for job_id in self.spend.holds_before(cutoff):
            if self._live(job_id):
                continue
            released += self.release(job_id) is not None
        # A control-keys hold whose cell hold never came (a crash in between) or went.
        for job_id in self.spend.spanning_holds_before(cutoff):
            if not self._live(job_id):
                self._settle_spanning(job_id)
        return released

    def _live(self, job_id: str) -> bool:
        """Whether a held job's turn may still be running (its settlement gives back
        its hold: a reclaim must not)."""
        job = self.store.get_job(job_id)
        if job is not None and not job.done and job.status != "queued":
            return True  # still running: its finalize settles it
        return self.spend.settling(job_id)  # ended here, its turn still upstream

    # --- jobs waiting for the next period (``on_exceed: wait``) --------------------

    def wait_until(self, job_id: str, until_ms: int) -> None:
        """Park a job until ``until_ms`` (the start of the period it waits for)."""
        self.spend.wait_until(job_id, until_ms)

    def due_waiting(self, at_ms: int) -> list[str]:
        """The parked jobs whose period has begun by ``at_ms``."""
        return self.spend.due_waiting(at_ms)

    def take_waiting(self, job_id: str) -> bool:
        """Unpark a job; False if another process took it first (it sends the job)."""
        return self.spend.take_waiting(job_id)

    # --- reporting -----------------------------------------------------------------

    def status(self, at_ms: int | None = None) -> list[dict[str, Any]]:
        """Per cap: spent, reserved, cap and left (micro), ratio, overshoots."""
        at = at_ms or now_ms()
        rows = []
        overshoots = self.spend.overshoots()
        for cap in self.caps():
            spans = self.spans(cap)
            row = self.spend.spent(*ledger_member(cap.scope, cap.period, at), spanning=spans)
            spent = total_cost_micro(row)
            reserved = self.spend.reserved(cap.scope, period_key(cap.period, at), spanning=spans)
            over = overshoots.get(cap.name, {"count": 0, "micro": 0})
            rows.append({
                "cap": cap.name, "scope": cap.scope, "period": period_key(cap.period, at),
                "cap_micro": cap.limit_micro, "spent_micro": spent, "reserved_micro": reserved,
                "left_micro": cap.limit_micro - spent - reserved,
                "ratio": (spent + reserved) / cap.limit_micro, "warn_at": cap.warn_at,
                "on_exceed": cap.on_exceed, "overshoots": over["count"],
                "overshoot_micro": over["micro"],
            })  # fmt: skip
        return rows

    def _warn(self, caps: list[BudgetCap], at: int) -> None:
        for row in self.status(at):
            cap = next((c for c in caps if c.name == row["cap"]), None)
            if cap is None or row["ratio"] < cap.warn_at:
                continue
            if self.spend.mark_warned(cap.name, row["period"]):
                hooks.budget_crossed(self.store, row, cap.scope)
                used = format_usd(row["spent_micro"] + row["reserved_micro"])
                log.warning(
                    "budget %s at %.0f%% (%s of %s)",
                    cap.name, row["ratio"] * 100, used, format_usd(cap.limit_micro),
                )  # fmt: skip
