"""`keel sink postgres` loads keel.settlements into ledger_entries and keel.balances into
the balances projection, against the real broker and PostgreSQL: every entry once however
often it is delivered, and the highest version of every balance whatever the order."""
from __future__ import annotations

import random

import psycopg

from engine.domain import Trade
from schemas.codec import Codec
from sinks.ledger import balance_table, ledger_table
from tests.sinks.feed import (
    PAIRS,
    caught_up,
    engine_events,
    produce,
    sink_process,
    stop,
    wait_for,
)

TRADE, RELEASE, FEE = 0, 1, 2
FEE_ACCOUNT = 1


def _settlements(n_events: int, seed: int) -> list[dict]:
    """Settlement-shaped records (schemas/settlement.avsc) for n trades, with the cases a
    key must tell apart: a fee record without an order, a release without entries, a
    self-match (one user, two orders, same event) and one user settled for two reasons."""
    rng = random.Random(seed)
    out = []
    for seq in range(1, n_events + 1):
        pair = PAIRS[seq % 2]
        base, quote = pair[:3], "USDT"
        buyer, seller = rng.randrange(2, 40), rng.randrange(2, 40)
        if seq % 17 == 0:
            seller = buyer                                     # self-match
        spend, qty, fee = rng.randrange(1, 10**6), rng.randrange(1, 10**4), rng.randrange(0, 50)
        ts = 1_700_000_000_000 + seq

        def rec(uid, reason, oid, tid, entries, seq=seq, pair=pair, ts=ts):
            return {"user_id": uid, "pair": pair, "seq": seq, "ts": ts, "reason": reason,
                    "order_id": oid, "trade_id": tid,
                    "entries": [{"asset": a, "available_delta": av, "held_delta": h}
                                for a, av, h in entries]}
        out.append(rec(buyer, TRADE, 2 * seq, seq, [(quote, 0, -(spend + fee)), (base, qty, 0)]))
        out.append(rec(seller, TRADE, 2 * seq + 1, seq, [(base, 0, -qty), (quote, spend, 0)]))
        if fee:
            out.append(rec(FEE_ACCOUNT, FEE, None, seq, [(quote, fee, 0)]))
        if seq % 5 == 0:                                       # the buyer's order is done
            out.append(rec(buyer, RELEASE, 2 * seq, None, [(quote, 7, -7)]))
        if seq % 11 == 0:                                      # a rejected place
            out.append(rec(seller, RELEASE, 10**9 + seq, None, []))
    return out


def _balances(settlements: list[dict]) -> list[dict]:
    """Every version of every (user, asset) the settlements produce."""
    state: dict[tuple[int, str], list[int]] = {}
    out = []
    for s in settlements:
        for e in s["entries"]:
            row = state.setdefault((s["user_id"], e["asset"]), [10**12, 10**12, 0])
            row[0] += e["available_delta"]
            row[1] += e["held_delta"]
            row[2] += 1
            out.append({"user_id": s["user_id"], "asset": e["asset"], "available": row[0],
                        "held": row[1], "version": row[2], "ts": s["ts"]})
    return out


def _rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def _entries(settlements: list[dict]) -> list[tuple]:
    return [(s["user_id"], s["pair"], s["seq"], s["ts"], s["reason"], s["order_id"],
             s["trade_id"], e["asset"], e["available_delta"], e["held_delta"])
            for s in settlements for e in s["entries"]]


def test_tables_keep_one_entry_per_natural_key_and_the_highest_balance_version():
    settlements = _settlements(50, seed=1)
    entries = _entries(settlements)
    assert len({(e[0], e[1], e[2], e[4], e[5], e[7]) for e in entries}) == len(entries)
    table = ledger_table(settlements + settlements[:10])
    assert sorted(table.rows(), key=repr) == sorted(entries + _entries(settlements[:10]),
                                                    key=repr)
    versions = _balances(settlements)
    rng = random.Random(2)
    rng.shuffle(versions)
    latest = {}
    for b in versions:
        if b["version"] > latest.get((b["user_id"], b["asset"]), {"version": -1})["version"]:
            latest[(b["user_id"], b["asset"])] = b
    assert sorted(balance_table(versions).rows()) == sorted(
        tuple(b[c] for c in ("user_id", "asset", "available", "held", "version", "ts"))
        for b in latest.values())


