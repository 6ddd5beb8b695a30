"""Micro-benchmark of the Avro codec on the engine's hot path.

Encodes and decodes a realistic mix of engine events (the standard workload run through
the engine: Accepted, Trade, Done, Cancelled, Expired...) and keel.depth messages with
single-object framing, and reports the median msgs/s of several runs. The avro package's
pure-Python coder runs on a small sample for comparison.

    .venv/bin/python bench/codec.py [--ops 20000] [--runs 3] [--json]
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.engine import Engine  # noqa: E402
from engine.markets import Market  # noqa: E402
from engine.workload import operations, to_commands  # noqa: E402
from schemas.catalog import SCHEMA_DIR  # noqa: E402
from schemas.codec import Codec  # noqa: E402
from schemas.records import event_to_record  # noqa: E402

EPOCH_MS = 1_717_000_000_000   # realistic timestamps: varint sizes matter


def engine_events(n_ops: int) -> list:
    market = Market("BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.00001"),
                    Decimal("0"), 1000, 1000, 0)
    engine = Engine([market])
    events = engine.apply_many(
        cmd._replace(ts=EPOCH_MS + cmd.ts) for cmd in to_commands(operations(n_ops), "BTCUSDT"))
    return events


def depth_messages(n: int, seed: int = 7) -> list[dict]:
    r = random.Random(seed)
    out = []
    mid = 6_500_000
    for i in range(n):
        snapshot = i % 50 == 0
        levels = 20 if snapshot else r.randint(1, 4)
        bids = [{"price": mid - k - r.randint(0, 2), "qty": 0 if r.random() < 0.2 and not snapshot
                 else r.randint(1, 5000)} for k in range(levels)]
        asks = [{"price": mid + 1 + k + r.randint(0, 2), "qty": r.randint(0, 5000)}
                for k in range(levels if snapshot else r.randint(0, 3))]
        out.append({"pair": "BTCUSDT", "first_update_id": 10 * i + 1, "last_update_id": 10 * i + 3,
                    "ts": EPOCH_MS + i, "is_snapshot": snapshot, "bids": bids, "asks": asks})
    return out


def _rate(fn, items) -> tuple[float, list]:
    start = time.perf_counter()
    out = [fn(x) for x in items]
    return len(items) / (time.perf_counter() - start), out


def measure(codec: Codec, events: list, depth: list) -> dict:
    enc_ev, blobs = _rate(codec.encode_event, events)
    dec_ev, back = _rate(codec.decode_event, blobs)
    assert back == events, "round trip changed an event"
    encode_depth = lambda d: codec.encode("depth_update", d, validate=False)  # noqa: E731
    enc_d, dblobs = _rate(encode_depth, depth)
    dec_d, _ = _rate(lambda b: codec.decode("depth_update", b), dblobs)
    per_type = {}
    by_type: dict[str, list] = {}
    for e in events:
        by_type.setdefault(type(e).__name__, []).append(e)
    for name, group in by_type.items():
        group = group * -(-2000 // len(group))      # rare types: enough samples to time
        enc, gb = _rate(codec.encode_event, group)
        dec, _ = _rate(codec.decode_event, gb)
        per_type[name] = (enc, dec)
    total = len(events) + len(depth)
    seconds_enc = len(events) / enc_ev + len(depth) / enc_d
    seconds_dec = len(events) / dec_ev + len(depth) / dec_d
    return {"encode": total / seconds_enc, "decode": total / seconds_dec,
            "event_encode": enc_ev, "event_decode": dec_ev,
            "depth_encode": enc_d, "depth_decode": dec_d,
            "per_type": per_type, "event_bytes": sum(map(len, blobs)) / len(blobs)}


def avro_python(events: list, n: int = 2000) -> tuple[float, float]:
    """The avro package's pure-Python coder on the same records (body only, no framing)."""
    import avro.io
    import avro.schema

    schema = avro.schema.parse((SCHEMA_DIR / "engine_event.avsc").read_text())
    writer, reader = avro.io.DatumWriter(schema), avro.io.DatumReader(schema)
    # avro picks a union branch by shape, so bodies go in bare (Cancelled and Expired,
    # identical in shape, both come back as Cancelled: fine for timing only).
    records = []
    for e in events[:n]:
        rec = event_to_record(e)
        records.append(dict(rec, event=rec["event"][1]))

    def enc(rec):
        buf = io.BytesIO()
        # write_data, not write: avro 1.12's up-front validate() takes the first union
        # branch that is a dict and then fails on its fields; write_union checks each.
        writer.write_data(schema, rec, avro.io.BinaryEncoder(buf))
        return buf.getvalue()

    enc_rate, blobs = _rate(enc, records)
    dec_rate, _ = _rate(lambda b: reader.read(avro.io.BinaryDecoder(io.BytesIO(b))), blobs)
    return enc_rate, dec_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000, help="standard-workload operations")
    parser.add_argument("--depth", type=int, default=5_000, help="depth messages")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)

    events = engine_events(args.ops)
    depth = depth_messages(args.depth)
    codec = Codec(validate=False)
    runs = [measure(codec, events, depth) for _ in range(max(3, args.runs))]
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    types = Counter(type(e).__name__ for e in events)
    per_type = {name: {"encode_msgs_per_s": round(statistics.median(r["per_type"][name][0]
                                                                   for r in runs)),
                       "decode_msgs_per_s": round(statistics.median(r["per_type"][name][1]
                                                                   for r in runs)),
                       "count": types[name]} for name in sorted(types)}
    avro_enc, avro_dec = avro_python(events)
    result = {
        "framing": "single-object",
        "runs": len(runs),
        "events": len(events),
        "depth_messages": len(depth),
        "encode_msgs_per_s": round(med("encode")),
        "decode_msgs_per_s": round(med("decode")),
        "event_encode_msgs_per_s": round(med("event_encode")),
        "event_decode_msgs_per_s": round(med("event_decode")),
        "depth_encode_msgs_per_s": round(med("depth_encode")),
        "depth_decode_msgs_per_s": round(med("depth_decode")),
        "event_mean_bytes": round(med("event_bytes"), 1),
        "per_event_type": per_type,
        "avro_python_event_encode_msgs_per_s": round(avro_enc),
        "avro_python_event_decode_msgs_per_s": round(avro_dec),
    }
    print(f"{len(events)} engine events ({', '.join(f'{k} {v}' for k, v in types.most_common())})"
          f" + {len(depth)} depth messages, median of {len(runs)} runs, single-object framing")
    print(f"  all      encode {result['encode_msgs_per_s']:>10,} msgs/s   "
          f"decode {result['decode_msgs_per_s']:>10,} msgs/s")
    print(f"  events   encode {result['event_encode_msgs_per_s']:>10,} msgs/s   "
          f"decode {result['event_decode_msgs_per_s']:>10,} msgs/s   "
          f"({result['event_mean_bytes']} bytes each)")
    print(f"  depth    encode {result['depth_encode_msgs_per_s']:>10,} msgs/s   "
          f"decode {result['depth_decode_msgs_per_s']:>10,} msgs/s")
    for name, rates in per_type.items():
        print(f"  {name:<10}encode {rates['encode_msgs_per_s']:>10,} msgs/s   "
              f"decode {rates['decode_msgs_per_s']:>10,} msgs/s")
    print(f"  avro (pure Python) events: encode {round(avro_enc):,} msgs/s, "
          f"decode {round(avro_dec):,} msgs/s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
