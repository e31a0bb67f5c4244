"""Where one instant-turn job's worker CPU goes, step by step (``python -m bench.profile
spy``): py-spy samples one ``orchestrator worker`` (threads x 8, api+streams) while it
runs n jobs, each sample is put in the first step whose frames it shows, and each
step's share of the samples is turned into ms of CPU per job with the process's own
CPU time over the same window. Only the thread holding the GIL is sampled (``--gil``:
without it, ``--nonblocking`` cannot tell a thread waiting in epoll or recv from one
running); CPU spent with the GIL released is spread over the steps in proportion.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.jobs.model import TERMINAL

from .harness import Context, cpu_seconds, wait_for

#: (step, frames any of which puts a sample in it: "a&b" asks for both); the first
#: match wins, so the narrower steps come before the thread they run in.
STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("logging (any thread)", ("(logging/__init__.py",)),
    ("create: BEGIN_ATTEMPT read", ("RedisStore.begin_attempt",)),
    ("create: HTTP create + parse", ("WorkersClient.create",)),
    ("create: set_submitted (a continue)", ("RedisStore.set_submitted",)),
    ("create: rest of the step", ("call_upstream (", "start_turn (")),
    ("relay here: stream read + SSE parse", ("_Relay.read&WorkersClient",)),
    ("relay here: HTTP retrieve + parse", ("_settle_at_once&WorkersClient.retrieve",)),
    ("relay here: submit, updates, post, complete", ("_settle_at_once", "_Relay.")),
    ("finalize: read job", ("RedisStore.require_job",)),
    ("finalize: HTTP retrieve + parse", ("WorkersClient.retrieve",)),
    ("finalize: post turn (ledger)", ("settle_turn (",)),
    ("finalize: webhook check", ("job_ended (",)),
    ("finalize: complete + release", ("finalize (orchestrator/jobs/steps.py",)),
    ("create task: Celery around the step", ("(workers_tasks/tasks.py",)),
    ("follow: read job fields", ("Follower._job_fields",)),
    ("follow: stream open (HTTP)", ("AsyncWorkersClient._send",)),
    ("follow: stream read + SSE parse", ("AsyncWorkersClient.stream_updates",)),
    ("follow: batched update writes", ("UpdateWriter.",)),
    ("follow: claim, renew, wake", ("Follower._claim_more", "Follower._renew", "Follower._listen")),
    ("follow: rest of the turn", ("Follower._follow",)),
    ("follow: event loop", ("start.<locals>.target",)),
    ("finalize: thread hand-off", ("settle (workers_tasks/follower_service.py",)),
    ("housekeeping, end sweep", ("_end_sweep", "_housekeeping")),
    ("Celery consumer: ack", ("Message.ack",)),
    ("Celery consumer: receive, events", ("asynloop (",)),
    ("hand-written task: HTTP", ("run_job (&(httpx/",)),
    ("hand-written task: Redis", ("run_job (&(redis/",)),
    ("hand-written task: rest", ("run_job (",)),
    ("Celery pool threads (task plumbing)", ("celery/", "concurrent/futures")),
]


def step_of(stack: str) -> str:
    for step, frames in STEPS:
        if any(all(part in stack for part in frame.split("&")) for frame in frames):
            return step
    return "other"


def breakdown(raw: str) -> tuple[int, collections.Counter[str]]:
    """Busy samples, and samples per step, of py-spy's raw output."""
    steps: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # a line py-spy cut short when it was stopped
        last = stack.split(";")[-1]
        if "(threading.py)" in last or "wait (" in last:
            continue  # idle threads
        samples += int(count)
        steps[step_of(stack)] += int(count)
    return samples, steps


def _spied(ctx: Context, pid: int, name: str, run: Callable[[], None], n: int) -> None:
    """Run ``run`` (n jobs, to the end) under py-spy; print the per-step table."""
    out = ctx.logs / f"{name}.txt"
    spy_bin = str(Path(sys.executable).with_name("py-spy"))
    rec = subprocess.Popen([spy_bin, "record", "--pid", str(pid), "--format", "raw",
                            "--rate", "250", "--gil", "--nonblocking", "-o", str(out)])  # fmt: skip
    try:
        time.sleep(1)
        cpu0 = cpu_seconds(pid)
        run()
        per_job = (cpu_seconds(pid) - cpu0) * 1000 / n
    finally:
        rec.send_signal(2)
        rec.wait(timeout=30)
    samples, steps = breakdown(out.read_text())
    print(f"\n{n} jobs, worker CPU {per_job:.2f} ms per job; {samples} busy samples\n")
    print("| step | share | ms CPU per job |\n|---|---|---|")
    for step, k in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"| {step} | {100 * k / samples:.1f}% | {per_job * k / samples:.2f} |")


def spy(ctx: Context, n: int = 1500) -> None:
    from .dispatch import _orchestrator

    _, url = ctx.emulator("spy-emulator")
    worker = ctx.worker("spy-ours", ctx.env(url, prefix="bp"), "api,streams")
    orch = _orchestrator(ctx, url, "bp")

    def ended() -> int:
        return sum(orch.store.job_states()[s] for s in TERMINAL)

    for i in range(30):
        orch.submit(f"warm {i}", budget="low")
    wait_for(lambda: ended() >= 30, 60, "warm-up")

    def run() -> None:
        for i in range(n):
            orch.submit(f"spy {i}", budget="low", tags={"tenant": f"t{i % 10}"})
        wait_for(lambda: ended() >= n + 30, 120 + n / 5, f"{n} jobs", every=0.02)

    try:
        _spied(ctx, worker.pid, "spy-ours", run, n)
    finally:
        orch.close()


def spy_baseline(ctx: Context, n: int = 1500) -> None:
    """The same for the hand-written task (``bench.handwritten``), threads x 8."""
    from .dispatch import _orchestrator
    from .handwritten import TASK, done_key, make_handwritten_app
    from .overhead import handwritten_args

    _, url = ctx.emulator("spy-emulator")
    env = ctx.env(url, prefix="bp")
    theirs = ctx.spawn("spy-handwritten", handwritten_args("threads", 8), env, ready="ready.")
    orch = _orchestrator(ctx, url, "bp")
    app = make_handwritten_app(orch.settings)
    r = ctx.redis()

    def send(run: str, count: int) -> None:
        for i in range(count):
            app.send_task(TASK, args=[run, f"spy {i}", f"t{i % 10}"])
        wait_for(lambda: r.hlen(done_key(run)) >= count, 120 + count / 5, "jobs", every=0.02)

    try:
        send("warm", 30)
        _spied(ctx, theirs.pid, "spy-handwritten", lambda: send("spy", n), n)
    finally:
        orch.close()
        r.close()
