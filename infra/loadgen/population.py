"""Who trades and how hard: the seed's population, and the load shape of each mode.
Pure (no I/O, no clock): the runner turns these plans into traffic.

Population (share of users -> share of orders):
  market makers  5%  -> ~60%  continuous cancel-replace quoting, 10-50 orders/s each
  retail        80%  -> ~20%  sporadic market and limit orders, many WebSocket
                              subscriptions, frequent balance checks
  bots          15%  -> ~20%  bursts, aggressive rate-limit probing, subscription churn
"""
from __future__ import annotations

from dataclasses import dataclass

MIX = {"mm": (0.05, 0.60), "retail": (0.80, 0.20), "bot": (0.15, 0.20)}
KINDS = tuple(MIX)
MM_RATE = (10.0, 50.0)          # orders/s one market maker sends, per the seed


@dataclass(frozen=True)
class Trader:
    kind: str                   # "mm", "retail" or "bot"
    index: int                  # within its kind
    orders_per_s: float         # at multiplier 1
    public_streams: int         # public WebSocket streams held open
    balance_checks_per_s: float


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    multiplier: float           # times the base order rate


def headcount(users: int) -> dict[str, int]:
    """Users per kind: the seed's shares, rounded, at least one of each."""
    if users < len(MIX):
        raise ValueError(f"need at least {len(MIX)} users (one of each kind)")
    mm = max(1, round(users * MIX["mm"][0]))
    bot = max(1, round(users * MIX["bot"][0]))
    return {"mm": mm, "retail": users - mm - bot, "bot": bot}


def population(users: int, orders_per_s: float) -> list[Trader]:
    """Split a total order rate over the population by each kind's order share."""
    if orders_per_s <= 0:
        raise ValueError("orders_per_s must be positive")
    counts = headcount(users)
    out = []
    for kind, n in counts.items():
        each = orders_per_s * MIX[kind][1] / n
        for i in range(n):
            out.append(Trader(
                kind, i, each,
                public_streams={"mm": 0, "retail": 2, "bot": 1}[kind],
                # Retail checks its balance often, within its tier's weight budget: an
                # account query weighs 20 of a standard key's 600 a minute.
                balance_checks_per_s=min(max(each, 0.1), 0.2) if kind == "retail" else 0.0))
    return out


def order_shares(traders: list[Trader]) -> dict[str, float]:
    total = sum(t.orders_per_s for t in traders)
    return {k: sum(t.orders_per_s for t in traders if t.kind == k) / total for k in KINDS}


def user_shares(traders: list[Trader]) -> dict[str, float]:
    return {k: sum(1 for t in traders if t.kind == k) / len(traders) for k in KINDS}


def mm_rate_warning(traders: list[Trader]) -> str | None:
    """The seed's market makers quote 10-50 orders/s each; say so when this plan does not."""
    rates = [t.orders_per_s for t in traders if t.kind == "mm"]
    low, high = MM_RATE
    if rates and not low <= rates[0] <= high:
        return (f"each market maker sends {rates[0]:.1f} orders/s (the seed's range is "
                f"{low:.0f}-{high:.0f}); change --users or --rate to match")
    return None


def phases(mode: str, seconds: float, step_seconds: float = 10.0,
           max_steps: int = 8) -> list[Phase]:
    """The load shape of a mode, as multipliers of the base rate.

    baseline  steady for `seconds`
    ramp      x1, x2, x4 ... each `step_seconds`, until a limit breaks (the runner stops
              early) or `max_steps` or `seconds` run out
    spike     steady, x10 at once, steady again to watch the recovery (1/3 each)
    soak      steady for `seconds`, sampled for growth
    """
    if mode in ("baseline", "soak"):
        return [Phase(mode, seconds, 1.0)]
    if mode == "ramp":
        steps = max(1, min(max_steps, int(seconds // step_seconds)))
        return [Phase(f"x{2 ** i}", step_seconds, float(2 ** i)) for i in range(steps)]
    if mode == "spike":
        third = seconds / 3
        return [Phase("before", third, 1.0), Phase("spike", third, 10.0),
                Phase("after", third, 1.0)]
    raise ValueError(f"unknown mode {mode!r}")
