"""The deployment files, checked offline: docker-compose.yml, .env.example, the
Dockerfile and deploy/redis.conf (run by a real redis-server when one >= 7 is here); the
Kubernetes manifests in tests/test_deploy_kubernetes.py. Every `orchestrator` command
the files run must parse with the real CLI, every variable they set must be a setting
(or a known non-setting), and no secret value may be committed."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import build_parser
from orchestrator.ops.redis_server import find_redis_server, free_port
from orchestrator.store.retention import SERVER_CONFIG

from .deploy_files import (
    COMPOSE,
    DOCKERFILE,
    ENV_EXAMPLE,
    NOT_SETTINGS,
    OWN_METRICS,
    PENDING_COMMANDS,
    POOLED,
    REDIS_CONF,
    ROOT,
    SECRET_NAMES,
    SERVICES,
    SETTINGS,
    TOPOLOGY_SERVICES,
    cli_commands,
    compose,
    manifests,
    metrics_options,
    orchestrator_argvs,
)

# --- docker-compose.yml -------------------------------------------------------------


def test_compose_services_and_policies() -> None:
    data = compose()
    services = data["services"]
    assert set(services) == SERVICES | TOPOLOGY_SERVICES
    assert set(data["volumes"]) >= {"redis-data"}
    for name, svc in services.items():
        if name == "redis-cluster-init":  # a one-shot: it joins the nodes and exits
            continue
        assert svc.get("restart") == "unless-stopped", name
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        if name not in {"redis"} | TOPOLOGY_SERVICES:
            assert svc["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
            assert svc["env_file"] == ".env", name
            url = svc["environment"]["REDIS_URL"]
            assert url.startswith("${COMPOSE_REDIS_URL:-redis://:${REDIS_PASSWORD"), url
            assert url.endswith("@redis:6379/0}")
    assert services["emulator"]["profiles"] == ["emulator"]
    for name in SERVICES - {"redis", "emulator"}:
        # The emulator is optional: nothing fails when its profile is off.
        dep = services[name]["depends_on"]
        assert dep["redis"]["condition"] == "service_healthy"
        assert dep["emulator"]["required"] is False
    for name in ("flower", "metrics", "gateway"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    assert not any("ports" in services[n] for n in SERVICES - {"flower", "metrics", "gateway"})
    assert services["gateway"]["command"][:3] == ["serve", "--host", "0.0.0.0"]
    cmd = {n: services[n]["command"] for n in ("worker-api", "worker-streams")}
    api = ["worker", "--queues", "api", "--pool", "prefork", "--concurrency", "4"]
    assert cmd["worker-api"][:7] == api
    assert cmd["worker-streams"][:5] == ["worker", "--queues", "streams", "--pool", "threads"]
    assert services["flower"]["command"][:3] == ["flower", "--address", "0.0.0.0"]


def test_compose_serves_each_process_metrics_on_its_network() -> None:
    services = compose()["services"]
    for name in OWN_METRICS:
        svc = services[name]
        assert metrics_options(svc["command"]) == ("9809", "0.0.0.0"), name
        # Multiprocess mode, in a directory empty at each start, where work runs in children.
        multiproc = svc["environment"].get("PROMETHEUS_MULTIPROC_DIR")
        assert (multiproc, svc.get("tmpfs")) == (
            ("/run/metrics", ["/run/metrics"]) if name in POOLED else (None, None)
        ), name


def test_compose_redis_is_durable_and_password_protected() -> None:
    redis = compose()["services"]["redis"]
    assert redis["image"] == "redis:7-alpine"
    script = " ".join(redis["command"])
    assert "redis-server /usr/local/etc/redis/redis.conf -" in script
    assert "requirepass $$REDIS_PASSWORD" in script  # from the container's env, on stdin
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "./deploy/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]
    assert any(v.startswith("redis-data:") for v in redis["volumes"])
    health = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli ping" in health and "REDISCLI_AUTH" in health


def test_compose_topology_profiles() -> None:
    services = compose()["services"]
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    rabbit_env = services["rabbitmq"]["environment"]
    assert rabbit_env["RABBITMQ_DEFAULT_PASS"].startswith("${BROKER_PASSWORD:?")
    sentinels = [services[f"sentinel-{i}"] for i in (1, 2, 3)]
    for svc in [services["redis-replica"], *sentinels]:
        assert svc["profiles"] == ["sentinel"]
        assert svc["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    replica = " ".join(services["redis-replica"]["command"])
    assert "replicaof redis 6379" in replica and "masterauth $$REDIS_PASSWORD" in replica
    script = " ".join(sentinels[0]["command"])
    assert "sentinel monitor orchestrator redis 6379 2" in script  # quorum 2 of 3
    assert "auth-pass orchestrator $$REDIS_PASSWORD" in script  # expanded in the container
    for name in SERVICES - {"redis", "emulator"}:
        deps = services[name]["depends_on"]
        assert deps["rabbitmq"]["required"] is False and deps["sentinel-1"]["required"] is False
        init = deps["redis-cluster-init"]
        assert init == {"condition": "service_completed_successfully", "required": False}


def test_compose_cluster_profile() -> None:
    services = compose()["services"]
    nodes = [services[f"redis-node-{i}"] for i in range(1, 7)]
    for i, node in enumerate(nodes, start=1):
        assert node["profiles"] == ["cluster"] and node["hostname"] == f"redis-node-{i}"
        assert node["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
        script = " ".join(node["command"])
        assert "cluster-enabled yes" in script and "masterauth $$REDIS_PASSWORD" in script
        assert "PASSWORD" not in script.split("<<EOF")[0]  # on stdin, not the command line
        assert f"redis-node-{i}-data:/data" in node["volumes"]
    init = services["redis-cluster-init"]
    assert init["profiles"] == ["cluster"] and init["restart"] == "no"
    create = " ".join(init["command"])
    assert "--cluster-replicas 1" in create and "PASSWORD" not in create
    assert all(f"redis-node-{i}:6379" in create for i in range(1, 7))
    assert init["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert set(init["depends_on"]) == {f"redis-node-{i}" for i in range(1, 7)}


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = docker and subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=60
    )
    if not probe or probe.returncode != 0:
        pytest.skip("no `docker compose` client here (PyYAML checks above still ran)")
    # A copy with .env made from .env.example, so the real .env is never needed here.
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    profiles = (
        [], ["--profile", "emulator"], ["--profile", "rabbitmq"], ["--profile", "sentinel"],
        ["--profile", "cluster"],
    )  # fmt: skip
    for profile in profiles:
        result = subprocess.run(
            [docker, "compose", *profile, "config", "-q"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


# --- commands and variables -----------------------------------------------------------


def test_every_orchestrator_command_used_parses_with_the_cli() -> None:
    known = cli_commands()
    parser = build_parser()
    argvs = orchestrator_argvs()
    assert len(argvs) >= 15
    used = {argv[0] for _, argv in argvs}
    assert used >= {"emulator", "worker", "beat", "flower", "metrics", "health", "serve"}
    for where, argv in argvs:
        command = argv[0]
        assert command in known | PENDING_COMMANDS, f"{where}: no command {command!r}"
        if command in known:
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{where}: `orchestrator {' '.join(argv)}` does not parse")
    entrypoint = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("ENTRYPOINT")]
    assert entrypoint == ['ENTRYPOINT ["orchestrator"]']


def compose_variables() -> set[str]:
    text = COMPOSE.read_text()
    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    names |= set(re.findall(r"\$\$([A-Z_][A-Z0-9_]*)", text))
    for svc in compose()["services"].values():
        names |= set(svc.get("environment", {}))
    return names


def env_example() -> dict[str, str]:
    """NAME -> value of every line `NAME=value` or `# NAME=value` in .env.example."""
    pairs = re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M)
    return dict(pairs)


def manifest_variables() -> set[str]:
    names: set[str] = set()
    for _, doc in manifests():
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
        elif doc["kind"] == "Secret":
            names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
        elif doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in container.get("env", [])}
    return names


def dockerfile_variables() -> set[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    names = set(re.findall(r"^ARG\s+([A-Z_][A-Z0-9_]*)", text, re.M))
    for line in re.findall(r"^ENV\s+(.*)$", text, re.M):
        names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line))
    return names


def env_example_variables() -> set[str]:
    return set(env_example())


@pytest.mark.parametrize(
    "source",
    [compose_variables, env_example_variables, manifest_variables, dockerfile_variables],
)
def test_every_variable_is_a_setting_or_a_known_other(source: Any) -> None:
    names = source()
    assert names, "found no variables"
    unknown = sorted(names - SETTINGS - NOT_SETTINGS)
    assert not unknown, f"not settings: {unknown}"


def test_env_example_lists_every_setting() -> None:
    missing = sorted(SETTINGS - set(env_example()))
    assert not missing, f".env.example lacks {missing}"


def test_kubernetes_config_covers_what_the_workers_need() -> None:
    names = manifest_variables()
    assert {"REDIS_URL", "WORKERS_API_URL", "WORKERS_API_KEY", "FLOWER_PASSWORD"} <= names
    for _, doc in manifests():
        if doc["kind"] == "ConfigMap":
            secret = sorted(n for n in doc["data"] if SECRET_NAMES.search(n))
            assert not secret, f"secrets belong in the Secret, not the ConfigMap: {secret}"


# --- no committed secrets -------------------------------------------------------------


def test_no_secret_values_are_committed() -> None:
    secrets = [doc for _, doc in manifests() if doc["kind"] == "Secret"]
    assert secrets, "expected the Secret template"
    for doc in secrets:
        assert "data" not in doc, "base64 data could hide a real value: use stringData"
        for name, value in doc["stringData"].items():
            assert "PLACEHOLDER" in value, f"Secret {name} is not a placeholder"
    for name, value in env_example().items():
        if SECRET_NAMES.search(name):
            assert "change-me" in value, f".env.example {name} is not a placeholder"
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text().split()
    text = DOCKERFILE.read_text()
    baked = re.findall(r"^(?:ENV|ARG)\s+.*(PASSWORD|API_KEY|SECRET|TOKEN|REDIS_URL)", text, re.M)
    assert not baked, f"Dockerfile bakes in {baked}"
    compose_text = COMPOSE.read_text()
    assert not re.search(r"(PASSWORD|API_KEY|SECRET)\s*[:=]\s*[\"']?[A-Za-z0-9]", compose_text)


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_runs_as_non_root_from_slim_python() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()]
    users = [ln.split(None, 1)[1] for ln in lines if ln.startswith("USER ")]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"runs as {users[-1]}"
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in lines
    assert any(ln.startswith("RUN pip wheel") and ln.endswith(" .") for ln in lines)
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [ln for ln in ignore if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*"  # the context holds only what is listed after it: no .env
    assert ".env" not in "".join(rules)


# --- deploy/redis.conf --------------------------------------------------------------------


def redis_conf() -> dict[str, str]:
    pairs = {}
    for line in REDIS_CONF.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            pairs[key] = value
    return pairs


REDIS_CHOICES = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
    "protected-mode": "yes",
    "no-appendfsync-on-rewrite": "no",
}


def test_redis_conf_choices() -> None:
    conf = redis_conf()
    assert {k: conf.get(k) for k in REDIS_CHOICES} == REDIS_CHOICES
    # What the embedded server runs with, the deployed one does too.
    assert {k: conf.get(k) for k in SERVER_CONFIG} == SERVER_CONFIG
    assert "requirepass" not in conf


def test_redis_conf_runs_on_a_real_server(tmp_path: Path) -> None:
    try:
        binary = find_redis_server()
    except Exception:
        pytest.skip("no redis-server here")
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    major = re.search(r"v=(\d+)\.", version)
    if not major or int(major.group(1)) < 7:
        pytest.skip(f"the conf targets redis:7; this is {version.strip()}")
    conf = REDIS_CONF.read_text().replace("dir /data", f"dir {tmp_path}")
    (tmp_path / "redis.conf").write_text(conf)
    port = free_port()
    proc = subprocess.Popen(
        [binary, str(tmp_path / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"requirepass s3cret-test\n")
    proc.stdin.close()
    import redis

    try:
        client = redis.Redis(port=port, password="s3cret-test", decode_responses=True)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "redis-server refused deploy/redis.conf"
                time.sleep(0.05)
        assert {k: client.config_get(k)[k] for k in REDIS_CHOICES} == REDIS_CHOICES
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
