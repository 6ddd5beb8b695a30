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


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_librdkafka_lines_come_through_the_logger():
    keep = Keep()
    LIBRDKAFKA_LOGGER.addHandler(keep)
    level = LIBRDKAFKA_LOGGER.level
    LIBRDKAFKA_LOGGER.setLevel(logging.DEBUG)
    try:
        settings = Settings.from_env({"KEEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"})
        producer = Producer(producer_config(settings, "log-probe"))
        deadline = time.monotonic() + 10
        while not keep.records and time.monotonic() < deadline:
            producer.poll(0.1)
    finally:
        LIBRDKAFKA_LOGGER.removeHandler(keep)
        LIBRDKAFKA_LOGGER.setLevel(level)
    assert keep.records, "no librdkafka line reached the logger"
    line = json.loads(JsonFormatter("test").format(keep.records[0]))
    assert line["logger"] == "kafka.librdkafka"
    assert "log-probe" in line["msg"] and "Connect" in line["msg"], line
