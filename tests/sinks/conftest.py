"""Fixtures of the sink tests: a topic prefix with keel.events/depth/dlq on the session
broker, and a migrated database of its own."""
from __future__ import annotations

import uuid

import pytest

from infra.migrate import migrate
from tests.sinks.feed import create_topics


@pytest.fixture
def prefix(kafka_bootstrap: str) -> str:
    name = f"s{uuid.uuid4().hex[:8]}."
    create_topics(kafka_bootstrap, name)
    return name


@pytest.fixture
def sink_db(make_database) -> str:
    dsn = make_database()
    migrate(dsn)
    return dsn
