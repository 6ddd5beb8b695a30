"""Engine units -> asset smallest units, on the shipped markets file and the test markets."""
from __future__ import annotations

from decimal import Decimal

import pytest

from engine.markets import load_markets, parse_markets
from infra.settings import DEFAULT_MARKETS
from streams.units import Units
from tests.streams.sim import MARKETS


def test_shipped_markets_convert_to_whole_smallest_units():
    markets = load_markets(DEFAULT_MARKETS)
    units = Units.from_markets(markets)
    btc = units.pairs["BTCUSDT"]
    # 1 lot = 0.00001 BTC = 1000 satoshi-like units (8 decimals).
    assert btc.base_per_lot == 1_000
    # 1 notional unit = 0.01 x 0.00001 = 1e-7 USDT = 10 units of 1e-8.
    assert btc.quote_per_unit == 10
    assert units.fee_account == markets.fee_account
    assert units.assets == frozenset(markets.assets)


@pytest.mark.parametrize("pair", ["AAAQQQ", "BBBQQQ"])
def test_conversions_agree_with_the_decimal_values(pair):
    market = MARKETS.markets[pair]
    pu = Units.from_markets(MARKETS).pairs[pair]
    base_dec = MARKETS.assets[market.base].decimals
    quote_dec = MARKETS.assets[market.quote].decimals
    for lots in (1, 7, 12345):
        assert Decimal(pu.lots(lots)).scaleb(-base_dec) == market.lots_to_qty(lots)
    for units in (1, 9, 98765):
        assert Decimal(pu.notional(units)).scaleb(-quote_dec) == market.units_to_quote(units)


def test_a_pair_whose_lot_is_one_smallest_unit():
    markets = parse_markets({
        "assets": {"X": {"decimals": 2}, "Y": {"decimals": 3}},
        "markets": [{"pair": "XY", "base": "X", "quote": "Y", "tick_size": "0.1",
                     "lot_size": "0.01", "partition": 0}]})
    pu = Units.from_markets(markets).pairs["XY"]
    assert (pu.base_per_lot, pu.quote_per_unit) == (1, 1)
