"""The Kubernetes manifests under deploy/k8s, checked offline: every object named and in
its namespace, the workloads' probes, resources and secrets, the autoscaler's metrics,
the optional topologies (RabbitMQ, Sentinel, Redis Cluster), and each pod's own metrics
port annotated for Prometheus."""

from __future__ import annotations

import re

from .deploy_files import (
    K8S,
    OWN_METRICS,
    POOLED,
    ROOT,
    TOPOLOGIES,
    manifests,
    metrics_options,
    objects,
    yaml,
)


def test_kubernetes_topology_manifests() -> None:
    docs = objects(TOPOLOGIES)
    kustomization = docs[("Kustomization", "orchestrator-topologies")]
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in TOPOLOGIES.glob("*.yaml")} - {"kustomization.yaml"}
    for (kind, name), doc in docs.items():
        if kind != "Kustomization":
            assert doc["metadata"]["namespace"] == "orchestrator", (kind, name)
    rabbit = docs[("RabbitmqCluster", "rabbitmq")]["spec"]
    assert rabbit["replicas"] == 3  # a quorum queue survives one node of three
    assert "default_queue_type = quorum" in rabbit["rabbitmq"]["additionalConfig"]
    redis = docs[("StatefulSet", "redis")]["spec"]
    assert redis["replicas"] == 3
    scripts = docs[("ConfigMap", "redis-sentinel-scripts")]["data"]
    assert "sentinel monitor orchestrator redis-0.redis.orchestrator.svc 6379 2" in (
        scripts["sentinel.sh"]
    )
    assert "maxmemory-policy noeviction" in scripts["redis.sh"]
    for container in redis["template"]["spec"]["containers"]:
        # The password reaches the servers from the Secret, by the environment.
        assert all("PASSWORD" not in arg for arg in container["command"])
        refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
        assert refs == {"REDIS_PASSWORD"}
        assert container["resources"]["limits"] and container["readinessProbe"]
    assert docs[("Service", "redis")]["spec"]["clusterIP"] == "None"
    assert docs[("Service", "redis-sentinel")]["spec"]["ports"][0]["port"] == 26379


def test_kubernetes_redis_cluster_manifests() -> None:
    folder = TOPOLOGIES / "redis-cluster"
    docs = objects(folder)
    listed = set(docs[("Kustomization", "orchestrator-redis-cluster")]["resources"])
    assert listed == {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    nodes = docs[("StatefulSet", "redis-cluster")]["spec"]
    assert nodes["replicas"] == 6  # three primaries, a replica each
    scripts = docs[("ConfigMap", "redis-cluster-scripts")]["data"]
    assert "cluster-enabled yes" in scripts["node.sh"]
    assert "maxmemory-policy noeviction" in scripts["node.sh"]
    assert "--cluster-replicas 1" in scripts["create.sh"]
    job = docs[("Job", "redis-cluster-create")]["spec"]["template"]["spec"]
    for container in [*nodes["template"]["spec"]["containers"], *job["containers"]]:
        assert all("PASSWORD" not in arg for arg in container["command"])
        refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
        assert refs == {"REDIS_PASSWORD"}
        assert container["resources"]["limits"]
    service = docs[("Service", "redis-cluster")]["spec"]
    assert service["clusterIP"] == "None"
    assert {port["port"] for port in service["ports"]} == {6379, 16379}  # clients, bus
    for (kind, name), doc in docs.items():
        if kind != "Kustomization":
            assert doc["metadata"]["namespace"] == "orchestrator", (kind, name)


# --- Kubernetes -------------------------------------------------------------------------


def test_every_manifest_is_a_named_kubernetes_object() -> None:
    kinds: dict[str, set[str]] = {}
    for path, doc in manifests():
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        assert doc.get("metadata", {}).get("name"), f"{path.name}: no metadata.name"
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"].get("namespace") == "orchestrator", path.name
        kinds.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    assert kinds["Deployment"] == {
        "worker-api", "worker-streams", "beat", "flower", "metrics", "gateway",
    }  # fmt: skip
    assert kinds["Service"] == {"flower", "metrics", "gateway"}
    assert kinds["HorizontalPodAutoscaler"] >= {"worker-api"}
    assert {"Namespace", "ConfigMap", "Secret"} <= set(kinds)


def test_kubernetes_workloads() -> None:
    docs = objects()
    for name in ("worker-api", "worker-streams", "beat", "flower", "metrics", "gateway"):
        pod = docs[("Deployment", name)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            assert c.get("livenessProbe") and c.get("readinessProbe"), name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            refs = {next(iter(ref.values()))["name"] for ref in c["envFrom"]}
            assert refs == {"orchestrator-config", "orchestrator-secrets"}, name
    for name in ("worker-api", "worker-streams"):
        probe = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        liveness = " ".join(probe["livenessProbe"]["exec"]["command"])
        assert 'inspect ping -d "celery@$POD_NAME"' in liveness
        assert "celery@$(POD_NAME)" in probe["args"]
    assert docs[("Deployment", "beat")]["spec"]["replicas"] == 2
    assert docs[("Service", "flower")]["spec"]["type"] == "ClusterIP"
    gateway = docs[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["args"][:3] == ["serve", "--host", "0.0.0.0"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert docs[("Service", "gateway")]["spec"]["type"] == "ClusterIP"
    annotations = docs[("Service", "metrics")]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9808"
    hpa = docs[("HorizontalPodAutoscaler", "worker-api")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "worker-api"
    external = hpa["metrics"][0]
    assert external["type"] == "External"
    assert external["external"]["metric"]["selector"]["matchLabels"] == {"queue": "api"}
    kustomization = docs[("Kustomization", "orchestrator")]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.template.yaml"}  # the real Secret is made apart


def exported_source() -> str:
    """The modules that define every exported series: instruments and the collector."""
    ops = ROOT / "orchestrator" / "ops"
    return (ops / "instruments.py").read_text() + (ops / "collector.py").read_text()


def test_adapter_rules_define_the_hpa_metrics() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "prometheus" / "adapter-values.yaml").read_text())
    names = {
        rule["name"].get("as") or rule["name"]["matches"].strip("^$")
        for rule in values["rules"]["external"]
    }
    wanted = {
        m["external"]["metric"]["name"]
        for _, doc in manifests()
        if doc["kind"] == "HorizontalPodAutoscaler"
        for m in doc["spec"]["metrics"]
    }
    assert wanted <= names
    exported = exported_source()
    for rule in values["rules"]["external"]:
        for series in re.findall(r"orchestrator_[a-z_]+", rule["metricsQuery"]):
            assert f'"{series}"' in exported, f"{series} is not exported"


def test_operations_doc_names_every_metric() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    exported = set(
        re.findall(r'"(orchestrator_[a-z_]+)"', exported_source())
    )
    missing = sorted(name for name in exported if name not in doc)
    assert not missing, f"docs/operations.md does not mention {missing}"


def test_kubernetes_pods_are_scraped_on_their_metrics_port() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests()}
    for name in OWN_METRICS:
        template = docs[("Deployment", name)]["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/path"] == "/metrics", name
        container = template["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        port, address = metrics_options(container["args"])
        assert annotations["prometheus.io/port"] == port == str(ports["metrics"]), name
        assert address == "0.0.0.0", name
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        if name in POOLED:
            assert env["PROMETHEUS_MULTIPROC_DIR"] == mounts["metrics"] == "/run/metrics"
            assert volumes["metrics"] == {"name": "metrics", "emptyDir": {}}
        else:
            assert "PROMETHEUS_MULTIPROC_DIR" not in env, name
