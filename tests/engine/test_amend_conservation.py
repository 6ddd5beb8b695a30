"""Amend never enlarges an order: the case that created money before the rule.

The script is the falsifying example Hypothesis found for
tests/streams/test_properties.py::test_conservation_under_random_traffic (stored in a
local .hypothesis, which git does not keep). User 1 buys BBBQQQ 8 @ 90; 7 lots fill
but their settlements have not reached accounts; the user amends to 4 @ 39. Accounts'
gate, seeing the full hold, forwards it. When the engine allowed `new_qty` above the
remaining 1, the order bought 3 more and settlement drove the hold negative. Now the
engine refuses the amend with AMEND_WOULD_ENLARGE and every balance adds up.
"""
from __future__ import annotations

import importlib.util

import pytest

from engine.domain import Amend, Rejected, ResultCode
from engine.engine import Engine
from tests.streams import test_properties as props
from tests.streams.sim import MARKETS, Exchange

IMPLS = ["python"] + (["c"] if importlib.util.find_spec("engine._cbook") else [])

_P = "place"
SCRIPT = [
    ("dup", 0), ("step", 1, 0),
    (_P, 1, "AAAQQQ", 0, 0, 0, 90, 0, 0, 0), (_P, 1, "AAAQQQ", 0, 0, 0, 90, 0, 0, 0),
    (_P, 1, "AAAQQQ", 0, 0, 0, 90, 0, 0, 0), (_P, 1, "AAAQQQ", 0, 0, 1, 90, 1, 0, 0),
    (_P, 1, "AAAQQQ", 0, 0, 1, 90, 1, 0, 0), (_P, 1, "BBBQQQ", 0, 0, 0, 90, 8, 0, 0),
    (_P, 2, "AAAQQQ", 0, 0, 0, 90, 1, 0, 0), (_P, 1, "AAAQQQ", 0, 0, 0, 13, 4, 0, 0),
    (_P, 1, "AAAQQQ", 0, 0, 1, 90, 1, 0, 0), (_P, 1, "BBBQQQ", 1, 0, 0, 90, 1, 0, 0),
    ("step", 1, 0),
    (_P, 1, "BBBQQQ", 0, 1, 0, 90, 0, 1, 0), ("deposit", 1, "AAA", 1),
    (_P, 1, "BBBQQQ", 0, 1, 0, 90, 0, 1, 0), (_P, 2, "BBBQQQ", 1, 1, 0, 90, 0, 180, 0),
    ("result", 0, False),
    (_P, 1, "AAAQQQ", 0, 0, 0, 90, 0, 0, 0), (_P, 1, "AAAQQQ", 0, 0, 1, 90, 1, 0, 0),
    (_P, 3, "AAAQQQ", 0, 0, 0, 90, 1, 0, 0), (_P, 3, "AAAQQQ", 0, 0, 0, 90, 1, 0, 0),
    ("dup", 0), ("result", 0, False),
    (_P, 2, "BBBQQQ", 1, 0, 0, 90, 4, 0, 0),
    ("deposit", 1, "AAA", 1), ("deposit", 1, "AAA", 1), ("deposit", 1, "BBB", 59),
    (_P, 1, "AAAQQQ", 0, 0, 0, 90, 0, 0, 0), (_P, 3, "BBBQQQ", 0, 0, 0, 90, 1, 875, 0),
    ("amend", 1, 17, 39, 4),
    *[(_P, 1, "AAAQQQ", 0, 0, 0, 90, 0, 0, 0)] * 7,
    (_P, 1, "AAAQQQ", 0, 0, 0, 90, 1, 0, 0), (_P, 1, "BBBQQQ", 1, 0, 0, 1, 4, 0, 0),
]
OPENING = [0, 541, 385, 0, 600, 31, 0, 0, 91]


@pytest.mark.parametrize("impl", IMPLS)
def test_amend_that_would_outrun_the_hold_is_refused_and_money_adds_up(impl):
    ex = Exchange()
    ex.engine = Engine(MARKETS, impl=impl)       # nothing has reached the engine yet
    seen = []
    apply = ex.engine.apply
    ex.engine.apply = lambda cmd: seen.append((cmd, apply(cmd))) or seen[-1][1]
    props.run(ex, SCRIPT, OPENING)
    ex.drain()
    # The amend in question reached the engine (accounts forwarded it) and was refused.
    amends = [(cmd, events) for cmd, events in seen if type(cmd) is Amend]
    assert [(c.new_price, c.new_qty) for c, _ in amends] == [(39, 4)]
    (_, events), = amends
    assert [(type(e), e.code) for e in events] == [(Rejected, ResultCode.AMEND_WOULD_ENLARGE)]
    # The property test's own checks, at quiescence and after everything is cancelled.
    assert ex.totals() == ex.expected_totals()
    props.check_live(ex)
    props.cancel_everything(ex)
    assert ex.totals() == ex.expected_totals()
    assert not ex.accounts.open_orders() and not ex.settlement.live
