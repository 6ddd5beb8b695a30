"""The markets config: every kind of mistake is refused with a message naming it."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import tomllib

import pytest

from engine.markets import MarketsConfigError, load_markets, parse_markets
from infra.settings import DEFAULT_MARKETS

GOOD = tomllib.loads(DEFAULT_MARKETS.read_text())


def _broken(change) -> dict:
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def _set(index: int, **fields):
    def change(data):
        data["markets"][index].update(fields)
    return change


def _drop(index: int, field: str):
    def change(data):
        del data["markets"][index][field]
    return change


CASES = {
    "unknown asset": (_set(0, base="DOGE"), "BTCUSDT: unknown base asset 'DOGE'"),
    "shared partition not allowed": (_set(1, partition=0),
                                     "ETHUSDT: partition 0 is already used by BTCUSDT"),
    "tick not a power of ten": (_set(0, tick_size="0.05"),
                                "BTCUSDT: tick_size 0.05 is not a power of ten"),
    "lot not a power of ten": (_set(2, lot_size="0.002"),
                               "SOLUSDT: lot_size 0.002 is not a power of ten"),
    "duplicate pair": (lambda d: d["markets"].append(dict(d["markets"][0], partition=3)),
                       "BTCUSDT: declared twice"),
    "missing field": (_drop(1, "lot_size"), "ETHUSDT: missing lot_size"),
    "bad fee": (_set(0, maker_fee="1.5"), "BTCUSDT: maker_fee '1.5' must be in [0, 1)"),
    "fee finer than ppm": (_set(0, taker_fee="0.0000001"), "finer than one part per million"),
    "fee not a number": (_set(0, taker_fee="lots"), "BTCUSDT: taker_fee 'lots' is not a decimal"),
    "non-contiguous partitions": (_set(2, partition=5),
                                  "partitions must be contiguous from 0; missing [2, 3, 4]"),
    "lowercase pair": (_set(0, pair="btcusdt"), "must be upper-case"),
    "no markets": (lambda d: d.update(markets=[]), "no [[markets]] declared"),
}


def test_the_shipped_config_is_valid():
    config = load_markets(DEFAULT_MARKETS)
    assert config.partitions == 3
    assert [m.pair for m in config.pairs_on(0)] == ["BTCUSDT"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_mistake_has_a_clear_message(case):
    change, message = CASES[case]
    with pytest.raises(MarketsConfigError) as raised:
        parse_markets(_broken(change))
    assert message in str(raised.value)


def test_shared_partitions_are_allowed_when_asked():
    data = _broken(_set(1, partition=0))
    data["markets"][2]["partition"] = 1
    data["allow_shared_partitions"] = True
    config = parse_markets(data)
    assert config.partitions == 2
    assert [m.pair for m in config.pairs_on(0)] == ["BTCUSDT", "ETHUSDT"]


def _keel_markets(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli", "markets"], capture_output=True,
                          text=True, env={**os.environ, "KEEL_MARKETS_FILE": str(path)})


def test_keel_markets_prints_a_valid_file():
    done = _keel_markets(DEFAULT_MARKETS)
    assert done.returncode == 0, done.stderr
    assert "3 markets on 3 partitions" in done.stdout
    assert "BTCUSDT" in done.stdout and "SOLUSDT" in done.stdout


def test_keel_markets_fails_clearly_on_an_invalid_file(tmp_path):
    bad = tmp_path / "markets.toml"
    bad.write_text(DEFAULT_MARKETS.read_text().replace('tick_size = "0.01"',
                                                       'tick_size = "0.03"', 1))
    done = _keel_markets(bad)
    assert done.returncode == 1
    assert "BTCUSDT: tick_size 0.03 is not a power of ten" in done.stderr
    assert "Traceback" not in done.stderr
    missing = _keel_markets(tmp_path / "nope.toml")
    assert missing.returncode == 1 and "markets file not found" in missing.stderr
