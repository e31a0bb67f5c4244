"""The store split into cells (``STORE_CELLS``, ``orchestrator/store/cells.py``): cell tags
spread over equal slot ranges, tenants placed evenly over a real 3-primary cluster, ids
that route themselves, every job's keys in its cell's slot, and the readers that add up
or merge the cells (listings with their cursor, costs, counts, holdings) giving what
one cell gives. The same contract runs on one Redis (cells without a cluster), and
caps and limits that span tenants are refused, naming their field."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from orchestrator.controls.budgets import BudgetExceeded, Budgets, cap_holds
from orchestrator.controls.limits import Limits
from orchestrator.errors import ConfigError, InputError
from orchestrator.jobs.model import validate_submission
from orchestrator.ops.redis_cluster import RedisCluster
from orchestrator.settings import load_settings
from orchestrator.store.cells import cell_prefix, tie_order
from orchestrator.store.connection import is_cluster
from orchestrator.store.follows import FollowStore
from orchestrator.store.holdings import Holdings
from orchestrator.store.jobs import RedisStore
from orchestrator.store.listing import JobIndex
from orchestrator.store.live import LiveStore

from .cli_support import worker as finished

CELLS = 6


def test_each_cell_tag_lies_in_its_own_equal_slot_range() -> None:
    for count in (2, 6, 48, 256):
        for i in range(count):
            tag = cell_prefix("orch", i, count, cluster=True)
            assert tag.startswith("{orch:c") and tag.endswith("}")
            low = i * REDIS_CLUSTER_HASH_SLOTS // count
            high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count
            assert low <= key_slot(f"{tag}:job:x".encode()) < high
    assert cell_prefix("orch", 3, 6, cluster=False) == "orch:c3"


def test_ties_alternate_over_the_slot_ranges() -> None:
    order = tie_order(6)
    assert sorted(order) == list(range(6))
    # The first three placements land in three different thirds (three primaries).
    assert {cell * 3 // 6 for cell in order[:3]} == {0, 1, 2}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(primaries=3, replicas=0) as running:
        yield running


@pytest.fixture(params=["cluster", "redis"])
def store(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> Iterator[RedisStore]:
    url = request.getfixturevalue("cluster").url if request.param == "cluster" else redis_url
    s = RedisStore.from_url(url, key_prefix, cells=CELLS)
    yield s
    s.close()


def _submit(store: RedisStore, text: str, **fields: Any) -> str:
    job, _ = store.create_job(validate_submission(100, input=text, budget="low", **fields))
    return job.id


def test_a_tenants_jobs_share_its_cell_and_tenants_spread_evenly(store: RedisStore) -> None:
    cells = store.cells
    jobs = {f"t{i}": [_submit(store, "x", tags={"tenant": f"t{i}"}) for _ in range(3)]
            for i in range(30)}  # fmt: skip
    placed = {}
    for tenant, ids in jobs.items():
        assert len({cells.index_of_job(j) for j in ids}) == 1, tenant
        placed[tenant] = cells.index_of_job(ids[0])
        for job_id in ids:
            assert store.get_job(job_id) is not None
            k = cells.of_job(job_id)
            assert k == cells.keys[placed[tenant]]
            if is_cluster(store.r):  # the job's hash is in its cell's slot
                assert key_slot(k.job(job_id).encode()) == key_slot(k.jobs.encode())
    assert Counter(placed.values()) == dict.fromkeys(range(CELLS), 5)
    # A new process finds the same placements (kept in the control keys).
    again = RedisStore(store.r, store.keys.prefix.strip("{}"), cells=CELLS)
    assert all(again.cells.of_tenant(t) == c for t, c in placed.items())


def test_on_a_cluster_each_primary_holds_an_equal_share_of_the_cells(
    cluster: RedisCluster, key_prefix: str
) -> None:
    s = RedisStore.from_url(cluster.url, key_prefix, cells=CELLS)
    try:
        owners = Counter(
            cluster.primary_for_slot(key_slot(k.jobs.encode())).port for k in s.cells
        )
        assert sorted(owners.values()) == [2, 2, 2]
    finally:
        s.close()


def test_listing_pages_merge_the_cells_newest_first_with_one_cursor(store: RedisStore) -> None:
    ids = [_submit(store, f"job {i}", tags={"tenant": f"t{i % 7}"}) for i in range(40)]
    index = JobIndex(store)
    seen: list[str] = []
    page = index.page(index.index_key(tag=None, schedule_id=None), limit=7, scan=100)
    while True:
        seen += [j.id for j in page.jobs]
        if page.after is None or not page.jobs:
            break
        page = index.page(index.index_key(tag=None, schedule_id=None), limit=7, scan=100,
                          after=page.after)  # fmt: skip
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    created = [store.require_job(j).created_at for j in seen]
    assert created == sorted(created, reverse=True)
    assert store.recent_jobs(5) == seen[:5]
    tagged = index.page(index.index_key(tag=("tenant", "t3"), schedule_id=None), limit=50, scan=100)
    assert {j.id for j in tagged.jobs} == {j for i, j in enumerate(ids) if i % 7 == 3}
    assert store.job_states()["queued"] == 40


def test_costs_add_up_over_the_cells(store: RedisStore) -> None:
    posted, ids = [], []
    for i in range(12):
        job_id = _submit(store, "x", tags={"tenant": f"t{i % 4}"})
        ids.append(job_id)
        job, _ = store.begin_attempt(job_id)
        worker = finished(f"wrk_cells_{i}", ("0", "0.01", "0", "0"), 100)
        assert store.set_submitted(job, worker)
        posted.append(store.post_turn(store.require_job(job_id), worker, 1_700_000_000_000))
    assert all(p is not None for p in posted)
    total = store.costs("tag")["total"]
    assert total["turns"] == 12 and total["model_cost_micro"] == 12 * 10_000
    rows = {r["key"]: r for r in store.costs("tag")["rows"]}
    assert {k: r["turns"] for k, r in rows.items()} == {f"tenant=t{i}": 3 for i in range(4)}
    assert store.job_costs(limit=50)["total"] == total
    # A continue goes to its worker's cell, wherever its tenant lives.
    first = store.cells.index_of_job(ids[0])
    again = _submit(store, "more", kind="continue", worker_id="wrk_cells_0",
                    tags={"tenant": "elsewhere"})  # fmt: skip
    assert store.cells.index_of_job(again) == first
    assert Holdings(store).held([again]) == {again: ["outbox", "live"]}


def test_limits_spanning_tenants_are_refused_naming_the_key(store: RedisStore) -> None:
    budgets, limits = Budgets(store), Limits(store)
    for key in ("budget:high", "tag:team=a"):
        with pytest.raises(InputError) as caught:
            limits.set(key, 3)
        assert caught.value.field == "key" and "spans tenants" in str(caught.value)
    budgets.set_cap(scope="tag:tenant=acme", limit_usd="5")
    limits.set("tag:tenant=acme", 2)
    # Every cell holds the settings its scripts read.
    assert all(store.r.hlen(k.budget_caps) == 1 and store.r.hlen(k.limits) == 1
               for k in store.cells)  # fmt: skip
    assert [c.scope for c in budgets.caps()] == ["tag:tenant=acme"]
    assert limits.all() == {"tag:tenant=acme": 2}


def _turn(store: RedisStore, job_id: str, worker_id: str, usd: str) -> None:
    """The job's turn submitted and posted (its cost in its cell's ledger)."""
    job, _ = store.begin_attempt(job_id)
    worker = finished(worker_id, ("0", usd, "0", "0"), 10)
    assert store.set_submitted(job, worker)
    assert store.post_turn(store.require_job(job_id), worker, 1_700_000_000_000) is not None


def test_a_cap_spanning_tenants_holds_in_the_control_keys_and_counts_each_turn_once(
    store: RedisStore,
) -> None:
    """A global cap over jobs of four tenants in four cells: holds are taken against it
    in the control keys, so concurrent jobs of any cell never pass it together; each
    settled turn's cost counts there once (also when its settlement is finished by the
    reclaim after a crash), and a refused job holds nothing anywhere."""
    budgets = Budgets(store)  # holds: low $0.25
    budgets.set_cap(scope="global", limit_usd="1")
    budgets.set_cap(scope="tag:tenant=t0", limit_usd="0.3")
    jobs = [store.require_job(_submit(store, "x", tags={"tenant": f"t{i}"})) for i in range(4)]
    assert len({store.cells.index_of_job(j.id) for j in jobs}) == 4
    assert [budgets.reserve(j) for j in jobs] == [250_000] * 4
    late = store.require_job(_submit(store, "late", tags={"tenant": "t9"}))
    with pytest.raises(BudgetExceeded) as caught:
        budgets.reserve(late)
    assert caught.value.cap.scope == "global"
    assert Holdings(store).held([late.id]) == {late.id: ["outbox", "live"]}
    # A tenant cap refusing in the cell gives the control-keys hold back whole.
    second = store.require_job(_submit(store, "t0 again", tags={"tenant": "t0"}))
    budgets.release(jobs[3].id)  # room on the global cap again
    with pytest.raises(BudgetExceeded) as caught:
        budgets.reserve(second)
    assert caught.value.cap.scope == "tag:tenant=t0"
    assert "spanning_hold" not in Holdings(store).held([second.id]).get(second.id, [])

    _turn(store, jobs[0].id, "wrk_span_0", "0.10")
    batch = store.batch()
    raw = store.r.hget(store.cells.of_job(jobs[0].id).budget_holds, jobs[0].id)
    budgets.release_into(batch, jobs[0].id, raw)
    batch.execute()
    [cap] = [row for row in budgets.status() if row["scope"] == "global"]
    assert (cap["spent_micro"], cap["reserved_micro"]) == (100_000, 500_000)

    # A crash after the post, before the release: the reclaim settles it, once (and
    # gives back the hold of jobs[2], still queued: no turn of its runs).
    _turn(store, jobs[1].id, "wrk_span_1", "0.20")
    store.transition(jobs[1].id, "completed")
    assert budgets.reclaim(0) == 2
    assert budgets.reclaim(0) == 0
    [cap] = [row for row in budgets.status() if row["scope"] == "global"]
    assert (cap["spent_micro"], cap["reserved_micro"]) == (300_000, 0)
    assert store.costs("day")["total"]["model_cost_micro"] == 300_000
    # A crash between the control-keys hold and the cell's: the reclaim gives it back.
    orphan = store.require_job(_submit(store, "orphan", tags={"tenant": "t5"}))
    caps = [c for c in budgets.caps() if c.scope == "global"]
    assert budgets.spend.reserve(orphan.id, 250_000, 1, cap_holds(caps, 1), spanning=True) is None
    assert Holdings(store).held([orphan.id])[orphan.id][-2:] == [
        "spanning_hold", "spanning_hold_time"]
    budgets.reclaim(0)
    held = Holdings(store).anywhere()
    assert "spanning_hold" not in held and "budget_hold" not in held, held
    assert budgets.spend.reserved("global", "1970-01-01", spanning=True) == 0


def test_the_gateway_and_the_followers_work_across_the_cells(store: RedisStore) -> None:
    """The gateway's writer places jobs as the store does and pushes the relay's wake
    itself; the fan-out reads states and updates in each job's cell; a follower claims
    the follow requests of every cell."""
    url = _url_of(store)
    prefix = store.keys.prefix.strip("{}")

    async def gateway() -> tuple[list[str], dict[str, Any], list[str]]:
        live = LiveStore.from_url(url, prefix, CELLS)
        follows = FollowStore.from_url(url, prefix, cells=CELLS)
        try:
            writer = live.job_writer(wake=True)
            made = []
            for i in range(6):
                sub = validate_submission(100, input="g", budget="low", tags={"tenant": f"g{i}"})
                made.append((await writer.create_job(sub))[0].id)
            for i, job_id in enumerate(made):  # each turn begun, one update stored
                job, _ = store.begin_attempt(job_id)
                store.set_submitted(job, finished(f"wrk_g{i}", ("0", "0", "0", "0"), 1))
                store.append_updates(f"wrk_g{i}", 0, [f'{{"n":{i}}}'], job_id)
            states = await live.states(made)
            assert [s["worker_id"] for s in states] == [f"wrk_g{i}" for i in range(6)]
            got = await live.wait({f"wrk_g{i}": -1 for i in range(6)}, 2_000)
            claimed = await follows.claim("me", 10_000, 100)
            return made, got, claimed
        finally:
            await follows.close()
            await live.close()

    made, got, claimed = asyncio.run(gateway())
    assert {store.cells.index_of_job(j) for j in made} == set(range(CELLS))
    assert got == {f"wrk_g{i}": [(0, f'{{"n":{i}}}')] for i in range(6)}
    assert sorted(claimed) == sorted(made)  # put up for following by SUBMIT, in 6 cells
    # Woken once per job, on the one wake list, in the order they were made.
    assert store.wakes.take(1, 10) == made


def _url_of(store: RedisStore) -> str:
    if is_cluster(store.r):
        host, port = store.r.get_default_node().host, store.r.get_default_node().port
        return f"redis+cluster://{host}:{port}/"
    kwargs = store.r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_every_server_holding_a_cell_is_checked_and_measured(store: RedisStore) -> None:
    assert store.check_eviction_policy() == "noeviction"
    servers = store.servers()
    assert len(servers) == (3 if is_cluster(store.r) else 1)
    used, _ = store.memory_info()
    assert used >= sum(int(s.info("memory")["used_memory"]) for s in servers) // 2 > 0


@pytest.mark.parametrize("value", ["0", "257", "many"])
def test_store_cells_out_of_bounds_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(store_cells=value)
    assert caught.value.variable == "STORE_CELLS"


def test_the_memory_gauge_samples_every_cell_on_every_server(
    cluster: RedisCluster, key_prefix: str
) -> None:
    # On the module's cluster: few keys, so the gauge's bounded scan sees all of them.
    store = RedisStore.from_url(cluster.url, key_prefix, cells=CELLS)
    try:
        _gauge_every_cell(store)
    finally:
        store.close()


def _gauge_every_cell(store: RedisStore) -> None:
    for i in range(12):
        job_id = _submit(store, "x" * 90, tags={"tenant": f"m{i}"})
        job, _ = store.begin_attempt(job_id)
        store.set_submitted(job, finished(f"wrk_mem_{i}", ("0", "0", "0", "0"), 1))
        store.append_updates(f"wrk_mem_{i}", 0, ['{"n":0}', '{"n":1}'], job_id)
    sample = store.memory_sample()
    assert {"job", "worker", "updates"} <= {k for k, v in sample["kinds"].items() if v > 0}
    # The jobs are in six cells: seen only if every cell's server was sampled.
    used = sum(int(s.info("memory")["used_memory"]) for s in store.servers())
    assert sample["used_memory"] >= used // 2 > 0
    assert len({store.cells.index_of_job(j) for j in store.recent_jobs(50)}) == CELLS