def test_settlements_and_balances_load_once_beside_the_engine_events(
        kafka_bootstrap, prefix, sink_db, tmp_path):
    codec = Codec()
    settlements = _settlements(3000, seed=3)
    versions = _balances(settlements)
    # keel.balances is per user: a user's versions arrive in order; redeliveries and a
    # stale record behind a newer one may still appear.
    stale = [dict(b, version=b["version"] - 1, available=-1) for b in versions[::7]
             if b["version"] > 1]
    events = engine_events(2000, seed=8)
    part = {u: u % len(PAIRS) for u in range(100)}
    topic = {name: prefix + name for name in ("events", "settlements", "balances")}

    def send(name, records, schema):
        return produce(kafka_bootstrap, topic[name],
                       [(str(r["user_id"]), codec.encode(schema, r)) for r in records],
                       {str(u): p for u, p in part.items()})

    ends = {"settlements": send("settlements", settlements, "settlement"),
            "balances": send("balances", versions, "balance"),
            "events": produce(kafka_bootstrap, topic["events"],
                              [(e.pair, codec.encode_event(e)) for e in events],
                              {p: i for i, p in enumerate(PAIRS)})}
    env = {"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap, "KEEL_POSTGRES_URL": sink_db,
           "KEEL_TOPIC_PREFIX": prefix, "KEEL_LOG_LEVEL": "INFO"}
    group = prefix.rstrip(".") + "-sink-postgres"
    proc = sink_process("postgres", env, tmp_path / "sink.log")
    try:
        for name, end in ends.items():
            wait_for(caught_up(kafka_bootstrap, group, topic[name], end),
                     what=f"the sink to catch up on {name}")
        # Loaded; now, in later batches: redelivered settlements, stale and redelivered
        # balances, and one undecodable record on each topic (to keel.dlq, the rest loads).
        ends = {"settlements": send("settlements", settlements[:500], "settlement"),
                "balances": send("balances", stale + versions[-300:], "balance")}
        for name in ("settlements", "balances"):
            extra = produce(kafka_bootstrap, topic[name], [("2", b"\xc3\x01garbage")],
                            {"2": 0})
            ends[name][0] = max(ends[name].get(0, 0), extra[0])
        for name, end in ends.items():
            wait_for(caught_up(kafka_bootstrap, group, topic[name], end),
                     what=f"the sink to catch up on {name} again")
    finally:
        assert stop(proc) == 0

    got = _rows(sink_db, "SELECT user_id, pair, seq, ts, reason, order_id, trade_id, asset, "
                         "available_delta, held_delta FROM ledger_entries")
    assert sorted(got, key=repr) == sorted(_entries(settlements), key=repr)
    latest: dict[tuple[int, str], dict] = {}
    for b in versions:
        latest[(b["user_id"], b["asset"])] = b
    assert sorted(_rows(sink_db, "SELECT user_id, asset, available, held, version, ts "
                                 "FROM balances")) == sorted(
        tuple(b[c] for c in ("user_id", "asset", "available", "held", "version", "ts"))
        for b in latest.values())
    # Conservation holds in the projection: every asset's total is what the deltas say.
    per_asset: dict[str, int] = {}
    for s in settlements:
        for e in s["entries"]:
            per_asset[e["asset"]] = per_asset.get(e["asset"], 0) + e["available_delta"] \
                + e["held_delta"]
    totals = dict(_rows(sink_db, "SELECT asset, sum(available + held - 2000000000000)::bigint "
                                 "FROM balances GROUP BY asset"))
    assert totals == per_asset
    # The engine events of the same process and batches loaded as well.
    trades = sum(1 for e in events if type(e) is Trade)
    assert _rows(sink_db, "SELECT count(*) FROM trades") == [(trades,)]
    letters = _dead_letters(kafka_bootstrap, prefix, 2)
    assert sorted(d["source_topic"] for d in letters) == [topic["balances"],
                                                          topic["settlements"]]
    assert all(d["value"] == b"\xc3\x01garbage" for d in letters)


def _dead_letters(bootstrap: str, prefix: str, n: int) -> list[dict]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}dlq-check",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([prefix + "dlq"])
    letters = []
    try:
        def read():
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                letters.append(Codec().decode("dead_letter", m.value()))
            return len(letters) >= n
        wait_for(read, timeout=60, every=0, what="the dead letters")
    finally:
        consumer.close()
    return letters
