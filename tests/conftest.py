"""Session fixtures: the real embedded services, started only for tests that ask.

Each fixture starts its service lazily on a free port in a temp dir the first time a test
requests it, and stops it at the end of the session (the broker: of its module); tests
that request none of them (engine, schemas) start nothing.

    kafka_bootstrap    "127.0.0.1:PORT" of a tansu broker (in memory), one per module
    postgres_dsn       DSN of database `keel` on a PostgreSQL 18 server
    clickhouse_client  a clickhouse-connect client on a chDB dir owned by this process
                       (chDB allows one dir per process: share this one, do not open another)
    make_topic         factory: make_topic(partitions=1, **config) -> a fresh topic name
    make_database      factory: make_database() -> DSN of a fresh empty database
    keel_settings      Settings pointing at the session's Kafka and PostgreSQL
"""
from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

START_TIMEOUT = 60.0


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker per test module, not per session: tansu slows as it ages. Every
    idempotent or transactional producer adds to the producer-id record it rewrites on
    each such produce, and a fetch lists all of a partition's batches. In ci43 the
    streams conservation test took 634 s at the end of the suite against 91 s in a
    shorter run, and the long-partition broker test 177 s against 34 s."""
    from infra.embedded import free_port
    from infra.embedded.kafka import spawn
    from infra.health import HealthCheck

    port = free_port()
    log = tmp_path_factory.mktemp("kafka") / "kafka.log"
    proc = spawn(port, log)
    bootstrap = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (result := HealthCheck("kafka", bootstrap).run(timeout=1.0)).ok:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start: {result.detail}; see {log}")
            time.sleep(0.1)
        yield bootstrap
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from infra.embedded import free_port
    from infra.embedded.postgres import spawn, stop, wait_ready
    from infra.postgres import ensure_database

    port = free_port()
    data_dir = tmp_path_factory.mktemp("postgres") / "data"
    log = open(data_dir.parent / "postgres.log", "ab")  # noqa: SIM115 - closed below
    dsn = f"postgresql://postgres@127.0.0.1:{port}/keel"
    proc = spawn(data_dir, port, stdout=log)
    try:
        wait_ready(dsn, proc, START_TIMEOUT)
        ensure_database(dsn)
        yield dsn
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="session")
def clickhouse_client(tmp_path_factory: pytest.TempPathFactory):
    import clickhouse_connect

    path = tmp_path_factory.mktemp("clickhouse") / "chdb"
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Callable[..., str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def create(partitions: int = 1, **config: str) -> str:
        name = f"test.{uuid.uuid4().hex[:12]}"
        conf = {k.replace("_", "."): str(v) for k, v in config.items()}
        admin.create_topics([NewTopic(name, partitions, 1, config=conf)])[name].result(10)
        return name

    return create


@pytest.fixture
def make_database(postgres_dsn: str) -> Iterator[Callable[[], str]]:
    import psycopg
    from psycopg import sql

    from infra.postgres import with_database

    created: list[str] = []

    def create() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(with_database(postgres_dsn, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return with_database(postgres_dsn, name)

    yield create
    with psycopg.connect(with_database(postgres_dsn, "postgres"), autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


@pytest.fixture
def keel_settings(kafka_bootstrap: str, postgres_dsn: str, tmp_path):
    """Settings on the session's broker and database, with a topic prefix of its own."""
    from infra.settings import Settings

    return Settings(data_dir=tmp_path / "keel", kafka_bootstrap=kafka_bootstrap,
                    postgres_url=postgres_dsn, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
