"""What must exist before Keel processes start: the topic catalog and the schema.

Each step is idempotent and runs after its service becomes healthy: at start, and again
after the supervisor restarts that service (the in-memory broker forgets its topics).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from engine.markets import load_markets
from infra import migrate, topics
from infra.kafka import admin_client
from infra.logs import event
from infra.postgres import ensure_database
from infra.settings import Settings

log = logging.getLogger(__name__)


class ProvisionError(RuntimeError):
    pass


def create_topics(settings: Settings) -> list[topics.TopicOutcome]:
    planned = topics.plan(settings, load_markets(settings.markets_file))
    admin = admin_client(settings)
    outcomes = topics.ensure_topics(admin, planned)
    if settings.embedded_kafka:
        outcomes = _recreate_auto_created(admin, planned, outcomes)
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise ProvisionError("; ".join(f"{o.name}: {o.status} {o.detail}" for o in bad))
    return outcomes


def _recreate_auto_created(admin, planned: list[topics.PlannedTopic],
                           outcomes: list[topics.TopicOutcome]) -> list[topics.TopicOutcome]:
    """The embedded broker keeps its topics in memory: after it (re)starts, every topic it
    has was made since, and one with another partition count than planned was made by a
    running client asking about it before this step ran (tansu creates a topic a producer
    or a Faust consumer names, with 4 partitions: keel.events after a killed broker's
    restart, tests/infra/test_up.py, ci37). Its records, if any, sit in partitions the
    catalog does not have: delete it and create it as planned. A client that makes it
    again in between only makes this step fail and run again (the supervisor retries)."""
    wrong = [o.name for o in outcomes if o.status == "mismatch"]
    if not wrong:
        return outcomes
    event(log, "recreating topics a client made before provisioning", logging.WARNING,
          topics=wrong)
    for future in admin.delete_topics(wrong, request_timeout=10).values():
        future.result(10)
    return topics.ensure_topics(admin, planned)


def apply_migrations(settings: Settings) -> list[migrate.Migration]:
    if settings.embedded_postgres:
        ensure_database(settings.postgres_dsn)
    return migrate.migrate(settings.postgres_dsn)


# service name -> the step to run once it is healthy
STEPS: dict[str, Callable[[Settings], object]] = {
    "kafka": create_topics,
    "postgres": apply_migrations,
}
