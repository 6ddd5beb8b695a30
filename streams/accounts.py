"""accounts: the per-user risk gate as a Faust agent (`keel streams accounts`).

One agent reads keel.requests and keel.settlements (co-partitioned by user) in partition
order; the rules live in streams.ledger, each user's state one value of a changelog-backed
table (one changelog record a user per batch, durable before the batch's outputs are
sent: a snapshot or its changes since, streams.userlog). Outputs:
accepted commands to keel.orders on the pair's partition, answers to keel.replies, every
balance change to keel.balances, undecodable records to keel.dlq.
"""
from __future__ import annotations

from engine.markets import MarketsConfig
from infra.settings import Settings
from schemas.codec import Codec
from streams import bulk, userlog
from streams.app import app, keel_topic, queued, run_batches, table
from streams.gate import Gate
from streams.ledger import BATCH_PER_USER, Accounts
from streams.metrics import StreamMetrics
from streams.staged import Staged
from streams.units import Units
from streams.wire import Wire

# Records a batch takes at most. Each batch pays fixed costs: three broker round trips, a
# changelog record per user it touched, Faust's fetches and commit. bench/streams.py
# --only accounts (20,800 requests, 200 users), alternated at load 2.6-4.7 (2026-11-23):
# batches of at most 2,000 records / 50 ms gave 9.7/10.2/7.8k requests/s at 85-98 us of
# worker CPU each, 2,000 / 150 ms 7.2/9.9/2.1k at 77-105 us, 5,000 / 150 ms
# 12.8/11.6/11.7/9.4/12.4/13.2k at 64-79 us. A batch still holds at most BATCH_PER_USER
# records of one user (the decisions each user keeps, ledger).
MAX_BATCH = 5_000
# A batch that holds this many records within KEEL_ACCOUNTS_BATCH_WAIT_MS (a drain gives
# 600-1,600 in 50 ms, 2,000 requests/s ~100) may gather for up to this long: the 150 ms
# that fill MAX_BATCH in a drain. Below it a batch closes as before, so a live stream's
# batches are unchanged (streams.batches). Same bench, alternated at load 2.7-3.6: HEAD
# 7.2/6.0k requests/s (124/134 us), this rule at 500 records 10.3/6.0k (96/122 us), every
# batch allowed 150 ms 10.8/8.0k (82/95 us).
BACKLOG = (200, 0.15)


def register(settings: Settings, markets: MarketsConfig, metrics: StreamMetrics) -> None:
    codec = Codec.from_settings(settings)
    wire = Wire(codec)                     # the codec's bytes, without its schema walk
    units = Units.from_markets(markets)
    n = settings.user_partitions
    requests_name, settlements_name = settings.topic("requests"), settings.topic("settlements")
    source = app.topic(requests_name, settlements_name, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw", partitions=n,
                       internal=False)
    orders = keel_topic(settings, "orders", markets.partitions)
    replies = keel_topic(settings, "replies", n)
    balances = keel_topic(settings, "balances", n)
    dlq = keel_topic(settings, "dlq", 1)
    users_table = table("users", n)
    userlog.install(users_table)            # recovered from either changelog format
    users = Staged(users_table)
    accounts = Accounts(units, users)
    users.records = accounts.changelog_records      # a user's core and changed entries

    checks = Gate(codec, wire, units, accounts, n, requests_name,
                (orders, replies, balances, dlq), queued().append,
                on_dead_letter=metrics.dead_letters.inc)
    handle = checks.handle

    async def end_batch() -> None:
        accounts.end_batch()
        metrics.inputs.inc(checks.inputs)
        metrics.outputs.inc(checks.outputs)
        checks.inputs = checks.outputs = 0

    # A batch closes as soon as no more records are queued (streams.batches); this caps
    # how long after its first record it may keep taking a steady stream of them: larger
    # batches (each costs three broker round trips) against the time a request waits.
    # A batch that reaches BACKLOG[0] records is draining a backlog and may gather longer.
    within = float(settings.extra.get("KEEL_ACCOUNTS_BATCH_WAIT_MS", "50")) / 1000
    # A live stream's batches run one after another (KEEL_ACCOUNTS_PIPELINE=0: all do;
    # =1: every batch pipelined, streams.app._pipelined: while one batch makes its round
    # trips the next is gathered and handled, and stays open until the previous one's
    # state is durable). Pipelining every batch pays under heavy load and costs on a
    # quiet machine, where overlapped flushes take longer on tansu (outputs 25-34 ms a
    # batch against 11-13) and CPU per order at 2,000/s is ~10-25% higher.
    # bench/streams.py --only latency at 2,000/s, runs alternated: load 9-12, p50
    # 89/103/102 ms pipelined against 150/170/160, p99 455/292/342 against 1299/966/769;
    # load 2-3, p50 60/186/122/70/116 against 59/84/98/156/71 (noise). bench/gateway.py,
    # 500 orders/s POST -> fill on the WebSocket, load 0.5-2.3: pipelined e2e p50
    # 128/105/95/93 ms, p99 236/169/270/166; sequential p50 53/56/62, p99 82/119/111.
    # KEEL_ACCOUNTS_PIPELINE=backlog (the default): only a batch of BACKLOG[0] records or
    # more (a backlog's, never one of a 2,000/s stream's ~100) has the next one taken and
    # handled during its round trips. Traced in a drain (bench/streams.py --only
    # accounts, 5,000-record batches, load ~2), a sequential batch's handling took
    # 213-400 ms and its round trips ~90-130 ms more, with the worker idle meanwhile.
    pipeline = settings.extra.get("KEEL_ACCOUNTS_PIPELINE", "backlog")
    pipelined = pipeline in ("1", "backlog")
    overlap_from = BACKLOG[0] if pipeline == "backlog" else 0
    # The agent takes its records as whole fetches (streams.bulk), not through Faust's
    # delivery record by record, unless KEEL_ACCOUNTS_BULK=0 (bench/streams.py --only
    # accounts, alternated, load 3.8-8.3: 224-242 -> 84-100 worker CPU us a request; the
    # commit that made streams/bulk.py has the runs).
    lane = None
    if settings.extra.get("KEEL_ACCOUNTS_BULK", "1") == "1":
        lane = bulk.Lane(app, (requests_name, settlements_name), limit=2 * MAX_BATCH)

    async def handle_event(event) -> None:
        handle(event.message)

    @app.agent(source, name="accounts")
    async def gate(stream):
        await run_batches(stream, handle if lane is not None else handle_event,
                          max_batch=MAX_BATCH, within=within, staged=(users,),
                          after_batch=end_batch, state_first=True, pipelined=pipelined,
                          per_key=BATCH_PER_USER, backlog=BACKLOG, lane=lane,
                          overlap_from=overlap_from)
