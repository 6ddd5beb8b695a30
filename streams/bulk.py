"""Whole fetches handed to an agent, instead of Faust's delivery record by record.

Faust's fetch loop turns every fetched record into a Message and an Event and passes it
through an async generator, a lock, the flow-control and producer checks, a channel
queue and the stream's iterator before the agent sees it. py-spy put that at ~30% of
the accounts worker's CPU (py-spy --gil on `bench/streams.py --only accounts`,
2026-11-23).
A `Lane` takes the records of its topics as the consumer thread fetched them: per
partition one `Chunk` (the aiokafka records, untouched), queued for the agent, which
takes them in batches (`Lane.batches`, take_batches' closing rules).

What Faust's path guaranteed and this keeps:
- order per partition, and only records at or past the partition's read offset (a seek
  to the committed offset resets it, as for Faust's own streams);
- a rebalance: the lane is one of the app's flow-controlled queues, so what it holds is
  dropped when Faust clears them (revoke, stop); records of a previous generation are
  never handed out; a chunk handed out is tracked in the consumer's unacked set until
  acked, so a revoke waits for the batch in hand (Consumer.wait_empty) before committing;
- acks: `Taken.ack` marks each partition's highest offset acked, which is all Faust's
  commit reads (compat item 6), after the batch is durable (streams.app.run_batches);
- backpressure: the fetch loop stops fetching while the lane holds `limit` records.
Records of other topics (table changelogs in recovery, other agents) take Faust's path.
"""
from __future__ import annotations

import asyncio
from collections import Counter, deque
from operator import attrgetter

from faust.types import TP
from faust.types.tuples import ack_lock

from streams.acks import mark_acked

_lanes: dict = {}                   # topic name -> its Lane
_installed = False
_key = attrgetter("key")


class Chunk:
    """Fetched records of one partition, in offset order. It is also what table writes
    and sends see as the current event while its records are handled (only its
    partition is read: the changelog partition, the transaction's input partition), and
    what the consumer's unacked set holds until the records are acked."""

    __slots__ = ("tp", "records", "generation", "acked", "refcount", "tracked",
                 "__weakref__")

    def __init__(self, tp, records: list, generation: int) -> None:
        self.tp = tp
        self.records = records
        self.generation = generation
        self.acked = False
        self.refcount = 1
        self.tracked = False

    @property
    def message(self):
        return self

    @property
    def topic(self) -> str:
        return self.tp.topic

    @property
    def partition(self) -> int:
        return self.tp.partition

    @property
    def offset(self) -> int:
        return self.records[0].offset

    def split(self, n: int) -> Chunk:
        """Keep the first `n` records; return the rest as a chunk of its own."""
        rest = Chunk(self.tp, self.records[n:], self.generation)
        del self.records[n:]
        return rest

    def __repr__(self) -> str:
        return (f"<Chunk {self.tp.topic}[{self.tp.partition}] "
                f"{self.records[0].offset}..{self.records[-1].offset}>")


class Taken:
    """A batch: chunks in the order they were fetched, `size` records in all."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        for chunk in self.chunks:
            yield from chunk.records

    def __getitem__(self, i: int):
        """The first (0) or last (-1) record (for log lines)."""
        if i == 0:
            return self.chunks[0].records[0]
        if i == -1:
            return self.chunks[-1].records[-1]
        raise IndexError(i)

    def ack(self, consumer) -> int:
        """Ack every record of the batch (as streams.acks.ack_batch); how many."""
        tops: dict = {}
        unacked = consumer._unacked_messages
        count = 0
        with ack_lock:
            for chunk in self.chunks:
                if chunk.acked:
                    continue
                chunk.acked = True
                chunk.refcount = 0
                unacked.discard(chunk)
                count += len(chunk.records)
                last = chunk.records[-1].offset
                if last > tops.get(chunk.tp, -1):
                    tops[chunk.tp] = last
            mark_acked(consumer, tops, count)
        return count


class Lane:
    """The fetched records of `topics`, queued for one agent (see the module docstring)."""

    def __init__(self, app, topics, limit: int = 10_000) -> None:
        self.app = app
        self.limit = limit
        self.chunks: deque[Chunk] = deque()
        self.size = 0                       # records queued
        self.arrivals = 0                   # chunks ever queued (the idle rule)
        self._arrived: asyncio.Future | None = None
        self._room: asyncio.Future | None = None
        for topic in topics:
            _lanes[topic] = self
        app.flow_control.manage_queue(self)      # cleared with Faust's stream queues

    # ---- the fetch loop's side ----

    def put(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk.records)
        self.arrivals += 1
        _wake(self._arrived)

    def clear(self) -> None:
        """Drop what is queued (Faust's flow_control.clear: a revoke, a stop)."""
        self.chunks.clear()
        self.size = 0
        _wake(self._room)

    async def room(self) -> None:
        """Return once the lane holds fewer than `limit` records."""
        while self.size >= self.limit:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None

    # ---- the agent's side ----

    async def _arrival(self, timeout: float) -> None:
        self._arrived = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._arrived, timeout)
        except TimeoutError:
            pass
        finally:
            self._arrived = None

    def _take(self, batch: Taken, max_: int, per_key: int | None, keys: Counter) -> bool:
        """Move queued chunks into `batch` up to its caps; True if a cap closed it."""
        consumer = self.app.consumer
        generation = self.app.consumer_generation_id
        unacked = consumer._unacked_messages
        chunks = self.chunks
        while chunks:
            chunk = chunks[0]
            if chunk.generation != generation:
                chunks.popleft()            # fetched before a rebalance: read again after
                self.size -= len(chunk.records)
                continue
            room = max_ - batch.size
            cut = room if len(chunk.records) >= room else None
            if per_key is not None and room > 0:
                cut = _key_cut(chunk.records, cut, per_key, keys)
            if cut is not None and cut <= 0:
                _wake(self._room)
                return True                 # full already
            if cut is not None and cut < len(chunk.records):
                chunks[0] = chunk.split(cut)
            else:
                chunks.popleft()
            self.size -= len(chunk.records)
            chunk.tracked = True
            unacked.add(chunk)
            batch.chunks.append(chunk)
            batch.size += len(chunk.records)
            if cut is not None:
                _wake(self._room)
                return True
        _wake(self._room)
        return False

    async def batches(self, max_: int, within: float, idle: float = 0.001,
                      per_key: int | None = None, backlog: tuple[int, float] | None = None,
                      pending=None, stopped=lambda: False):
        """Yield `Taken` batches, closed as streams.batches.take_batches closes them: as
        soon as no chunk arrives for `idle` seconds, at `max_` records, `within` seconds
        after it opened (`backlog`'s seconds once it holds `backlog`'s count), or when
        `per_key` of its records share a key. `pending` (streams.app._pipelined) keeps a
        batch open until what the caller waits for is done, and closes it at once when
        nothing is queued and nothing is pending (when it returns None, the batch closes
        as without it). The caller acks each batch."""
        loop = asyncio.get_running_loop()
        backlog = backlog or (max_, within)
        while not stopped():
            if not self.chunks:
                await self._arrival(1.0)
                continue
            batch, keys = Taken(), Counter()
            first = loop.time()
            while not (capped := self._take(batch, max_, per_key, keys)):
                limit = within if batch.size < backlog[0] else backlog[1]
                if loop.time() - first >= limit:
                    break
                if pending is not None and pending() == []:
                    break             # nothing more queued, and the caller can write now
                seen = self.arrivals
                await asyncio.sleep(idle)
                if self.arrivals == seen:
                    break
            waits = pending() if pending is not None else None
            if waits:
                await asyncio.wait(waits)
                if not capped:
                    self._take(batch, max_, per_key, keys)  # what came meanwhile, to a cap
            if batch.size:
                yield batch


