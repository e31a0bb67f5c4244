"""The deployment files the deploy tests read: where they are, the services and
variables they should hold, and their parsed YAML and `orchestrator` argvs."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import build_parser
from orchestrator.settings import Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deployment files")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
REDIS_CONF = ROOT / "deploy" / "redis.conf"
K8S = ROOT / "deploy" / "k8s"
SERVICES = {
    "redis", "emulator", "worker-api", "worker-streams", "beat", "flower", "metrics", "gateway",
}
# Servers of the optional topologies (profiles rabbitmq, sentinel, cluster), not our image.
TOPOLOGY_SERVICES = {
    "rabbitmq", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3",
    "redis-cluster-init", *(f"redis-node-{i}" for i in range(1, 7)),
}
TOPOLOGIES = K8S / "topologies"

SETTINGS = {name.upper() for name in Settings.model_fields}
# Variables read by something other than Settings, or by compose/docker/Kubernetes.
NOT_SETTINGS = {
    "REDIS_PASSWORD",  # compose: redis --requirepass and REDIS_URL (a setting too)
    "COMPOSE_REDIS_URL",  # compose: REDIS_URL in the sentinel and cluster profiles
    "REDISCLI_AUTH",  # redis-cli's password, in the cluster profile's init
    "RABBITMQ_DEFAULT_USER",  # compose: the rabbitmq image
    "RABBITMQ_DEFAULT_PASS",
    "RABBITMQ_DEFAULT_VHOST",
    "FLOWER_BASIC_AUTH",  # built by `orchestrator flower` from FLOWER_USER/PASSWORD
    "FLOWER_COOKIE_SECRET",  # read by Flower itself
    "EMULATOR_API_KEY",  # `orchestrator emulator`
    "COMPOSE_PROFILES",  # docker compose
    "ORCHESTRATOR_IMAGE",  # docker-compose.yml
    "POD_NAME",  # Kubernetes downward API, for the Celery node name
    "PROMETHEUS_MULTIPROC_DIR",  # prometheus_client's multiprocess mode
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PYTHON_IMAGE",  # Dockerfile ARG
}
SECRET_NAMES = re.compile(r"(PASSWORD|API_KEY|SECRET|TOKEN)$|^REDIS_URL$")
# Commands other work registers; listed so this test holds while that lands.
PENDING_COMMANDS = {"beat"}


def manifests(folder: Path = K8S) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object of the folder's YAML files, with the file it is in."""
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def objects(folder: Path = K8S) -> dict[tuple[str, str], dict[str, Any]]:
    """The folder's objects by kind and name."""
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in manifests(folder)}


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def cli_commands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("the CLI has no subcommands")


def orchestrator_argvs() -> list[tuple[str, list[str]]]:
    """Every argv (after `orchestrator`) that the deployment files run."""
    found: list[tuple[str, list[str]]] = []
    for name, svc in compose()["services"].items():
        if svc.get("image", "").startswith(("redis:", "rabbitmq:")):
            continue
        found.append((f"compose {name}", [str(a) for a in svc["command"]]))
        test = svc["healthcheck"]["test"]
        if test[1] == "orchestrator":
            found.append((f"compose {name} healthcheck", test[2:]))
    for path, doc in manifests():
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            where = f"{path.name} {container['name']}"
            found.append((where, container["args"]))
            for probe in ("livenessProbe", "readinessProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command", [])
                if command[:1] == ["orchestrator"]:
                    found.append((f"{where} {probe}", command[1:]))
    return found


OWN_METRICS = ("worker-api", "worker-streams", "beat", "gateway")
POOLED = {"worker-api", "gateway"}  # prefork, serve --workers 2: child processes


def metrics_options(args: list[str]) -> tuple[str, str]:
    """The --metrics-port and --metrics-address a command line gives."""
    parsed = build_parser().parse_args(args)
    return str(parsed.metrics_port), parsed.metrics_address
