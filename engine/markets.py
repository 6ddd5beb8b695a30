"""Markets config: each pair's assets, tick, lot, minimum notional, fees and partition.

Pure: parses a TOML file into frozen `Market` values and converts between the API's
decimal strings and the engine's integers (ticks, lots, notional units).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from engine.domain import PPM, ResultCode

# The most orders one account may have open. The accounts worker keeps a user's state as
# one changelog record (streams.userlog), which must fit librdkafka's 1,000,000-byte
# message.max.bytes: a bench user with ~17,000 resting orders made a larger one, and the
# worker could not write its state and stopped, for every user of its partition. At 1,000
# open orders with 36-character ids and every remembered window full of the longest
# decisions the record measured 873 KB (tests/streams/test_open_order_cap.py), ~240 KB
# with short decisions.
MAX_OPEN_ORDERS = 1_000


class MarketsConfigError(ValueError):
    """The markets file is invalid; the message names the pair and the field."""


@dataclass(frozen=True)
class Asset:
    name: str
    decimals: int           # smallest unit = 10**-decimals


@dataclass(frozen=True)
class Market:
    pair: str               # Binance-style symbol, e.g. BTCUSDT
    base: str
    quote: str
    tick_size: Decimal      # quote per base per tick
    lot_size: Decimal       # base per lot
    min_notional: Decimal   # in quote
    maker_fee_ppm: int
    taker_fee_ppm: int
    partition: int
    trading: bool = True

    @property
    def unit_value(self) -> Decimal:
        """Quote value of one notional unit (one tick times one lot)."""
        return self.tick_size * self.lot_size

    @property
    def min_notional_units(self) -> int:
        units = self.min_notional / self.unit_value
        return int(units.to_integral_value(rounding="ROUND_CEILING"))

    # ---- conversions at the API edge: result codes, never exceptions ----
    def price_to_ticks(self, text: str | Decimal) -> int | ResultCode:
        return _to_steps(text, self.tick_size, ResultCode.TICK_VIOLATION, ResultCode.INVALID_PRICE)

    def qty_to_lots(self, text: str | Decimal) -> int | ResultCode:
        return _to_steps(text, self.lot_size, ResultCode.LOT_VIOLATION, ResultCode.INVALID_QUANTITY)

    def quote_to_units(self, text: str | Decimal) -> int | ResultCode:
        """A quote amount (MARKET by quoteOrderQty) in notional units, rounded down."""
        try:
            value = Decimal(text)
        except (InvalidOperation, TypeError, ValueError):
            return ResultCode.INVALID_QUANTITY
        if not value.is_finite() or value <= 0:
            return ResultCode.INVALID_QUANTITY
        return int(value / self.unit_value)

    def ticks_to_price(self, ticks: int) -> Decimal:
        return (self.tick_size * ticks).normalize() if ticks else Decimal(0)

    def lots_to_qty(self, lots: int) -> Decimal:
        return (self.lot_size * lots).normalize() if lots else Decimal(0)

    def units_to_quote(self, units: int) -> Decimal:
        return (self.unit_value * units).normalize() if units else Decimal(0)


def _to_steps(text: str | Decimal, step: Decimal, misaligned: ResultCode,
              invalid: ResultCode) -> int | ResultCode:
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        return invalid
    if not value.is_finite() or value <= 0:
        return invalid
    steps, rest = divmod(value, step)
    if rest != 0:
        return misaligned
    return int(steps)


@dataclass(frozen=True)
class MarketsConfig:
    assets: dict[str, Asset]
    markets: dict[str, Market]          # by pair
    fee_account: int
    allow_shared_partitions: bool
    # Orders one account may have open across all pairs (Binance's EXCHANGE_MAX_NUM_ORDERS).
    max_open_orders: int = MAX_OPEN_ORDERS

    @property
    def partitions(self) -> int:
        """Partition count for the pair-partitioned topics."""
        return max((m.partition for m in self.markets.values()), default=-1) + 1

    def pairs_on(self, partition: int) -> list[Market]:
        return sorted((m for m in self.markets.values() if m.partition == partition),
                      key=lambda m: m.pair)

    def market(self, pair: str) -> Market | None:
        return self.markets.get(pair)


def _decimal(pair: str, field: str, raw: object) -> Decimal:
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise MarketsConfigError(f"{pair}: {field} {raw!r} is not a decimal number") from None
    if not value.is_finite():
        raise MarketsConfigError(f"{pair}: {field} {raw!r} is not finite")
    return value


def _power_of_ten(value: Decimal) -> bool:
    if value <= 0:
        return False
    digits = value.normalize().as_tuple()
    return digits.digits == (1,)


def _rate_ppm(pair: str, field: str, raw: object) -> int:
    rate = _decimal(pair, field, raw)
    if rate < 0 or rate >= 1:
        raise MarketsConfigError(f"{pair}: {field} {raw!r} must be in [0, 1)")
    ppm = rate * PPM
    if ppm != ppm.to_integral_value():
        raise MarketsConfigError(f"{pair}: {field} {raw!r} is finer than one part per million")
    return int(ppm)


def parse_markets(data: dict) -> MarketsConfig:
    """Validate a parsed markets document; every error names what is wrong and where."""
    assets: dict[str, Asset] = {}
    for name, spec in (data.get("assets") or {}).items():
        decimals = spec.get("decimals") if isinstance(spec, dict) else None
        if not isinstance(decimals, int) or not 0 <= decimals <= 18:
            raise MarketsConfigError(f"asset {name}: decimals must be an integer 0..18")
        assets[name] = Asset(name, decimals)
    if not assets:
        raise MarketsConfigError("no [assets] declared")
    allow_shared = bool(data.get("allow_shared_partitions", False))
    fee_account = data.get("fee_account", 0)
    if not isinstance(fee_account, int) or fee_account < 0:
        raise MarketsConfigError("fee_account must be a non-negative integer user id")
    max_open = data.get("max_open_orders", MAX_OPEN_ORDERS)
    if type(max_open) is not int or not 1 <= max_open <= MAX_OPEN_ORDERS:
        raise MarketsConfigError(
            f"max_open_orders must be an integer 1..{MAX_OPEN_ORDERS} (an account's state, "
            "open orders included, is one changelog record, which must stay under Kafka's "
            "1 MB message limit)")

    markets: dict[str, Market] = {}
    by_partition: dict[int, str] = {}
    for spec in data.get("markets") or []:
        pair = spec.get("pair")
        if not isinstance(pair, str) or not pair.isalnum() or not pair.isupper():
            raise MarketsConfigError(f"pair {pair!r}: must be upper-case letters and digits")
        if pair in markets:
            raise MarketsConfigError(f"{pair}: declared twice")
        missing = [k for k in ("base", "quote", "tick_size", "lot_size", "partition")
                   if k not in spec]
        if missing:
            raise MarketsConfigError(f"{pair}: missing {', '.join(missing)}")
        base, quote = spec["base"], spec["quote"]
        for role, asset in (("base", base), ("quote", quote)):
            if asset not in assets:
                raise MarketsConfigError(f"{pair}: unknown {role} asset {asset!r}")
        if base == quote:
            raise MarketsConfigError(f"{pair}: base and quote are both {base}")
        tick = _decimal(pair, "tick_size", spec["tick_size"])
        lot = _decimal(pair, "lot_size", spec["lot_size"])
        for field, value in (("tick_size", tick), ("lot_size", lot)):
            if not _power_of_ten(value):
                raise MarketsConfigError(f"{pair}: {field} {value} is not a power of ten")
        if lot < Decimal(1).scaleb(-assets[base].decimals):
            raise MarketsConfigError(f"{pair}: lot_size {lot} is finer than {base}'s decimals")
        if tick * lot < Decimal(1).scaleb(-assets[quote].decimals):
            raise MarketsConfigError(
                f"{pair}: tick_size x lot_size {tick * lot} is finer than {quote}'s decimals")
        min_notional = _decimal(pair, "min_notional", spec.get("min_notional", 0))
        if min_notional < 0:
            raise MarketsConfigError(f"{pair}: min_notional must not be negative")
        partition = spec["partition"]
        if not isinstance(partition, int) or partition < 0:
            raise MarketsConfigError(f"{pair}: partition must be a non-negative integer")
        if partition in by_partition and not allow_shared:
            raise MarketsConfigError(
                f"{pair}: partition {partition} is already used by {by_partition[partition]} "
                "(set allow_shared_partitions = true to group pairs)")
        by_partition.setdefault(partition, pair)
        markets[pair] = Market(
            pair=pair, base=base, quote=quote, tick_size=tick, lot_size=lot,
            min_notional=min_notional,
            maker_fee_ppm=_rate_ppm(pair, "maker_fee", spec.get("maker_fee", 0)),
            taker_fee_ppm=_rate_ppm(pair, "taker_fee", spec.get("taker_fee", 0)),
            partition=partition, trading=bool(spec.get("trading", True)),
        )
    if not markets:
        raise MarketsConfigError("no [[markets]] declared")
    used = sorted(by_partition)
    if used != list(range(len(used))):
        gaps = sorted(set(range(used[-1] + 1)) - set(used))
        raise MarketsConfigError(f"partitions must be contiguous from 0; missing {gaps}")
    return MarketsConfig(assets, markets, fee_account, allow_shared, max_open)


def load_markets(path: str | Path) -> MarketsConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MarketsConfigError(f"markets file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MarketsConfigError(f"{path}: {exc}") from None
    return parse_markets(data)
