"""Static checks of docker-compose.yml (no Docker engine here: `docker compose config` and
`up` cannot run). Schema: the compose-spec schema bundled with check-jsonschema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import ROOT, load_yaml, machine_tool, output, run, venv_tool

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def seconds(duration: str) -> float:
    """A compose duration such as 45s, 1m30s."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration}"
    return sum(float(value) * units[unit] for value, unit in parts)


def test_compose_file_matches_the_compose_spec():
    """check-jsonschema validates docker-compose.yml against the compose-spec schema."""
    done = run([venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE])
    assert done.returncode == 0, output(done)


def test_compose_schema_check_rejects_a_bad_file(tmp_path: Path):
    """Control: the same check fails a service with an unknown key and a bad port type."""
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  web:\n    image: nginx:1.27\n    prots: [80]\n    cpus: {}\n")
    done = run([venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", bad])
    assert done.returncode != 0


def test_gateway_per_profile_builds_the_matching_target(compose):
    """Profile cpu builds the Dockerfile's cpu target, profile gpu the cuda target and
    reserves an NVIDIA GPU; both answer as "gateway" on the network."""
    services = compose["services"]
    by_profile = {
        profile: name for name, svc in services.items() for profile in svc.get("profiles", [])
    }
    assert set(by_profile) == {"cpu", "gpu"}
    expected = {"cpu": "cpu", "gpu": "cuda"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    for profile, target in expected.items():
        svc = services[by_profile[profile]]
        assert svc["build"]["target"] == target
        assert re.search(rf"^FROM \S+ AS {target}$", dockerfile, re.MULTILINE)
        assert "gateway" in svc["networks"]["default"]["aliases"]
    devices = services[by_profile["gpu"]]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in services[by_profile["cpu"]]


def test_gateway_uses_redis_and_drains_before_kill(compose):
    """RATE_LIMIT_STORAGE points at the redis service; stop_grace_period is longer than
    SHUTDOWN_GRACE_S, so Docker's SIGKILL never cuts the drain short."""
    services = compose["services"]
    for name in ("gateway-cpu", "gateway-gpu"):
        svc = services[name]
        env = svc["environment"]
        storage = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", env["RATE_LIMIT_STORAGE"])
        assert storage and storage.group(1) in services
        assert storage.group(2) == "6379"
        assert seconds(svc["stop_grace_period"]) >= float(env["SHUTDOWN_GRACE_S"]) + 10
        assert env["HOST"] == "0.0.0.0"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"]


def prometheus_config(compose: dict[str, Any]) -> dict[str, Any]:
    mount = next(c for c in compose["services"]["prometheus"]["configs"])
    return yaml.safe_load(compose["configs"][mount["source"]]["content"])


def test_prometheus_scrapes_the_gateway_and_loads_the_alerts(compose):
    """The inline Prometheus config scrapes gateway:8000 as job llm-gateway (the job the alert
    GatewayTargetDown names) and loads alerts/ from where compose mounts it."""
    config = prometheus_config(compose)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    alert_jobs = set(re.findall(r'job="([^"]+)"', (ROOT / "alerts/gateway-rules.yml").read_text()))
    assert alert_jobs and alert_jobs <= set(jobs)
    targets = jobs["llm-gateway"]["static_configs"][0]["targets"]
    assert targets == ["gateway:8000"]
    volumes = compose["services"]["prometheus"]["volumes"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in volumes)}
    for rule_file in config["rule_files"]:
        directory, _, name = rule_file.rpartition("/")
        assert directory in mounts, f"{rule_file} is not under a mounted directory"
        assert (ROOT / mounts[directory] / name).is_file()


def test_prometheus_config_passes_promtool(compose, tmp_path: Path):
    """promtool check config accepts the inline config with its rule file (alerts/ copied
    to where the config expects it)."""
    promtool = machine_tool("promtool", "`python dev.py test` installs Debian's prometheus")
    config = prometheus_config(compose)
    local_rules = []
    for rule_file in config["rule_files"]:
        name = rule_file.rpartition("/")[2]
        (tmp_path / name).write_text((ROOT / "alerts" / name).read_text())
        local_rules.append(name)
    config["rule_files"] = local_rules
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path)
    assert done.returncode == 0, output(done)


def test_grafana_is_provisioned_from_infra(compose):
    """Grafana mounts infra/grafana's provisioning and dashboards at the paths those files
    expect, and the datasource URL names the prometheus service."""
    grafana = compose["services"]["grafana"]
    mounts = {
        source: target
        for source, target, *_ in (v.split(":") for v in grafana["volumes"])
        if source.startswith("./")
    }  # fmt: skip
    prov = "./infra/grafana/provisioning"
    assert mounts[f"{prov}/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts[f"{prov}/dashboards"] == "/etc/grafana/provisioning/dashboards"
    providers = load_yaml(ROOT / "infra/grafana/provisioning/dashboards/llm-gateway.yml")
    assert mounts["./infra/grafana/dashboards"] == providers["providers"][0]["options"]["path"]
    datasources = load_yaml(ROOT / "infra/grafana/provisioning/datasources/prometheus.yml")
    host = re.match(r"https?://([\w-]+):", datasources["datasources"][0]["url"])
    assert host and host.group(1) in compose["services"]


def test_bind_mounts_exist_and_ports_stay_local(compose):
    """Every ./ bind mount names a path in the repo; every published port binds 127.0.0.1."""
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published widely"


def test_open_webui_talks_to_the_gateway_with_a_key_from_the_environment(compose):
    """Open WebUI's OpenAI base URL is the gateway's network alias and PORT under /v1; its key
    is interpolated from the environment (.env), never written in the file; Ollama is off;
    it waits for whichever gateway profile runs without requiring either."""
    services = compose["services"]
    webui = services["open-webui"]
    env = webui["environment"]
    gateway = services["gateway-cpu"]
    url = re.fullmatch(r"http://([\w-]+):(\d+)/v1", env["OPENAI_API_BASE_URL"])
    assert url, env["OPENAI_API_BASE_URL"]
    assert url.group(1) in gateway["networks"]["default"]["aliases"]
    assert url.group(2) == gateway["environment"]["PORT"]
    assert re.fullmatch(r"\$\{OPEN_WEBUI_API_KEY:-[^}]*\}", env["OPENAI_API_KEY"])
    assert env["ENABLE_OLLAMA_API"] == "false"
    waits = webui["depends_on"]
    assert set(waits) == {"gateway-cpu", "gateway-gpu"}
    assert all(dep["required"] is False for dep in waits.values())
    assert "profiles" not in webui, "it runs with either gateway profile"
    assert re.search(r"@sha256:[0-9a-f]{64}$", webui["image"])


def test_compose_and_kubernetes_run_the_same_patched_redis(compose):
    """The compose Redis is the image Kubernetes runs (infra/k8s/base/redis.yaml), by digest."""
    docs = [d for d in yaml.safe_load_all((ROOT / "infra/k8s/base/redis.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    k8s_image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert compose["services"]["redis"]["image"] == k8s_image
    assert re.search(r"@sha256:[0-9a-f]{64}$", k8s_image)
