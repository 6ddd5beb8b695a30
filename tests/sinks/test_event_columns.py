"""The batch decode of keel.events (pure): the same answer as the codec, record by record,
for good records and for every kind of damaged one."""
from __future__ import annotations

import random

import numpy as np

from engine.domain import Accepted, Amended, MarketStatus, Trade
from schemas.codec import Codec, CodecError, CodecFault
from sinks.event_columns import SMALLINT_FIELDS, decode, padded, varint_values
from tests.sinks.feed import engine_events

CODEC = Codec()


def _expected(value):
    """What the codec makes of one value: an event, or the CodecFault it raises (with the
    sink's range rule on top: a smallint enum outside 16 bits is an invalid record)."""
    try:
        e = CODEC.decode_event(value)
    except CodecError as exc:
        return exc.fault
    for kind, field in SMALLINT_FIELDS:
        if type(e).__name__ == kind and not -(1 << 15) <= getattr(e, field) < (1 << 15):
            return CodecFault.INVALID_RECORD
    return e


def _check(values) -> None:
    cols, dead = decode(values, CODEC)
    got = iter(cols.events())
    faults = dict((i, exc.fault) for i, exc in dead)
    for i, value in enumerate(values):
        want = _expected(value)
        if isinstance(want, CodecFault):
            assert faults.get(i) == want, (i, value, want, faults.get(i))
        else:
            assert i not in faults, (i, value, faults.get(i))
            assert next(got) == want, (i, value)
    assert next(got, None) is None


def test_a_workload_decodes_exactly_as_the_codec_does():
    events = engine_events(3000, seed=9)
    cols, dead = decode([CODEC.encode_event(e) for e in events], CODEC)
    assert dead == []
    assert cols.events() == events
    assert sorted(cols.pairs) == sorted({e.pair for e in events})


def test_every_branch_and_extreme_values_round_trip():
    big, small = (1 << 63) - 1, -(1 << 63)
    events = [
        Accepted("X", 1, 0, big, small, 0, 2, 1, 1, 1 << 40, 0),
        Trade("LONGPAIRNAMEUSDT", big, small, 1, 2, 3, 1, 4, 5, 6, 7, -8, 9),
        Amended("X", 3, 3, 1, 2, 3, 4, True),
        Amended("X", 4, 4, 1, 2, 3, 4, False),
        MarketStatus("", 5, 5, True),
        Accepted("X", 6, 6, 1, 2, -(1 << 15), (1 << 15) - 1, 0, 0, 0, 0),
    ]
    _check([CODEC.encode_event(e) for e in events])


def test_damaged_records_get_the_codecs_verdict_and_their_neighbours_are_unharmed():
    rng = random.Random(3)
    good = [CODEC.encode_event(e) for e in engine_events(200, seed=4)]
    values = []
    for v in good:
        roll = rng.random()
        if roll < 0.15:
            v = v[:rng.randrange(len(v))]                       # truncated anywhere
        elif roll < 0.30:
            i = rng.randrange(len(v))
            v = v[:i] + bytes([rng.randrange(256)]) + v[i + 1:]  # one byte changed
        elif roll < 0.40:
            i = rng.randrange(10, len(v) + 1)
            v = v[:i] + bytes([rng.randrange(256)]) + v[i:]      # one byte too many
        elif roll < 0.45:
            v = rng.choice([None, b"", b"\xc3\x01", b"\x00\x00\x00\x00\x01abc"])
        values.append(v)
    # A pair that is not ASCII, an enum outside smallint, an Avro int outside 32 bits.
    values.append(CODEC.encode_event(Accepted("ÉTHUSDT", 1, 1, 1, 1, 0, 0, 0, 1, 1, 0)))
    values.append(CODEC.encode_event(Accepted("X", 2, 2, 1, 1, 1 << 20, 0, 0, 1, 1, 0)))
    values.append(CODEC.encode_event(Trade("X", 3, 3, 1, 1, 1, 0, 1, 1, 2, 2, 0, 0))[:-1]
                  + b"\x80\x80\x80\x80\x80\x01")
    _check(values)


def test_a_boolean_is_one_byte_zero_or_one():
    value = CODEC.encode_event(Amended("X", 1, 1, 1, 2, 3, 4, True))
    assert value[-1] == 1
    _check([value, value[:-1] + b"\x02", value[:-1] + b"\x81\x00", value])


def test_tombstones_and_a_batch_of_nothing_but_damage():
    cols, dead = decode([None, b"", b"\xc3"], CODEC)
    assert len(cols) == 0 and [i for i, _ in dead] == [0, 1, 2]
    cols, dead = decode([], CODEC)
    assert len(cols) == 0 and dead == []


def test_varints_of_every_width_read_from_words():
    """varint_values (8 bytes from two aligned words, 7-bit groups packed by shifts) on
    varints of 1 to 9 bytes at every alignment, against a byte-by-byte reading."""
    rng = random.Random(11)
    numbers = [0, 1, 127, 128, (1 << 56) - 1, 1 << 56, (1 << 63) - 1]
    numbers += [rng.getrandbits(rng.randint(1, 63)) for _ in range(3000)]
    blob, starts, sizes = bytearray(), [], []
    for n in numbers:
        blob += bytes(rng.randint(0, 3))                    # any alignment
        starts.append(len(blob))
        while True:
            blob.append((n & 0x7F) | (0x80 if n >> 7 else 0))
            n >>= 7
            if not n:
                break
        sizes.append(len(blob) - starts[-1])
    assert set(sizes) == set(range(1, 10))
    buf, words = padded(bytes(blob))
    got = varint_values(buf, words, np.array(starts), np.array(sizes))
    assert got.tolist() == numbers
