"""The matching engine's domain: commands in, events out, result codes as values.

This module is the contract that every book implementation (the pure-Python
`engine.book.OrderBook`, the compiled `engine._cbook.OrderBook`, and the reference
book in tests/) must honour exactly: same events, same order, same snapshot bytes.

Units. Prices are integer ticks, quantities integer lots. A *notional unit* is one
tick times one lot (price * qty); min notional, quote amounts and fees are in
notional units. Conversion from decimals happens at the edge (engine.markets).

Semantics (all deterministic; nothing reads a clock or a random source):

place(order_id, user_id, side, kind, tif, price, qty, quote_qty, stp, ts)
  Validation, in this order; the first failure emits only Rejected(code):
    1. market not trading                            -> MARKET_CLOSED
    2. order_id already resting in this book           -> DUPLICATE_ORDER_ID
       (only resting orders count: a finished order's id may be reused by the book;
       the engine service drops a Place whose id is not above the last one of its
       residue order_id % 4096, and any non-Place command whose keel-source request
       offset is not above the last one a non-Place brought from its accounts
       partition, before any book sees it; a Place's header is never read:
       engine.service.duplicates)
    2b. side, kind, tif or stp outside its enum        -> INVALID_REQUEST
       (a malformed command, hence the request range)
    3. LIMIT / LIMIT_MAKER: price <= 0                 -> INVALID_PRICE
       MARKET: price < 0 (price is the protection price; 0 means no bound)
                                                       -> INVALID_PRICE
    4. LIMIT / LIMIT_MAKER: qty <= 0 or quote_qty != 0 -> INVALID_QUANTITY
       MARKET: exactly one of qty, quote_qty must be > 0, the other 0
                                                       -> INVALID_QUANTITY
    5. LIMIT / LIMIT_MAKER: price * qty < min_notional -> BELOW_MIN_NOTIONAL
       MARKET by quote: quote_qty < min_notional       -> BELOW_MIN_NOTIONAL
       (MARKET by base qty has no notional check: its price is unknown.)
    6. LIMIT_MAKER whose price would cross the best opposite price
       (buy price >= best ask, sell price <= best bid) -> POST_ONLY_WOULD_CROSS
    7. LIMIT with tif FOK that cannot be filled entirely -> FOK_NOT_FILLABLE.
       Fillability walks the opposite side in priority order at acceptable
       prices without changing anything: a maker of the same user with the
       taker's stp EXPIRE_TAKER or EXPIRE_BOTH ends the walk; with EXPIRE_MAKER it
       is skipped; otherwise (or stp NONE) its quantity counts.
  tif is ignored for LIMIT_MAKER (always rests, never takes) and MARKET (never rests,
  never checked for fillability).
  Then Accepted, then matching. The taker walks the opposite side best price
  first, FIFO within a level, while it has quantity left and the level price is
  acceptable (buy: level <= price; sell: level >= price; MARKET with price 0:
  any level). Trades execute at the maker's price.
    - Self-trade (maker.user_id == taker user_id and the *taker's* stp != NONE):
        EXPIRE_TAKER: Expired(taker, remaining, SELF_TRADE); matching stops.
        EXPIRE_MAKER: Expired(maker, maker remaining, SELF_TRADE); maker removed;
                      matching continues.
        EXPIRE_BOTH:  Expired(maker, ...), then Expired(taker, ...); stops.
      With stp NONE a user trades with itself like anyone else. The self-trade
      check comes before the by-quote "cannot afford one lot" stop below, and an
      Expired for a by-quote taker always carries its unspent quote.
    - Each match: traded = min(taker remaining, maker remaining); for MARKET by
      quote, traded = min(maker remaining, quote_left // level price) and when
      that is 0 matching stops. Emit Trade; if the maker is now empty, emit
      Done(maker) right after its Trade and remove it.
  After matching (unless the taker was already expired by STP):
    - taker fully filled (qty left 0, or a quote order whose quote is spent to
      the last unit): Done(taker);
    - LIMIT GTC / LIMIT_MAKER with quantity left: rests at the back of its level
      (no further event: Accepted already said so);
    - LIMIT IOC (and FOK, which cannot get here with quantity left) and MARKET
      with something left: Expired(taker, left, reason) with reason IOC_REMAINDER
      for LIMIT IOC and NO_LIQUIDITY for MARKET. For MARKET by quote, `left` in
      Expired is the unspent quote amount; for everything else it is lots.

cancel(order_id, user_id, ts)
  Resting order with that id and owner -> Cancelled(remaining, CANCELED); else
  Rejected(UNKNOWN_ORDER) (a filled, cancelled or foreign order is unknown).

amend(order_id, user_id, new_price, new_qty, ts)     (new_qty = new *remaining*)
  Market not trading -> MARKET_CLOSED (checked first, as for place);
  unknown or foreign -> Rejected(UNKNOWN_ORDER); new_price <= 0 -> INVALID_PRICE;
  new_qty <= 0 -> INVALID_QUANTITY; new_price * new_qty < min_notional ->
  BELOW_MIN_NOTIONAL; a price that would cross the best opposite price ->
  AMEND_WOULD_CROSS (use cancel + place to take liquidity); then an amend that
  would enlarge the order -> AMEND_WOULD_ENLARGE: new_qty > remaining, or, for a
  BUY, new_price * new_qty > price * remaining (its current price and remaining).
  Why: accounts holds funds per order and cannot see fills still in flight, so
  only the engine, which sees the true remaining, can refuse an amend that would
  spend more than the hold. Settlement's hold for a live buy is always >= price *
  remaining (fills happen at <= its limit), so an order whose lots (sell) or
  notional (buy) never rise can never spend more than it holds, however often it
  is amended. To add size: cancel + place.
  Same price and new_qty <= remaining: Amended(priority_kept=True), stays in place.
  Otherwise (a price change): moves to the back of the new level,
  Amended(priority_kept=False).

cancel_all(user_id, ts)
  Cancelled(remaining, CANCEL_ALL) for every resting order of the user in this
  book, in ascending order_id. No order: no event.

set_trading(trading, ts)
  MarketStatus(trading), emitted even when the status does not change. While not trading, place and amend are rejected with
  MARKET_CLOSED; cancel and cancel_all still work (users can always leave).

Sequence numbers. Each book owns its pair's `seq`: every event gets the next one,
starting at 1, so seq rises by exactly 1 per pair with no gap. Trade ids likewise
start at 1 per pair.

Fees. fee = ceil(price * qty * rate_ppm / 1_000_000) in notional units, charged in
the quote asset, computed per Trade for the maker (maker_fee_ppm) and the taker
(taker_fee_ppm). Rounding up is the single rule: the fee account never pays for
rounding, and a fee is 0 only when the rate is 0.

Snapshot (engine.snapshot.encode/decode; identical bytes from every implementation):
    b"KEEL" u16 version=1 u32 n_books, then per book in ascending pair name:
    u16 len + pair utf-8, u8 trading, u64 seq, u64 last_trade_id, u32 n_orders,
    then n_orders records "<qqBqqB" (order_id, user_id, side, price, remaining,
    stp): bids best price first, then asks best price first, FIFO within a level.
    All little-endian. state_hash() = sha256(snapshot bytes).hexdigest().
"""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class Side(IntEnum):
    BUY = 0
    SELL = 1


