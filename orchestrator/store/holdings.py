"""What a job still holds in Redis: the read behind "every error path frees what it
took" (invariant 9). Read-only; one pipelined round trip for any number of jobs.

A finished job must hold none of these; a live one holds those of its stage (a budget
hold and slots while its turn is upstream, a follow lease while its stream is read).
A job ended here (cancelled, expired, timed out) whose turn still runs upstream keeps
its hold and its place in the ended set until that turn is settled.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.store.jobs import RedisStore
from orchestrator.store.keys import Keys

#: The names :meth:`Holdings.held` reports, each with what it is.
HOLDINGS = {
    "budget_hold": "a budget hold (reserved against its caps)",
    "hold_time": "an entry in the leaked-hold reclaim index",
    "budget_waiting": "a place in the wait for the next budget period",
    "slot": "a running concurrency slot of a limit key",
    "parked": "a place in a limit key's waiting queue",
    "follow": "a follow lease (or a request to be followed)",
    "follow_owner": "a follower named as its lease owner",
    "outbox": "an entry in the outbox (written, not known sent)",
    "dispatched": "an entry in the dispatched set (sent, not begun)",
    "begun": "an entry in the begun set (upstream call under way, not submitted)",
    "live": "an entry in the live index (its limits still swept)",
    "unsettled": "an entry in the ended set (its upstream turn not yet settled)",
    "file_fetch": "a file fetch sent and not begun",
    "spanning_hold": "a budget hold on caps spanning tenants (several cells: control keys)",
    "spanning_hold_time": "its entry in the control keys' leaked-hold reclaim index",
}


#: The holdings kept in one key each, per job a member: name -> (the key is a hash, not
#: a sorted set; its :class:`~orchestrator.store.keys.Keys` attribute). Read per job by
#: :meth:`Holdings.held` and counted whole by :meth:`Holdings.anywhere`.
_MEMBERSHIPS = {
    "budget_hold": (True, "budget_holds"),
    "hold_time": (False, "budget_hold_times"),
    "budget_waiting": (False, "budget_waiting"),
    "parked": (True, "limit_parked"),
    "follow": (False, "follows"),
    "follow_owner": (True, "follow_owners"),
    "outbox": (False, "outbox"),
    "dispatched": (False, "dispatched"),
    "begun": (False, "begun"),
    "live": (False, "jobs_live"),
    "unsettled": (False, "jobs_ended"),
}


#: Of those, the ones kept in the control keys, whatever the cells.
_CONTROL = frozenset({"budget_waiting"})


class Holdings:
    """Reads, per job, which of :data:`HOLDINGS` it still has."""

    def __init__(self, store: RedisStore) -> None:
        self.r = store.r
        self.keys = store.keys
        self.cells = store.cells

    def _in(self, k: Keys, attr: str) -> str:
        # The wait for the next budget period is one control-keys set (BudgetStore).
        return str(getattr(self.keys if attr in _CONTROL else k, attr))

    def held(self, job_ids: Sequence[str]) -> dict[str, list[str]]:
        """Job id -> the names of what it still holds; jobs holding nothing are left out."""
        limit_keys = sorted(self.r.hkeys(self.keys.limits))
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                k = self.cells.of_job(job_id)
                for is_hash, attr in _MEMBERSHIPS.values():
                    key = self._in(k, attr)
                    if is_hash:
                        pipe.hexists(key, job_id)
                    else:
                        pipe.zscore(key, job_id)
                for key in limit_keys:
                    pipe.sismember(k.limit_running(key), job_id)
            for k in self.cells:
                for key in limit_keys:
                    pipe.zrange(k.limit_waiting(key), 0, -1)
                pipe.zrange(k.files_dispatched, 0, -1)
            replies = pipe.execute()
        tail = replies[len(replies) - self.cells.count * (len(limit_keys) + 1) :]
        per_cell = len(limit_keys) + 1
        waiting = {m.rsplit("|", 1)[-1] for i, r in enumerate(tail) if (i + 1) % per_cell
                   for m in r}  # fmt: skip
        fetching = {m.partition("|")[0] for r in tail[per_cell - 1 :: per_cell] for m in r}
        names = tuple(_MEMBERSHIPS)
        per_job = len(names) + len(limit_keys)
        found: dict[str, list[str]] = {}
        for i, job_id in enumerate(job_ids):
            row = replies[i * per_job : (i + 1) * per_job]
            # A score of 0 is held too (a follow request waits at 0): test for None.
            held = [n for n, v in zip(names, row, strict=False) if v is not None and v is not False]
            slots = zip(limit_keys, row[len(names) :], strict=True)
            held += [f"slot {key}" for key, value in slots if value]
            if job_id in waiting and "parked" not in held:
                held.append("parked")
            if job_id in fetching:
                held.append("file_fetch")
            if held:
                found[job_id] = held
        for job_id, names_held in self._spanning(job_ids).items():
            found.setdefault(job_id, []).extend(names_held)
        return found

    def _spanning(self, job_ids: Sequence[str]) -> dict[str, list[str]]:
        """The jobs' holds on caps spanning tenants (control keys; several cells only)."""
        if self.cells.count == 1:
            return {}
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hexists(self.keys.budget_holds, job_id)
                pipe.zscore(self.keys.budget_hold_times, job_id)
            replies = pipe.execute()
        found: dict[str, list[str]] = {}
        for i, job_id in enumerate(job_ids):
            hold, at = replies[2 * i], replies[2 * i + 1]
            names = ["spanning_hold"] * bool(hold) + ["spanning_hold_time"] * (at is not None)
            if names:
                found[job_id] = names
        return found

    def anywhere(self) -> dict[str, int]:
        """Name -> entries of it the whole prefix holds, whichever job they belong to
        (also one whose record is gone); names with none are left out. Every count is
        0 once no job is live and every ended turn is settled. Slots and places in a
        limit's queue are named with their key (``slot tag:tenant=acme``)."""
        limit_keys = sorted(self.r.hkeys(self.keys.limits))
        counted: list[str] = []  # the name of each reply
        with self.r.pipeline(transaction=False) as pipe:
            for cell, k in enumerate(self.cells):
                for name, (is_hash, attr) in _MEMBERSHIPS.items():
                    if attr not in _CONTROL or cell == 0:  # control keys: counted once
                        (pipe.hlen if is_hash else pipe.zcard)(self._in(k, attr))
                        counted.append(name)
                pipe.zcard(k.files_dispatched)
                counted.append("file_fetch")
                for key in limit_keys:
                    pipe.scard(k.limit_running(key))
                    pipe.zcard(k.limit_waiting(key))
                    counted += [f"slot {key}", f"queued {key}"]
            if self.cells.count > 1:
                pipe.hlen(self.keys.budget_holds)
                pipe.zcard(self.keys.budget_hold_times)
                counted += ["spanning_hold", "spanning_hold_time"]
            replies = [int(n) for n in pipe.execute()]
        found: dict[str, int] = {}
        for name, n in zip(counted, replies, strict=True):
            found[name] = found.get(name, 0) + n
        return {name: n for name, n in found.items() if n}
