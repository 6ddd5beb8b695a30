-- The PostgreSQL sink's tables (sinks/postgres.py). Money stays in integers: prices in
-- ticks, quantities in lots, fees and quote amounts in notional units (tick x lot), as
-- on keel.events; the markets config converts them. ts columns are milliseconds since the
-- Unix epoch, copied from the events (to_timestamp(ts / 1000.0) for a timestamptz).

-- One row per trade; (pair, trade_id) is the natural key (trade ids start at 1 per pair),
-- so a replayed trade is a no-op.
CREATE TABLE trades (
    pair            text     NOT NULL,
    trade_id        bigint   NOT NULL,
    seq             bigint   NOT NULL,
    ts              bigint   NOT NULL,
    price           bigint   NOT NULL,
    qty             bigint   NOT NULL,
    taker_side      smallint NOT NULL,       -- engine.domain.Side: 0 BUY, 1 SELL
    maker_order_id  bigint   NOT NULL,
    maker_user_id   bigint   NOT NULL,
    taker_order_id  bigint   NOT NULL,
    taker_user_id   bigint   NOT NULL,
    maker_fee       bigint   NOT NULL,
    taker_fee       bigint   NOT NULL,
    PRIMARY KEY (pair, trade_id)
);
-- A user's trade history, whichever side they were on (see the view `fills`). A pair's
-- recent trades read the primary key backwards: trade ids rise with time per pair.
CREATE INDEX trades_maker_user ON trades (maker_user_id, ts DESC);
CREATE INDEX trades_taker_user ON trades (taker_user_id, ts DESC);

-- Current (and final) state of every order. Status names follow Binance's.
-- fillfactor leaves room on each page so the frequent fill updates stay HOT.
CREATE TABLE orders (
    pair          text     NOT NULL,
    order_id      bigint   NOT NULL,
    user_id       bigint   NOT NULL,
    side          smallint,                 -- NULL only for a REJECTED order (the event has no side)
    kind          smallint,                 -- engine.domain.OrderKind
    tif           smallint,                 -- engine.domain.TimeInForce
    price         bigint,                   -- current limit price (after amends)
    qty           bigint,                   -- quantity as placed (lots)
    quote_qty     bigint,                   -- MARKET by quote: quote amount (notional units)
    remaining     bigint,                   -- lots still open; at exit, what was left
    filled_qty    bigint   NOT NULL DEFAULT 0,   -- lots filled so far
    filled_quote  bigint   NOT NULL DEFAULT 0,   -- sum of price * qty of its fills (notional units)
    status        text     NOT NULL,        -- NEW PARTIALLY_FILLED FILLED CANCELED EXPIRED REJECTED
    reason        integer,                  -- Reason for CANCELED/EXPIRED, ResultCode for REJECTED
    created_ts    bigint   NOT NULL,
    updated_ts    bigint   NOT NULL,
    last_seq      bigint   NOT NULL,        -- seq of the last event applied to this row
    PRIMARY KEY (pair, order_id)
) WITH (fillfactor = 80);
CREATE INDEX orders_user ON orders (user_id, created_ts DESC);

-- A user's fills: each trade seen from both of its sides.
CREATE VIEW fills AS
    SELECT pair, trade_id, ts, maker_user_id AS user_id, maker_order_id AS order_id,
           'MAKER' AS role, (1 - taker_side)::smallint AS side, price, qty,
           maker_fee AS fee
      FROM trades
    UNION ALL
    SELECT pair, trade_id, ts, taker_user_id, taker_order_id, 'TAKER', taker_side, price,
           qty, taker_fee
      FROM trades;

-- Exactly-once bookkeeping: the last engine seq applied per pair, written in the same
-- transaction as the rows, so a replayed event (seq <= last_seq) is dropped.
CREATE TABLE sink_progress (
    sink        text        NOT NULL,
    pair        text        NOT NULL,
    last_seq    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, pair)
);

-- Ledger entries and the balances projection, loaded from keel.settlements and
-- keel.balances once accounts (issue 5) publishes them; created here so the schema is
-- complete. Natural keys: (pair, seq, user_id, asset) and (user_id, asset).
CREATE TABLE ledger_entries (
    pair      text     NOT NULL,
    seq       bigint   NOT NULL,
    user_id   bigint   NOT NULL,
    asset     text     NOT NULL,
    ts        bigint   NOT NULL,
    reason    smallint NOT NULL,            -- settlement reason (TRADE, RELEASE, ...)
    order_id  bigint,
    trade_id  bigint,
    available bigint   NOT NULL,            -- change of the spendable amount (smallest units)
    held      bigint   NOT NULL,            -- change of the held amount (smallest units)
    PRIMARY KEY (pair, seq, user_id, asset)
);
CREATE INDEX ledger_entries_user ON ledger_entries (user_id, asset, ts DESC);

CREATE TABLE balances (
    user_id    bigint NOT NULL,
    asset      text   NOT NULL,
    available  bigint NOT NULL,
    held       bigint NOT NULL,
    version    bigint NOT NULL,             -- keel.balances version: only a higher one wins
    ts         bigint NOT NULL,
    PRIMARY KEY (user_id, asset)
);
