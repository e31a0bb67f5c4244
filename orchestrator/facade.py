"""The facade a backend calls: ``from orchestrator import Orchestrator``.

    orch = Orchestrator()                     # settings from the environment
    job = orch.submit("Summarise today's tickets", budget="low", tags={"tenant": "acme"})
    for index, update in orch.updates(job.id):
        ...
    job = orch.wait(job.id, timeout=600)
    print(orch.costs(by="tag")["total"])

Every method validates first and raises :class:`~orchestrator.errors.InputError`
naming the field; nothing is written or enqueued for a rejected call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery

if TYPE_CHECKING:
    from orchestrator.controls.budgets import Budgets
    from orchestrator.controls.limits import Limits

from orchestrator import rules
from orchestrator.errors import InputError, NotFoundError, UnknownIdError
from orchestrator.jobs import lifecycle, steps, submit
from orchestrator.jobs.model import TERMINAL, Job, JobKind, Submission
from orchestrator.runtime import Runtime, store_for
from orchestrator.schedules.facade import ScheduleAPI
from orchestrator.settings import Settings, load_settings
from orchestrator.store.keys import LEDGER_DIMENSIONS
from orchestrator.wire.models import Budget


class Orchestrator:
    """Submit, continue, watch and cost jobs. Thread-safe; cheap to construct once."""

    def __init__(self, settings: Settings | None = None, *, app: Celery | None = None) -> None:
        self.settings = settings or load_settings()
        self.store = store_for(self.settings)
        self.rt = Runtime(self.settings, self.store)
        if app is None:
            from orchestrator.celery import make_app

            app = make_app(self.settings)
        self.app = app
        self._schedules: ScheduleAPI | None = None

    def close(self) -> None:
        self.rt.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- submitting --------------------------------------------------------------

    def submit(
        self,
        input: str,
        *,
        budget: Budget = "standard",
        tags: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        fetch_files: bool = False,
        schedule_id: str | None = None,
        priority: str = "interactive",
        queue_ttl: float | None = None,
        idle_timeout: float | None = None,
        deadline: float | None = None,
    ) -> Job:
        """Create a new upstream worker with ``input``. Same idempotency key, same job.

        ``priority``: ``interactive`` (someone is waiting) is taken before ``batch``.
        The job's limits, in seconds (None: the settings ``JOB_QUEUE_TTL``,
        ``JOB_IDLE_TIMEOUT``, ``JOB_DEADLINE``): not started upstream within
        ``queue_ttl`` → ``expired`` (nothing sent, nothing billed); no update for
        ``idle_timeout``, or not ended ``deadline`` after submission → ``timed_out``.
        """
        self._known_schedule(schedule_id)
        return self._enqueue(
            "create",
            None,
            input=input,
            budget=budget,
            tags=tags or {},
            idempotency_key=idempotency_key,
            fetch_files=fetch_files,
            schedule_id=schedule_id,
            priority=priority,
            queue_ttl=queue_ttl,
            idle_timeout=idle_timeout,
            deadline=deadline,
        )

    def continue_(
        self,
        worker_or_job: str,
        input: str,
        *,
        budget: Budget | None = None,
        tags: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        fetch_files: bool = False,
        schedule_id: str | None = None,
        priority: str = "interactive",
        queue_ttl: float | None = None,
        idle_timeout: float | None = None,
        deadline: float | None = None,
    ) -> Job:
        """Add a turn to a worker, named by its id or by a job of ours that made it.

        Refused (InputError ``worker_id``) for a worker neither a job of ours ran nor
        the API knows, and while the worker's turn of a job cancelled or
        timed out here may still run upstream. The limits are as for :meth:`submit`.
        The budget tier and tags not given are the earlier job's (the job named, else
        the worker's latest of ours); a tag given replaces that key only.
        """
        worker_id = self.worker_id_of(worker_or_job)
        fields: dict[str, Any] = {
            "input": input, "idempotency_key": idempotency_key, "fetch_files": fetch_files,
            "schedule_id": schedule_id, "priority": priority, "queue_ttl": queue_ttl,
            "idle_timeout": idle_timeout, "deadline": deadline,
        }  # fmt: skip
        # What the caller gave is checked before the store or the API is asked anything:
        # an empty input is refused at once, not after the worker lookup's retries.
        submit.check(
            self.settings, kind="continue", worker_id=worker_id, budget=budget or "standard",
            tags={} if tags is None else tags, **fields,
        )  # fmt: skip
        named = worker_or_job if worker_or_job.startswith("job_") else None
        if named is None:
            submit.require_worker(self.rt, worker_id, unsure_ok=True)
        lifecycle.refuse_unsettled(self.rt, named, worker_id)
        self._known_schedule(schedule_id)
        budget, tags = submit.carried_over(self.rt, named, worker_id, budget, tags)
        return self._enqueue("continue", worker_id, budget=budget, tags=tags, **fields)

    # --- ending ------------------------------------------------------------------

    def cancel(self, job_id: str, *, reason: str | None = None) -> Job:
        """Cancel a job: it ends ``cancelled`` now and frees its concurrency slots (a
        waiting job takes them); a job already ended is returned unchanged.

        The Workers API has no cancel route: a turn already started upstream goes on
        and is billed. The job stops relaying its updates and refuses continues; the
        turn's real cost is settled into the ledger when it ends upstream. A job not
        yet sent upstream sends nothing and costs nothing. InputError for an unknown id.
        """
        return lifecycle.cancel(self.app, self.rt, job_id, reason)

    def cancel_many(
        self,
        *,
        tags: dict[str, str] | None = None,
        status: str | None = None,
        schedule_id: str | None = None,
        reason: str | None = None,
    ) -> list[str]:
        """Cancel every live job matching all the filters given (at least one: a tag
        subset, a live status, a schedule id), as :meth:`cancel` does; the ids cancelled."""
        return lifecycle.cancel_many(
            self.app, self.rt, tags=tags, status=status, schedule_id=schedule_id, reason=reason
        )

    def checked(self, kind: JobKind, worker_id: str | None, **fields: Any) -> Submission:
        """A submission checked as :meth:`submit` (``kind`` create) or :meth:`continue_`
        would check it (``fields``: their keywords); InputError naming the field. Nothing
        is written: the gateway stores it with its async writer, then calls :meth:`send`."""
        return submit.check(self.settings, kind=kind, worker_id=worker_id, **fields)

    def send(self, job: Job) -> None:
        """Send the first task of a job just stored (the last step of :meth:`submit`)."""
        steps.dispatch(self.app, self.rt, job)

    def _enqueue(self, kind: JobKind, worker_id: str | None, **fields: Any) -> Job:
        """Validate a submission (``fields``: submit's keywords), store it as a job and
        dispatch it, unless its idempotency key names a job already."""
        return submit.submit(self.app, self.rt, kind=kind, worker_id=worker_id, **fields)

    def _known_schedule(self, schedule_id: str | None) -> None:
        """UnknownIdError ``schedule_id`` for an id no schedule of ours has: the job's
        cost would be booked to a schedule that does not exist."""
        if schedule_id is not None:
            self.schedules.store.require(schedule_id)

    def worker_id_of(self, worker_or_job: str) -> str:
        """The upstream worker id named directly or by one of our job ids (checked by
        the id rules before a key or a URL is made of it)."""
        return submit.worker_id_of(self.store, worker_or_job)

    # --- watching ----------------------------------------------------------------

    def _require(self, job_id: str) -> Job:
        """The stored job; InputError ``job_id`` for what is not a job id (checked
        before any key is built from it) or an unknown one."""
        return self.store.require_job(rules.JOB_ID.check(job_id, "job_id"))

    def get(self, job_id: str) -> Job:
        """The job as stored now; InputError for an unknown id."""
        return self._require(job_id)

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """Status transitions with their times (epoch ms)."""
        self._require(job_id)
        return self.store.history(job_id)

    def wait(self, job_id: str, timeout: float = 600.0, *, poll: float = 0.2) -> Job:
        """Block until the job ends (completed, failed, cancelled, expired, timed_out);
        TimeoutError after ``timeout``."""
        rules.JOB_ID.check(job_id, "job_id")
        deadline = time.monotonic() + rules.positive_seconds(timeout, "timeout")
        # Subscribed to the job's status moves before its status is read, so a move
        # right after the read still wakes the wait below at once.
        with self.store.watch_job(job_id) as watch:
            while True:
                job = self.store.require_job(job_id)
                if job.status in TERMINAL:
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
                # Blocks until the job moves (or 5 s, to re-read in any case).
                watch.wait(min(remaining, 5.0))

    def updates(
        self, job_id: str, *, after: int | None = None, block: bool = True, timeout: float = 600.0
    ) -> Iterator[tuple[int, Any]]:
        """This job's turn's updates as ``(index, data)``, in order, each once.

        ``index`` is the worker's update number. With ``block`` the iterator waits for
        live ones and ends when the turn ends; without, it yields what is stored now.
        """
        job = self._require(job_id)
        deadline = time.monotonic() + rules.positive_seconds(timeout, "timeout")
        if after is not None and (type(after) is not int or after < -1):
            raise InputError("after", f"{rules.shown(after)} is not an update index (-1 or more)")
        position = after
        while True:
            job = self.store.require_job(job_id)
            if job.worker_id is None:
                if not block or job.done:
                    return
                self.wait_status(job_id, ("submitted", "running"), deadline)
                continue
            start = job.update_from or 0
            if position is None or position < start - 1:
                position = start - 1
            if job.done and job.update_to is not None and position + 1 >= job.update_to:
                return
            # An ended turn's updates are all stored (a completed one's folded): no wait.
            wait = 1000 if block and not job.done else None
            batch = self.store.read_updates(
                job.worker_id, position, block_ms=wait, turn=start, job_id=job.id
            )
            for index, data in batch:
                if job.done and job.update_to is not None and index >= job.update_to:
                    return  # a later turn of the worker (a continue) is another job's
                position = index
                yield index, data
            if batch:
                continue
            if not block:
                return
            if job.done:  # nothing more is stored for an ended turn
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no end of updates for {job_id} after {timeout}s")

    def wait_status(self, job_id: str, statuses: tuple[str, ...], deadline: float) -> None:
        while time.monotonic() < deadline:
            job = self.store.require_job(job_id)
            if job.status in statuses or job.done:
                return
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} did not reach {statuses}")

    @property
    def budgets(self) -> Budgets:
        """Budget caps per UTC day/month, globally or per tag: set, remove, status."""
        return self.rt.budgets

    @property
    def limits(self) -> Limits:
        """Concurrency limits per tag value or budget tier: set, remove, status."""
        return self.rt.limits

    @property
    def schedules(self) -> ScheduleAPI:
        """Recurring and one-shot runs: create, list, pause, resume, cancel, history."""
        if self._schedules is None:
            self._schedules = ScheduleAPI(self.rt, self.app)
        return self._schedules

    # --- results -----------------------------------------------------------------

    def worker(self, job_id: str) -> Any:
        """The latest stored snapshot of the job's upstream worker (or None)."""
        job = self._require(job_id)
        return self.store.snapshot(job.worker_id, job.id) if job.worker_id else None

    def files(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Fetched files of a job: name -> {path, size, sha256} (or {refused|error})."""
        self._require(job_id)
        return self.store.files(job_id)

    def download(self, job_id: str, name: str, dest: Path) -> dict[str, Any]:
        """Download one published file of the job's worker now, to ``dest``."""
        from orchestrator.jobs.files import safe_path

        job = self._require(job_id)
        if job.worker_id is None:
            raise InputError("job_id", f"job {job_id} has no worker yet")
        safe_path(Path("/"), name)  # refuse traversal before any request
        got = self.rt.client.download_file(job.worker_id, name, dest)
        return {"path": str(got.path), "size": got.size, "sha256": got.sha256}

    def email(self, worker_or_job: str) -> str:
        """The worker's email address (asked of the API)."""
        worker_id = self.worker_id_of(worker_or_job)  # validate before building a client
        try:
            return self.rt.client.retrieve_email(worker_id)
        except NotFoundError:
            raise UnknownIdError("worker_id", f"no worker {worker_id}") from None

    def cost(self, job_id: str) -> dict[str, int] | None:
        """The job's turn as posted to the ledger (integer fields), or None until then."""
        job = self._require(job_id)
        return self.store.turn_cost(job.id)

    def costs(
        self,
        by: str = "day",
        *,
        since: date | None = None,
        until: date | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """The ledger: ``{"by", "rows": [{"key", fields...}], "total": {fields...}}``.

        Money fields are integer micro-dollars (``*_micro``), token fields integers.
        ``by="job"`` lists the newest ``limit`` jobs created from ``since`` to ``until``
        (UTC days, inclusive), each with its turn's cost and ``posted``. ``since`` and
        ``until`` are ``datetime.date``: a ``datetime`` or text is refused, as the CLI and
        the gateway refuse anything but ``YYYY-MM-DD``.
        """
        if by not in (*LEDGER_DIMENSIONS, "job"):
            raise InputError("by", f"must be one of {', '.join((*LEDGER_DIMENSIONS, 'job'))}")
        for name, day in (("since", since), ("until", until)):
            # A datetime is a date too, but the day arithmetic below needs a plain one.
            if day is not None and (type(day) is not date):
                raise InputError(name, f"{day!r} is not a datetime.date")
        if by not in ("day", "job") and (since or until):
            raise InputError("since" if since else "until", "only filters by day or job")
        if by == "job" and (type(limit) is not int):
            raise InputError("limit", f"{limit!r} is not an int")
        if by == "job":
            start = None if since is None else _day_ms(since)
            end = None if until is None else _day_ms(until) + DAY_MS - 1
            if start is not None and end is not None and end < start:
                raise InputError("until", "is before since")
            return self.store.job_costs(since_ms=start, until_ms=end, limit=limit)
        return self.store.costs(by, since=since, until=until)


DAY_MS = 86_400_000


def _day_ms(day: date) -> int:
    """Midnight UTC starting ``day``, in epoch ms."""
    return (day - date(1970, 1, 1)).days * DAY_MS