class OrderKind(IntEnum):
    LIMIT = 0
    MARKET = 1
    LIMIT_MAKER = 2


class TimeInForce(IntEnum):
    GTC = 0
    IOC = 1
    FOK = 2


class STP(IntEnum):
    """Self-trade prevention, named as Binance names it; the taker's mode applies."""

    NONE = 0
    EXPIRE_TAKER = 1
    EXPIRE_MAKER = 2
    EXPIRE_BOTH = 3


class Reason(IntEnum):
    """Why an order left the book without filling (Cancelled / Expired)."""

    CANCELED = 0        # the owner cancelled it
    CANCEL_ALL = 1      # cancel_all for the user on this pair
    IOC_REMAINDER = 2   # LIMIT IOC quantity that found no match
    NO_LIQUIDITY = 3    # MARKET remainder: book exhausted or protection price reached
    SELF_TRADE = 4      # self-trade prevention


class ResultCode(IntEnum):
    """Business outcomes as values. The range tells the stage that decided:
    -1xxx request (gateway, parsing), -2xxx risk (accounts), -3xxx engine.
    An exception anywhere means a bug, never a business rejection."""

    OK = 0
    # -1xxx: the request itself
    INVALID_REQUEST = -1100
    UNKNOWN_PAIR = -1121
    # -2xxx: risk gate (accounts)
    INSUFFICIENT_BALANCE = -2010
    DUPLICATE_CLIENT_ORDER_ID = -2020
    DUPLICATE_REQUEST = -2021
    NOT_ORDER_OWNER = -2022
    UNKNOWN_ASSET = -2023
    TOO_MANY_OPEN_ORDERS = -2024        # the account has max_open_orders open already
    # -30xx: engine filters
    TICK_VIOLATION = -3001
    LOT_VIOLATION = -3002
    BELOW_MIN_NOTIONAL = -3003
    INVALID_PRICE = -3004
    INVALID_QUANTITY = -3005
    MARKET_CLOSED = -3006
    # -31xx: engine book
    UNKNOWN_ORDER = -3101
    DUPLICATE_ORDER_ID = -3102
    POST_ONLY_WOULD_CROSS = -3103
    FOK_NOT_FILLABLE = -3104
    SELF_TRADE_PREVENTED = -3105
    AMEND_WOULD_CROSS = -3106
    AMEND_WOULD_ENLARGE = -3107


