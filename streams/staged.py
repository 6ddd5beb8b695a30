"""A batch's view of a Faust table: reads fall through, writes wait for `write_back`.

The workers run at least once (see streams.app.run_batches): a batch's outputs must be
durable before the table state that says they happened, so every table write of a batch
is held here and written to the changelog only after the outputs are flushed. A crash
before that point replays the batch against the old state (the same outputs again, which
their consumers drop); a crash during it leaves each key either old or new, never half,
because one key holds everything one record changes (a user, an order, a pair).

With `private=True` a read hands out a deep copy that the batch may mutate in place; the
key is then written back whether or not it changed.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, MutableMapping

from faust import current_event

from streams import compat

_GONE = object()
_UNSET = object()


class Staged(MutableMapping):
    def __init__(self, table, private: bool = False, records=None) -> None:
        self.table = table
        self.private = private
        # fn(key, value) -> changelog records, when the value is written as several
        # (compat.changelog_writer; the accounts' users, streams.userlog)
        self.records = records
        self.pending: dict = {}          # key -> [value or _GONE, the event that wrote it]
        self._writer = _UNSET            # compat.changelog_writer, once the app is set up

    def __getitem__(self, key):
        entry = self.pending.get(key)
        if entry is not None:
            if entry[0] is _GONE:
                raise KeyError(key)
            return entry[0]
        value = self.table[key]          # KeyError when absent
        if self.private:
            value = copy.deepcopy(value)
            self.pending[key] = [value, current_event()]
        return value

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        entry = self.pending.get(key)
        if entry is not None:
            return entry[0] is not _GONE
        return key in self.table

    def __setitem__(self, key, value) -> None:
        self.pending[key] = [value, current_event()]

    def __delitem__(self, key) -> None:
        if key not in self:
            raise KeyError(key)
        self.pending[key] = [_GONE, current_event()]

    def __iter__(self) -> Iterator:
        keys = {k for k in self.table.keys() if k not in self.pending}
        keys.update(k for k, (v, _) in self.pending.items() if v is not _GONE)
        return iter(keys)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def write_back(self, processing) -> int:
        """Write every pending key to the table (its changelog) on the partition of the
        event that last wrote it; `processing(event)` makes that event current."""
        n = len(self.pending)
        fast = self._writer
        if fast is _UNSET:
            fast = self._writer = compat.changelog_writer(self.table, self.records)
        for key, (value, event) in self.pending.items():
            if fast is not None and value is not _GONE:
                fast(key, value, event.message.partition)
                continue
            with processing(event):
                if value is _GONE:
                    if key in self.table:
                        del self.table[key]
                else:
                    self.table[key] = value
        self.pending.clear()
        return n
