"""One frozen settings object per process, read from the environment once.

Every URL left unset selects the embedded service that `keel up` starts itself; a URL
that is set points the same code at a production service instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_MARKETS = Path(__file__).with_name("markets.toml")


class Secret(str):
    """A string that never shows itself in logs, reprs or tracebacks."""

    def __repr__(self) -> str:  # pragma: no cover - trivial
        return "Secret('**********')"

    def reveal(self) -> str:
        return str.__str__(self)


def _opt(env: dict[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".keel")
    kafka_bootstrap: str | None = None        # None: embedded tansu broker
    postgres_url: str | None = None           # None: embedded PostgreSQL 18
    clickhouse_url: str | None = None         # None: chdb://<data_dir>/clickhouse
    schema_registry_url: str | None = None    # None: Avro single-object encoding
    markets_file: Path = DEFAULT_MARKETS
    log_level: str = "WARNING"
    embedded_kafka_port: int = 19092
    embedded_postgres_port: int = 15432
    embedded_clickhouse_port: int = 18123     # the chDB owner's local HTTP endpoint
    user_partitions: int = 4                  # partitions of the user-hashed topics
    replication_factor: int = 1               # 1 embedded; 3 in production
    metrics_port_base: int = 9400
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    topic_prefix: str = "keel."
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("KEEL_DATA_DIR", ".keel")).expanduser()
        return cls(
            data_dir=data_dir,
            kafka_bootstrap=_opt(env, "KEEL_KAFKA_BOOTSTRAP"),
            postgres_url=_secret(_opt(env, "KEEL_POSTGRES_URL")),
            clickhouse_url=_secret(_opt(env, "KEEL_CLICKHOUSE_URL")),
            schema_registry_url=_opt(env, "KEEL_SCHEMA_REGISTRY_URL"),
            markets_file=Path(env.get("KEEL_MARKETS_FILE", str(DEFAULT_MARKETS))),
            log_level=env.get("KEEL_LOG_LEVEL", "WARNING").upper(),
            embedded_kafka_port=int(env.get("KEEL_EMBEDDED_KAFKA_PORT", "19092")),
            embedded_postgres_port=int(env.get("KEEL_EMBEDDED_POSTGRES_PORT", "15432")),
            embedded_clickhouse_port=int(env.get("KEEL_EMBEDDED_CLICKHOUSE_PORT", "18123")),
            user_partitions=int(env.get("KEEL_USER_PARTITIONS", "4")),
            replication_factor=int(env.get("KEEL_REPLICATION_FACTOR", "1")),
            metrics_port_base=int(env.get("KEEL_METRICS_PORT_BASE", "9400")),
            gateway_host=env.get("KEEL_GATEWAY_HOST", "127.0.0.1"),
            gateway_port=int(env.get("KEEL_GATEWAY_PORT", "8080")),
            topic_prefix=env.get("KEEL_TOPIC_PREFIX", "keel."),
            extra={k: v for k, v in env.items() if k.startswith("KEEL_")},
        )

    # Resolved endpoints: embedded defaults when no URL was given.
    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.embedded_kafka_port}"

    @property
    def postgres_dsn(self) -> str:
        if self.postgres_url:
            return Secret(self.postgres_url).reveal()
        return f"postgresql://postgres@127.0.0.1:{self.embedded_postgres_port}/keel"

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse_url:
            return Secret(self.clickhouse_url).reveal()
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def embedded_postgres(self) -> bool:
        return self.postgres_url is None

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url is None

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def topic(self, name: str) -> str:
        """Full topic name for a short name: topic('orders') -> 'keel.orders'."""
        return f"{self.topic_prefix}{name}"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)


def _secret(value: str | None) -> str | None:
    return Secret(value) if value is not None else None
