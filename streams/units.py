"""Engine units <-> asset smallest units: the one place the conversion is defined.

The engine counts prices in ticks, quantities in lots and values in notional units
(one tick times one lot). Balances live in each asset's smallest unit (10^-decimals).
The markets config guarantees both factors below are whole numbers: a lot is never finer
than the base asset's decimals, and tick x lot never finer than the quote asset's.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property

from engine.markets import MAX_OPEN_ORDERS, Market, MarketsConfig


@dataclass(frozen=True)
class PairUnits:
    pair: str
    base: str
    quote: str
    base_per_lot: int        # base smallest units in one lot
    quote_per_unit: int      # quote smallest units in one notional unit
    maker_fee_ppm: int
    taker_fee_ppm: int
    min_notional: int        # notional units
    partition: int

    def lots(self, qty: int) -> int:
        """Lots of base -> base smallest units."""
        return qty * self.base_per_lot

    def notional(self, units: int) -> int:
        """Notional units (tick x lot) -> quote smallest units."""
        return units * self.quote_per_unit

    @cached_property        # read for every buy order's hold (streams.holds)
    def max_fee_ppm(self) -> int:
        # A resting buy pays the maker rate, a crossing one the taker rate: hold the larger.
        return max(self.maker_fee_ppm, self.taker_fee_ppm)


def _whole(value: Decimal, what: str) -> int:
    if value != value.to_integral_value() or value < 1:
        raise ValueError(f"{what} is {value}, not a whole number of smallest units")
    return int(value)


def pair_units(market: Market, decimals: dict[str, int]) -> PairUnits:
    return PairUnits(
        pair=market.pair, base=market.base, quote=market.quote,
        base_per_lot=_whole(market.lot_size.scaleb(decimals[market.base]),
                            f"{market.pair} lot"),
        quote_per_unit=_whole(market.unit_value.scaleb(decimals[market.quote]),
                              f"{market.pair} tick x lot"),
        maker_fee_ppm=market.maker_fee_ppm, taker_fee_ppm=market.taker_fee_ppm,
        min_notional=market.min_notional_units, partition=market.partition)


@dataclass(frozen=True)
class Units:
    """Every pair's conversion factors, the asset list and the fee account."""

    pairs: dict[str, PairUnits]
    assets: frozenset[str]
    fee_account: int
    max_open_orders: int = MAX_OPEN_ORDERS      # per account, all pairs (markets)

    @classmethod
    def from_markets(cls, markets: MarketsConfig) -> Units:
        decimals = {name: a.decimals for name, a in markets.assets.items()}
        return cls({p: pair_units(m, decimals) for p, m in markets.markets.items()},
                   frozenset(markets.assets), markets.fee_account, markets.max_open_orders)
