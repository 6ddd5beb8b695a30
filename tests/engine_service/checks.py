"""What every engine-service test checks about the published log."""
from __future__ import annotations

import json
import urllib.request

from engine.service.config import group_id
from engine.service.reader import LogReader
from engine.service.snapshots import find_latest
from engine.service.tools import read_partition


def published_events(env, partition: int) -> list[bytes]:
    return [m.value() for m in read_partition(env.settings, env.settings.topic("events"), partition)]


def assert_seq_contiguous(env, values: list[bytes]) -> None:
    last: dict[str, int] = {}
    for i, value in enumerate(values):
        ev = env.codec.decode_event(value)
        want = last.get(ev.pair, 0) + 1
        assert ev.seq == want, f"event #{i}: {ev.pair} seq {ev.seq}, expected {want}"
        last[ev.pair] = ev.seq


def assert_depth_chain(env, partition: int, final_seq: dict[str, int]) -> int:
    """Diffs chain with no gap and no overlap (next first = previous last + 1) and end at
    the pair's final seq; full snapshots sit on the chain. Returns the diff count."""
    last: dict[str, int] = {}
    diffs = 0
    for msg in read_partition(env.settings, env.settings.topic("depth"), partition):
        rec = env.codec.decode("depth_update", msg.value())
        pair = rec["pair"]
        if rec["is_snapshot"]:
            assert rec["last_update_id"] == last.get(pair, 0), rec
            continue
        assert rec["first_update_id"] == last.get(pair, 0) + 1, (
            f"{pair}: diff {rec['first_update_id']}..{rec['last_update_id']} after {last.get(pair)}")
        assert rec["last_update_id"] >= rec["first_update_id"]
        last[pair] = rec["last_update_id"]
        diffs += 1
    assert last == final_seq
    return diffs


def last_snapshot(env, partition: int):
    reader = LogReader(env.settings, group_id(env.settings.topic_prefix))
    try:
        return find_latest(reader, env.codec, env.settings.topic("engine.snapshots"), partition)
    finally:
        reader.close()


def scrape(port: int, needle: str) -> str | None:
    """The engine's /metrics text once it mentions `needle`, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return text if needle in text else None


def metric_samples(text: str):
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            yield name, float(value)


def metric_value(text: str, name: str) -> float:
    values = [v for k, v in metric_samples(text) if k == name]
    assert values, f"{name} not exported"
    return values[0]


def committed_orders(env, partition: int = 0) -> int:
    """The engine group's committed offset on keel.orders[partition]."""
    reader = LogReader(env.settings, group_id(env.settings.topic_prefix))
    try:
        return reader.committed(env.settings.topic("orders"), partition)
    finally:
        reader.close()


def logged(log_text: str, msg: str) -> list[dict]:
    """The JSON log records of a process's log text whose msg is `msg`."""
    lines = (json.loads(line) for line in log_text.splitlines() if line.startswith("{"))
    return [rec for rec in lines if rec.get("msg") == msg]
