"""librdkafka's own log lines reach the process's structured (JSON) log instead of raw
text on stderr: a real client pointed at a port where no broker listens says so through
the `kafka.librdkafka` logger once it is polled."""
from __future__ import annotations

import json
import logging
import time

from confluent_kafka import Producer

from infra.embedded import free_port
from infra.kafka import LIBRDKAFKA_LOGGER, producer_config
from infra.logs import JsonFormatter
from infra.settings import Settings


def test_librdkafka_lines_come_through_the_logger(caplog):
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER.name)
    settings = Settings.from_env({"KEEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"})
    producer = Producer(producer_config(settings, "log-probe"))
    deadline = time.monotonic() + 10
    while not caplog.records and time.monotonic() < deadline:
        producer.poll(0.1)
    assert caplog.records, "no librdkafka line reached the logger"
    line = json.loads(JsonFormatter("test").format(caplog.records[0]))
    assert line["logger"] == "kafka.librdkafka"
    assert "log-probe" in line["msg"] and "Connect" in line["msg"], line
