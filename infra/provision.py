"""What must exist before Keel processes start: the topic catalog and the schema.

Each step is idempotent and runs after its service becomes healthy: at start, and again
after the supervisor restarts that service (the in-memory broker forgets its topics).
"""
from __future__ import annotations

from collections.abc import Callable

from engine.markets import load_markets
from infra import migrate, topics
from infra.kafka import admin_client
from infra.postgres import ensure_database
from infra.settings import Settings


class ProvisionError(RuntimeError):
    pass


def create_topics(settings: Settings) -> list[topics.TopicOutcome]:
    planned = topics.plan(settings, load_markets(settings.markets_file))
    outcomes = topics.ensure_topics(admin_client(settings), planned)
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise ProvisionError("; ".join(f"{o.name}: {o.status} {o.detail}" for o in bad))
    return outcomes


def apply_migrations(settings: Settings) -> list[migrate.Migration]:
    if settings.embedded_postgres:
        ensure_database(settings.postgres_dsn)
    return migrate.migrate(settings.postgres_dsn)


# service name -> the step to run once it is healthy
STEPS: dict[str, Callable[[Settings], object]] = {
    "kafka": create_topics,
    "postgres": apply_migrations,
}