# ---- commands (what the engine consumes; `pair` routes to a book) ----

class Place(NamedTuple):
    pair: str
    order_id: int
    user_id: int
    side: int
    kind: int
    tif: int
    price: int          # limit price, or protection price for MARKET (0 = none)
    qty: int            # lots; 0 for MARKET by quote
    quote_qty: int      # notional units for MARKET by quote, else 0
    stp: int
    ts: int


class Cancel(NamedTuple):
    pair: str
    order_id: int
    user_id: int
    ts: int


class Amend(NamedTuple):
    pair: str
    order_id: int
    user_id: int
    new_price: int
    new_qty: int
    ts: int


class CancelAll(NamedTuple):
    pair: str
    user_id: int
    ts: int


class SetTrading(NamedTuple):
    pair: str
    trading: bool
    ts: int


Command = Place | Cancel | Amend | CancelAll | SetTrading


# ---- events (what the engine emits; every one carries pair and seq) ----

class Accepted(NamedTuple):
    pair: str
    seq: int
    ts: int
    order_id: int
    user_id: int
    side: int
    kind: int
    tif: int
    price: int
    qty: int
    quote_qty: int


class Rejected(NamedTuple):
    pair: str
    seq: int
    ts: int
    order_id: int
    user_id: int
    code: int


class Trade(NamedTuple):
    pair: str
    seq: int
    ts: int
    trade_id: int
    price: int
    qty: int
    taker_side: int
    maker_order_id: int
    maker_user_id: int
    taker_order_id: int
    taker_user_id: int
    maker_fee: int
    taker_fee: int


class Cancelled(NamedTuple):
    pair: str
    seq: int
    ts: int
    order_id: int
    user_id: int
    remaining: int
    reason: int


class Amended(NamedTuple):
    pair: str
    seq: int
    ts: int
    order_id: int
    user_id: int
    price: int
    qty: int
    priority_kept: bool


class Expired(NamedTuple):
    pair: str
    seq: int
    ts: int
    order_id: int
    user_id: int
    remaining: int
    reason: int


class Done(NamedTuple):
    pair: str
    seq: int
    ts: int
    order_id: int
    user_id: int


class MarketStatus(NamedTuple):
    pair: str
    seq: int
    ts: int
    trading: bool


Event = Accepted | Rejected | Trade | Cancelled | Amended | Expired | Done | MarketStatus

EVENT_TYPES: tuple[type, ...] = (
    Accepted, Rejected, Trade, Cancelled, Amended, Expired, Done, MarketStatus,
)

PPM = 1_000_000


def fee(price: int, qty: int, rate_ppm: int) -> int:
    """The single rounding rule: ceil(price * qty * rate / 1e6), in notional units."""
    return -((-price * qty * rate_ppm) // PPM)
