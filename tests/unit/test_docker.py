"""docker/: the compose file, the image and its lock file, read as the files they are (no Docker engine here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from indexer.settings import ApiSettings

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    tests = {name: " ".join(s["healthcheck"]["test"]) for name, s in services.items() if "healthcheck" in s}
    assert set(tests) == {"redis", "postgres", "worker", "beat", "flower", "api"}
    assert 'celery -A tasks inspect ping --destination "worker@$$HOSTNAME"' in tests["worker"]
    assert "-n worker@%h" in " ".join(services["worker"]["command"])  # the name the ping asks for
    assert "/data/beat/celerybeat-schedule" in tests["beat"]
    assert "--schedule /data/beat/celerybeat-schedule" in " ".join(services["beat"]["command"])
    assert "http://127.0.0.1:5555/healthcheck" in tests["flower"]
    assert "http://127.0.0.1:8000/healthz" in tests["api"]
    assert services["api"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    for name in ("worker", "beat"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def test_no_url_or_password_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    # The only URL allowed: the healthcheck's, on the container's own loopback.
    text = _strings({k: v for k, v in compose.items() if k != "services"}) + _strings(
        [{k: v for k, v in service.items() if k != "healthcheck"} for service in compose["services"].values()])
    assert not [s for s in text if re.search(r"\b(redis|postgresql(\+\w+)?|https?|amqp)://", s)]
    secrets = {f"{name}.{key}": value for name, service in compose["services"].items()
               for key, value in (service.get("environment") or {}).items()
               if re.search("PASSWORD|AUTH|SECRET|TOKEN", key)}
    assert set(secrets) == {"redis.REDISCLI_AUTH", "postgres.POSTGRES_PASSWORD", "flower.FLOWER_BASIC_AUTH"}
    assert all(re.fullmatch(r"\$\{\w+:\?[^}]*\}", value) for value in secrets.values()), secrets  # required
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert services["redis"]["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert "--requirepass" in " ".join(services["redis"]["command"])
    assert services["flower"]["environment"]["CELERY_BROKER_URL"].startswith("${PCRS_INDEXER_BROKER_URL:?")
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    # Ports are published on an address the operator chooses, this machine only by default.
    for name in ("redis", "postgres", "flower", "api"):
        (port,) = services[name]["ports"]
        assert port.startswith(f"${{{name.upper()}_BIND:-127.0.0.1}}:")


def test_every_setting_reaches_the_containers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("migrate", "worker", "beat", "cli", "api"):
        assert services[name]["env_file"] == ".env", name
        assert "environment" not in services[name], name  # nothing set behind the env file's back
    example = (DOCKER / "env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^#? ?(PCRS_INDEXER_[A-Z0-9_]+)=", example, flags=re.M))
    assert named == {f"PCRS_INDEXER_{field.upper()}" for field in ApiSettings.model_fields}
    for variable in re.findall(r"\$\{(\w+):\?", (DOCKER / "compose.yaml").read_text(encoding="utf-8")):
        assert re.search(rf"^{variable}=", example, flags=re.M), variable  # every required one is in the example


def test_the_output_volume_is_writable_by_the_image_user(compose: dict[str, Any]) -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    final = dockerfile[dockerfile.rindex("FROM "):]
    assert "useradd --system --uid 10001" in final and "USER pcrs" in final
    assert "mkdir -p /data/outputs /data/beat && chown -R pcrs:pcrs /data" in final
    assert "outputs:/data/outputs" in compose["x-indexer"]["volumes"]
    assert compose["services"]["beat"]["volumes"] == ["beat:/data/beat"]


def test_the_image_installs_the_lock_file() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY docker/requirements.lock ./requirements.lock" in dockerfile
    assert "pip install --no-deps -r requirements.lock" in dockerfile
    assert "pip install --no-deps . && /opt/venv/bin/pip check" in dockerfile
    assert "!docker/requirements.lock" in (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    pinned = {}
    for line in (DOCKER / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pinned[requirement.name.lower().replace("_", "-")] = spec.version
    project = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not in docker/requirements.lock"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} does not meet {requirement}"
    assert "pcrs-indexer" not in pinned