def _key_cut(records: list, cut: int | None, per_key: int, keys: Counter) -> int | None:
    """Count the keys of `records[:cut]` into `keys`; if one reaches `per_key`, the cut
    just after the record that reaches it (and only those records counted)."""
    part = records if cut is None else records[:cut]
    keys.update(map(_key, part))
    if max(keys.values(), default=0) < per_key:
        return cut
    keys.subtract(map(_key, part))
    for i, record in enumerate(part):
        key = record.key
        if keys[key] >= per_key:
            return i                # at the cap already (a batch taking more after it)
        keys[key] += 1
        if keys[key] >= per_key:
            return i + 1
    return cut


def _wake(fut: asyncio.Future | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def install() -> None:
    """Route the fetches of every Lane's topics to it (idempotent; before the app starts)."""
    global _installed
    if _installed:
        return
    _installed = True
    from faust.transport.consumer import CONSUMER_FETCHING, Consumer

    drain_each = Consumer._drain_messages

    async def drain(self, fetcher) -> None:
        if not _lanes:
            return await drain_each(self, fetcher)
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        app = self.app
        lanes = set(_lanes.values())
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                if self.should_stop:
                    continue
                records, active = await self._wait_next_records(1.0)
                if records is None or self.should_stop:
                    unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning(f"exception performing seek when flow not "
                                         f"active {exc}")
                    unset_flag(CONSUMER_FETCHING)
                    continue
                generation = app.consumer_generation_id
                for tp, fetched in records.items():
                    if not self.flow_active or app.consumer_generation_id != generation:
                        break
                    if not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    lane = _lanes.get(tp.topic)
                    if lane is None:
                        await _deliver_each(self, callback, tp, fetched)
                        continue
                    last = read_offset[tp]
                    if last is not None and fetched[0].offset < last:
                        fetched = [r for r in fetched if r.offset >= last]
                        if not fetched:
                            continue
                    read_offset[tp] = fetched[-1].offset
                    lane.put(Chunk(TP(tp.topic, tp.partition), fetched, generation))
                unset_flag(CONSUMER_FETCHING)
                for lane in lanes:
                    await lane.room()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    Consumer._drain_messages = drain


async def _deliver_each(consumer, callback, tp, fetched) -> None:
    """Faust's own per-record delivery (Consumer._drain_messages' inner loop) for a
    partition no lane takes."""
    to_message = consumer._to_message
    read_offset = consumer._read_offset
    for i, record in enumerate(fetched, 1):
        if not consumer.flow_active:
            return
        if not i % 100:
            await asyncio.sleep(0)
        offset = record.offset
        last = read_offset[tp]
        if last is None or offset >= last:
            gap = offset - (last or 0)
            if gap > 1 and last and consumer.app.topics.acks_enabled_for(record.topic):
                await consumer._add_gap(tp, last + 1, offset)
            commit_every = consumer._commit_every
            if commit_every is not None and consumer._n_acked >= commit_every:
                consumer._n_acked = 0
                await consumer.commit()
            await consumer.wait_first(callback(to_message(tp, record)),
                                      consumer.suspend_flow.wait())
            read_offset[tp] = offset

