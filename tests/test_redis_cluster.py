"""The Redis Cluster harness (``orchestrator/ops/redis_cluster.py``): a real 3-primary
cluster with a replica each on free ports, a cluster client's keys spread over its
primaries, a primary SIGKILLed and its replica promoted with the replicated keys intact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient

from orchestrator.ops.redis_cluster import RedisCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(primaries=3, replicas=1) as running:
        yield running


def _client(cluster: RedisCluster) -> ClusterClient:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    return ClusterClient(startup_nodes=nodes, decode_responses=True)


def test_every_slot_is_served_by_one_of_three_primaries_each_with_a_replica(
    cluster: RedisCluster,
) -> None:
    primaries = cluster.primaries()
    assert len(primaries) == 3 and len(cluster.live()) == 6
    for primary in primaries:
        assert cluster.replicas_in_sync(primary.port)


def test_keys_spread_and_survive_a_killed_primary(cluster: RedisCluster) -> None:
    client = _client(cluster)
    try:
        for i in range(3000):
            client.set(f"k:{{tenant-{i % 100}}}:{i}", str(i))
        counts = [int(node.redis_connection.dbsize()) for node in client.get_primaries()]
        assert sum(counts) == 3000 and max(counts) / min(counts) <= 1.5, counts
        # Replication is asynchronous: wait until the doomed primary's replica has it all.
        victim = cluster.primary_for_slot(0)
        doomed = client.get_node(host="127.0.0.1", port=victim.port)
        assert doomed is not None
        assert int(doomed.redis_connection.execute_command("WAIT", 1, 5000)) == 1
        old = cluster.kill_primary(slot=0)
        new = cluster.wait_failover(old, slot=0)
        assert new != old and new in {node.port for node in cluster.live()}
    finally:
        client.close()
    client = _client(cluster)
    try:
        values = [client.get(f"k:{{tenant-{i % 100}}}:{i}") for i in range(3000)]
        assert values == [str(i) for i in range(3000)]
        assert sum(int(n.redis_connection.dbsize()) for n in client.get_primaries()) == 3000
    finally:
        client.close()
