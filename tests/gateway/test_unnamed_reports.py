"""A user's executionReports name the order by its client id even when the order's events
are folded before the reply that tells the gateway that id (they come by different
fetches: keel.events and keel.replies). Pure logic of gateway.state.Folding, with a hub
that records what it would send."""
from __future__ import annotations

from engine.domain import Accepted, Done, Trade
from engine.markets import load_markets
from gateway.state import HOLD_UNNAMED_S, Folding
from infra.settings import DEFAULT_MARKETS


class RecordingHub:
    def __init__(self, users) -> None:
        self.users = {u: {object()} for u in users}
        self.sent: list[tuple[int, dict]] = []

    def has(self, stream: str) -> bool:
        return False

    def publish_user(self, user_id: int, data: dict) -> int:
        self.sent.append((user_id, data))
        return 1


def _fill(seq: int, taker: int, maker: int) -> list:
    return [Trade("BTCUSDT", seq, 1000 + seq, seq, 3_000_000, 1_000, 0, maker, 8, taker, 7,
                  0, 1),
            Done("BTCUSDT", seq + 1, 1001 + seq, taker, 7)]


def _reply(order_id: int, cid: str) -> dict:
    return {"request_id": f"r{order_id}", "pair": "BTCUSDT", "order_id": order_id,
            "user_id": 7, "code": 0, "client_order_id": cid, "ts": 1}


def test_reports_wait_for_the_reply_that_names_the_order():
    hub = RecordingHub(users=[7])
    f = Folding(load_markets(DEFAULT_MARKETS), hub)
    now = [100.0]
    f.clock = lambda: now[0]
    f.on_event(Accepted("BTCUSDT", 1, 1000, 11, 7, 0, 0, 0, 3_000_000, 1_000, 0))
    for ev in _fill(2, taker=11, maker=5):
        f.on_event(ev)
    assert [d for u, d in hub.sent if u == 7] == []          # nothing with an empty id
    f.on_reply(_reply(11, "mine-11"))
    mine = [d for u, d in hub.sent if u == 7]
    assert [(d["x"], d["c"], d["i"]) for d in mine] == [
        ("NEW", "mine-11", 11), ("TRADE", "mine-11", 11), ("TRADE", "mine-11", 11)]
    assert [d["X"] for d in mine] == ["NEW", "PARTIALLY_FILLED", "FILLED"]  # as of each event

    # named first: reports go out at once
    hub.sent.clear()
    f.on_reply(_reply(21, "mine-21"))
    f.on_event(Accepted("BTCUSDT", 4, 1004, 21, 7, 0, 0, 0, 3_000_000, 1_000, 0))
    assert [(d["x"], d["c"]) for u, d in hub.sent] == [("NEW", "mine-21")]

    # never named (no reply will come): out as they are after the hold
    hub.sent.clear()
    f.on_event(Accepted("BTCUSDT", 5, 1005, 31, 7, 0, 0, 0, 3_000_000, 1_000, 0))
    f.release_unnamed()
    assert hub.sent == []
    now[0] += HOLD_UNNAMED_S
    f.release_unnamed()
    assert [(d["x"], d["c"], d["i"]) for u, d in hub.sent] == [("NEW", "", 31)]
    assert f.unnamed == {}


def test_a_filled_order_is_complete_only_once_its_depth_diff_is_folded():
    """A FULL/RESULT answer for an order that filled waits for the depth diff of its batch,
    so a REST depth read right after it shows what the order took (read-your-writes)."""
    f = Folding(load_markets(DEFAULT_MARKETS), RecordingHub(users=[]))
    f.on_event(Accepted("BTCUSDT", 1, 1000, 11, 7, 0, 0, 0, 3_000_000, 1_000, 0))
    for ev in _fill(2, taker=11, maker=5):
        f.on_event(ev)
    state = f.orders.orders[("BTCUSDT", 11)]
    assert state.final and not f.complete(state)
    f.on_depth({"pair": "BTCUSDT", "first_update_id": 1, "last_update_id": 3, "ts": 1003,
                "is_snapshot": False, "bids": [], "asks": [{"price": 3_000_000, "qty": 0}]})
    assert f.complete(state)
