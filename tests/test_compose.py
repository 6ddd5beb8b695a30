"""The production compose file: validated by docker-compose when it is installed, and its
structure checked from the YAML everywhere (CI machines may have no docker-compose).

The structural checks hold the file to what ARCHITECTURE.md promises operators: three
KRaft brokers with replication 3 and min.insync.replicas 2, every Keel process on the same
KEEL_* variables as the embedded default, and Prometheus scraping every process.
"""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from infra.cli import COMMANDS
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.kafka.yml"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = ROOT / "infra" / "grafana" / "provisioning"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# service -> the `keel` subcommand it runs (keel-init runs two, through a shell).
KEEL_PROCESSES = {
    "engine": ["engine", "--partitions", "0,1,2"],
    "accounts": ["streams", "accounts"],
    "marketdata": ["streams", "marketdata"],
    "settlement": ["streams", "settlement"],
    "sink-postgres": ["sink", "postgres"],
    "sink-clickhouse": ["sink", "clickhouse"],
    "gateway": ["gateway"],
}
KEEL_SERVICES = {"keel-init", *KEEL_PROCESSES}
BROKERS = ["kafka-1", "kafka-2", "kafka-3"]
PUBLISHED = {"gateway": 8080, "grafana": 3000, "prometheus": 9090}


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with an empty environment: the defaults the file ships."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    command = _compose_command()
    if command is None:
        pytest.skip("docker-compose is not on PATH: the docker-compose validation did NOT run "
                    "(the structural checks in this file still ran)")
    return subprocess.run([*command, "-f", str(path), "config", "-q"], cwd=path.parent,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment is written as a mapping so it can share anchors"
    return {k: _interpolate(str(v)) for k, v in env.items()}


# --- docker-compose itself -------------------------------------------------------------


def test_docker_compose_accepts_the_file():
    result = _validate(COMPOSE)
    print(f"docker-compose validation ran: rc={result.returncode}")
    assert result.returncode == 0, result.stderr


def test_docker_compose_rejects_a_broken_copy(tmp_path):
    """The validation above is worth something only if the validator can say no."""
    broken = COMPOSE.read_text().replace("  engine:\n", "  engine:\n    restart_after: always\n", 1)
    assert broken != COMPOSE.read_text()
    copy = tmp_path / COMPOSE.name
    copy.write_text(broken)
    (tmp_path / "Dockerfile").write_text(DOCKERFILE.read_text())
    result = _validate(copy)
    assert result.returncode != 0
    assert "restart_after" in result.stderr


# --- Kafka ------------------------------------------------------------------------------


def test_three_kraft_brokers_in_one_quorum(services):
    kafka = sorted(n for n, s in services.items() if s["image"].startswith("apache/kafka:"))
    assert kafka == BROKERS
    envs = {name: _env(services[name]) for name in kafka}
    cluster_ids = {env["CLUSTER_ID"] for env in envs.values()}
    assert len(cluster_ids) == 1, "all brokers must be formatted with the same cluster id"
    (cluster_id,) = cluster_ids
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID is a base64 UUID"
    node_ids = {env["KAFKA_NODE_ID"] for env in envs.values()}
    assert node_ids == {"1", "2", "3"}
    for name, env in envs.items():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        voters = set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {f"{e['KAFKA_NODE_ID']}@{n}:9093" for n, e in envs.items()}
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")


def test_brokers_replicate_three_ways_and_ack_on_two(services):
    for name in BROKERS:
        env = _env(services[name])
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"


def test_each_broker_keeps_its_log_on_its_own_named_volume(compose, services):
    volumes = []
    for name in BROKERS:
        log_dir = _env(services[name])["KAFKA_LOG_DIRS"]
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        assert log_dir in mounts, f"{name}: {log_dir} is not on a volume"
        volumes.append(mounts[log_dir])
    assert len(set(volumes)) == 3
    assert set(volumes) <= set(compose["volumes"])


# --- Keel processes ---------------------------------------------------------------------


def test_keel_services_are_built_from_the_dockerfile(services):
    built = {n for n, s in services.items() if "build" in s}
    assert built == KEEL_SERVICES
    images = {services[n]["image"] for n in built}
    assert len(images) == 1, "every Keel process runs the same image"


def test_each_keel_process_runs_its_subcommand(services):
    for name, command in KEEL_PROCESSES.items():
        assert services[name]["command"] == command, name
        assert "entrypoint" not in services[name], f"{name} must run through ENTRYPOINT keel"


def test_keel_init_creates_topics_then_migrates(services):
    init = services["keel-init"]
    script = " ".join(init["command"])
    assert re.fullmatch(r"keel topics create && keel migrate", script)
    # Both are commands the CLI really registers.
    assert {"topics", "migrate"} <= set(COMMANDS)
    assert init.get("restart") == "no"


def test_every_keel_service_shares_the_keel_env(compose, services):
    shared = {k: _interpolate(str(v)) for k, v in compose["x-keel-env"].items()}
    for name in KEEL_SERVICES:
        env = _env(services[name])
        assert {k: env.get(k) for k in shared} == shared, name


def test_the_shared_env_points_keel_at_the_production_services(compose, services):
    env = {k: _interpolate(str(v)) for k, v in compose["x-keel-env"].items()}
    settings = Settings.from_env(env)
    assert not (settings.embedded_kafka or settings.embedded_postgres
                or settings.embedded_clickhouse)
    brokers = [hostport.split(":") for hostport in settings.bootstrap.split(",")]
    assert [host for host, _ in brokers] == BROKERS
    assert {port for _, port in brokers} == {"9092"}
    assert settings.replication_factor == 3
    pg = urlsplit(settings.postgres_dsn)
    pg_env = _env(services["postgres"])
    assert (pg.scheme, pg.hostname, pg.path) == ("postgresql", "postgres", "/" + pg_env["POSTGRES_DB"])
    assert (pg.username, pg.password) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"])
    ch = urlsplit(settings.clickhouse_dsn)
    ch_env = _env(services["clickhouse"])
    assert (ch.scheme, ch.hostname, ch.port) == ("http", "clickhouse", 8123)
    assert ch.path == "/" + ch_env["CLICKHOUSE_DB"]
    assert (ch.username, ch.password) == (ch_env["CLICKHOUSE_USER"], ch_env["CLICKHOUSE_PASSWORD"])
    assert settings.log_level in {"DEBUG", "INFO", "WARNING", "ERROR"}
    assert settings.metrics_port_base == 9400


def test_gateway_listens_on_all_interfaces(services):
    env = _env(services["gateway"])
    assert env["KEEL_GATEWAY_HOST"] == "0.0.0.0"
    assert services["gateway"]["ports"] == [f"{env['KEEL_GATEWAY_PORT']}:8080"]


# --- start-up order ---------------------------------------------------------------------


def _depends(service: dict) -> dict[str, str]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on uses conditions, not a bare list"
    return {name: spec["condition"] for name, spec in deps.items()}


def test_keel_init_waits_for_healthy_brokers_and_postgres(services):
    deps = _depends(services["keel-init"])
    assert deps == {**{b: "service_healthy" for b in BROKERS}, "postgres": "service_healthy"}


def test_every_keel_process_waits_for_keel_init(services):
    for name in KEEL_PROCESSES:
        assert _depends(services[name]).get("keel-init") == "service_completed_successfully", name
    assert _depends(services["sink-postgres"])["postgres"] == "service_healthy"
    assert _depends(services["sink-clickhouse"])["clickhouse"] == "service_healthy"


def test_every_waited_on_service_has_a_healthcheck(services):
    for name, service in services.items():
        for dep, condition in _depends(service).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
    for name in [*KEEL_PROCESSES, *BROKERS, "postgres", "clickhouse", "prometheus", "grafana"]:
        assert services[name].get("healthcheck", {}).get("test"), name


# --- data services, volumes, ports ------------------------------------------------------


def test_data_and_monitoring_services_are_present(services):
    assert services["postgres"]["image"] == "postgres:18"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    # PostgreSQL 18 images keep data under /var/lib/postgresql/18/docker.
    assert any(v.endswith(":/var/lib/postgresql") for v in services["postgres"]["volumes"])


def test_stateful_services_use_declared_named_volumes(compose, services):
    declared = set(compose["volumes"])
    for name in [*BROKERS, "postgres", "clickhouse", "prometheus", "grafana"]:
        sources = [v.split(":")[0] for v in services[name]["volumes"]]
        named = [s for s in sources if not s.startswith((".", "/"))]
        assert named, f"{name} keeps its data on a named volume"
        assert set(named) <= declared, name


def test_only_gateway_grafana_and_prometheus_are_published(services):
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            published[name] = int(str(port).split(":")[0])
    assert published == PUBLISHED


# --- Prometheus and Grafana -------------------------------------------------------------


def test_prometheus_scrapes_every_keel_process(compose, services):
    mounts = services["prometheus"]["volumes"]
    assert "./infra/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
               for job in config["scrape_configs"]}
    port = int(compose["x-keel-env"]["KEEL_METRICS_PORT_BASE"])
    for name in KEEL_PROCESSES:
        assert targets.get(name) == [f"{name}:{port}"], name
    for job, hosts in targets.items():
        for host in hosts:
            assert host.split(":")[0] in {*services, "localhost"}, f"{job} scrapes unknown {host}"


def test_grafana_is_provisioned_with_the_prometheus_datasource(services):
    assert "./infra/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    files = sorted((GRAFANA_PROVISIONING / "datasources").glob("*.yml"))
    sources = [d for f in files for d in yaml.safe_load(f.read_text())["datasources"]]
    (prom,) = [d for d in sources if d["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090"
    assert prom["isDefault"] is True
    assert services["prometheus"]["ports"] == ["9090:9090"]


# --- the image --------------------------------------------------------------------------


def test_dockerfile_runs_keel_as_a_non_root_user():
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    final_from = [ln for ln in lines if ln.startswith("FROM ")][-1]
    assert final_from.split()[1].startswith("python:3.11-slim")
    assert lines[-2:] == ['ENTRYPOINT ["keel"]', 'CMD ["--help"]']
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    ignored = set(DOCKERIGNORE.read_text().split())
    assert {".git", ".venv", ".keel", "**/*.so"} <= ignored
