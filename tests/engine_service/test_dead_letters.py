"""Bad input never stops the engine: each bad record lands on keel.dlq with its reason and
code, and matching carries on exactly as if the bad records had never been sent."""
from __future__ import annotations

from engine.domain import Place, ResultCode
from engine.service.tools import clean_run, produce_values, read_partition
from engine.workload import operations, to_commands
from infra.embedded import free_port
from schemas.errors import CodecFault

from .checks import (
    assert_seq_contiguous,
    metric_samples,
    metric_value,
    published_events,
    scrape,
)
from .conftest import log_of, wait_for


def test_bad_records_go_to_the_dlq_and_matching_goes_on(engine_env, spawn_engine):
    env = engine_env
    codec = env.codec
    good = list(to_commands(operations(3_000, seed=5), "BTCUSDT"))
    expected, _ = clean_run(env.markets, 0, good, codec)
    bad = [
        (b"BTCUSDT", b"\x00garbage", int(CodecFault.UNKNOWN_SCHEMA)),
        (b"BTCUSDT", b"not avro at all", int(CodecFault.BAD_FRAMING)),
        (b"BTCUSDT", codec.encode_command(good[0])[:-3], int(CodecFault.TRUNCATED)),
        (b"BTCUSDT", codec.encode("dead_letter", {
            "source_topic": "x", "partition": 0, "offset": 0, "key": None, "value": None,
            "reason": "r", "error_code": 0, "consumer": None, "ts": 0}),
         int(CodecFault.WRONG_SCHEMA)),
        (b"DOGEUSDT", codec.encode_command(good[0]._replace(pair="DOGEUSDT")),
         int(ResultCode.UNKNOWN_PAIR)),
        (b"ETHUSDT", codec.encode_command(good[0]._replace(pair="ETHUSDT")),
         int(ResultCode.INVALID_REQUEST)),          # ETHUSDT lives on partition 1
        (b"BTCUSDT", codec.encode_command(Place("BTCUSDT", 9, 9, 7, 0, 0, 10, 1, 0, 0, 1)),
         int(ResultCode.INVALID_REQUEST)),          # side 7
        (b"BTCUSDT", None, int(ResultCode.INVALID_REQUEST)),   # tombstone
    ]
    # Interleave: a bad record after every 300 good ones.
    items, bad_offsets = [], []
    for i, cmd in enumerate(good):
        if i % 300 == 150 and len(bad_offsets) < len(bad):
            key, value, _ = bad[len(bad_offsets)]
            bad_offsets.append(len(items))
            items.append((key, value))
        items.append((cmd.pair.encode(), codec.encode_command(cmd)))
    assert len(bad_offsets) == len(bad)
    produce_values(env.settings, env.settings.topic("orders"), 0, items)

    port = free_port()
    proc = spawn_engine("--partitions", "0", "--metrics-port", str(port))
    wait_for(lambda: len(published_events(env, 0)) >= len(expected), 120, "every event")
    values = published_events(env, 0)
    assert values == expected
    assert_seq_contiguous(env, values)

    letters = [codec.decode("dead_letter", m.value())
               for m in read_partition(env.settings, env.settings.topic("dlq"), 0)]
    assert [(d["offset"], d["error_code"]) for d in letters] == [
        (off, code) for off, (_, _, code) in zip(bad_offsets, bad, strict=True)]
    for letter, (key, value, _) in zip(letters, bad, strict=True):
        assert letter["source_topic"] == env.settings.topic("orders")
        assert letter["consumer"] == "engine"
        assert letter["key"] == key and letter["value"] == value
        assert letter["reason"]
    assert proc.poll() is None and "Traceback" not in log_of(proc)

    metrics = wait_for(lambda: scrape(port, "exchange_engine_primary"), 30, "metrics")
    assert metric_value(metrics, 'exchange_orders_processed_total{pair="BTCUSDT"}') == len(good)
    assert metric_value(
        metrics, 'exchange_order_latency_seconds_count{pair="BTCUSDT",type="Place"}') > 0
    assert sum(v for k, v in metric_samples(metrics)
               if k.startswith("exchange_engine_dead_letters_total")) == len(bad)
    assert metric_value(metrics, 'exchange_engine_primary{partition="0"}') == 1
    proc.terminate()
    assert proc.wait(30) == 0

