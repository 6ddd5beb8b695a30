"""A user's state on the accounts changelog: a snapshot, and one record of what changed since.

Before, every batch wrote each user it touched whole (`users[uid]`, streams.ledger): open
orders, client ids and up to RECENT request ids. The value grew to ~6 KB a user within one
bench/streams.py run (~15 KB with a full request-id window), and rewriting it was the
growing cost of every request. Now a batch still writes ONE record per user it touched,
so a crash leaves each user either as the batch found it or as it left it, but mostly a
small one:

    "<uid>"     a snapshot: the whole user, as before, plus its generation "g"
    "<uid>:x"   the changes since the snapshot of generation "g": the core (b w s n d)
                whole, and every entry of o, c and r changed since ({id: value}, None for
                an entry dropped)

The changes record grows with each batch until it holds more entries than pay for a new
snapshot (`records`: when the changed entries exceed sqrt(2 x entries x changed this
batch), which keeps the bytes written per batch near their minimum); then the batch
writes a snapshot of the next generation instead, and the changes start again from none.
A user in the old format (a whole value without "g") is a snapshot of generation 0, so a
running deployment's changelog is read as it is and carried on from without a rewrite.

Recovery (`fold`, installed on the Faust table by `install`) applies the records in log
order: a snapshot replaces the user; a changes record of the user's generation replaces
its core and applies its entries (each changes record holds all of those before it since
the snapshot); one of another generation is older than the snapshot and is skipped. Log
compaction keeps the last snapshot and the last changes record, which is all it needs.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

ENTRIES = ("o", "c", "r")           # parts that grow: written entry by entry
CORE = ("b", "w", "s", "n", "d")    # small parts: written whole in every record
PARTS = (*CORE, *ENTRIES)


def new_user() -> dict:
    user: dict = {part: {} for part in PARTS}
    user["g"] = 0                   # no snapshot yet: generation 0 starts empty
    return user


def records(key: str, user: dict, touched: Iterable) -> Iterator[tuple[str, dict]]:
    """The one changelog record of `user` (table key `key`) after a batch that changed
    the entries `touched` ((part, id) pairs, repeats allowed)."""
    changes = user.get("x")
    if changes is None:
        changes = user["x"] = {"o": {}, "c": {}, "r": {}}
    k = 0
    for part, ident in touched:
        changes[part][ident] = user[part].get(ident)
        k += 1
    changed = len(changes["o"]) + len(changes["c"]) + len(changes["r"])
    size = len(user["o"]) + len(user["c"]) + len(user["r"])
    generation = user.get("g", 0)
    if changed * changed > 2 * size * max(k, 1):
        snapshot = {part: user[part] for part in PARTS}
        snapshot["g"] = user["g"] = generation + 1
        changes["o"], changes["c"], changes["r"] = {}, {}, {}
        yield key, snapshot
        return
    record = {part: user[part] for part in CORE}
    record.update(changes)
    record["g"] = generation
    yield f"{key}:x", record


def fold(data: dict, key: str, value) -> str:
    """Apply one changelog record to `data` (table key -> user), in log order. Returns
    the user's key."""
    uid, sep, _ = key.partition(":")
    if not sep:
        if value is None:
            data.pop(uid, None)
            return uid
        # a snapshot, an old-format value (generation 0), or a value Faust wrote itself
        user = {part: dict(value.get(part) or {}) for part in PARTS}
        user["g"] = value.get("g", 0)
        data[uid] = user
        return uid
    user = data.get(uid)
    if user is None:
        if value is None or value["g"] != 0:
            return uid              # changes to a snapshot no longer in the log
        user = data[uid] = new_user()
    if value is None or value["g"] != user["g"]:
        return uid                  # changes made before the user's snapshot
    for part in CORE:
        user[part] = value[part]
    changes = {}
    for part in ENTRIES:
        entries = user[part]
        for ident, entry in value[part].items():
            if entry is None:
                entries.pop(ident, None)
            else:
                entries[ident] = entry
        changes[part] = dict(value[part])
    user["x"] = changes             # the next changes record carries these on
    return uid


def install(table) -> None:
    """Recover `table` (a Faust Table over the memory store) with `fold`: its data holds
    one user per key, whichever format the changelog holds."""
    store = table.data
    rows, partitions = store.data, store._key_partition

    def apply_changelog_batch(batch) -> None:
        for event in batch:
            message = event.message
            uid = fold(rows, event.key, None if message.value is None else event.value)
            if uid in rows:
                partitions[uid] = message.partition
            else:
                partitions.pop(uid, None)

    table.apply_changelog_batch = apply_changelog_batch
