"""What the load generator saw, second by second: requests by outcome, order->ack and
order->fill latencies, and the stack's own figures sampled from its metrics endpoints.
Pure bookkeeping; the caller passes the time."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# An outcome is one of these; only "error" counts against the run.
OUTCOMES = ("ok", "rejected", "refused", "error")


def classify(status: int, body: object, *, probing: bool = False,
             cancelling: bool = False) -> tuple[str, str]:
    """(outcome, detail) of one REST answer.

    ok        2xx
    rejected  a business answer the trader must expect: a cancel that lost the race with
              a fill or overtook its own order's placement (-2011), a market order meeting an empty book side (-2010 liquidity)
    refused   429 on the trader's own API-key limit while it probes that limit (bots); a
              429 on the IP or global limit is an error (the stack is configured below
              the load asked for)
    error     everything else: transport failure, 5xx (-1007 timeouts), other 4xx
    """
    code = body.get("code") if isinstance(body, dict) else None
    msg = str(body.get("msg", "")) if isinstance(body, dict) else str(body)[:80]
    if 200 <= status < 300:
        return "ok", ""
    if status == 429 and probing and "API key" in msg:
        return "refused", "429 API key limit"
    if cancelling and code == -2011:
        return "rejected", "cancel of an order no longer (or not yet) open (-2011)"
    if code == -2010 and "liquidity" in msg:
        return "rejected", "no liquidity (-2010)"
    return "error", f"{status} {code} {msg}".strip()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Second:
    orders: int = 0                     # order requests answered (place + cancel)
    sent: int = 0                       # order requests the load generator sent
    held: int = 0                       # orders due but held back (a bot told to back off)
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    ack_ms: list[float] = field(default_factory=list)
    fill_ms: list[float] = field(default_factory=list)
    target_orders_per_s: float = 0.0
    phase: str = ""


class Recorder:
    def __init__(self, started: float) -> None:
        self.started = started
        self.seconds: list[Second] = []
        self.errors: dict[str, int] = {}       # detail -> count
        self.rejections: dict[str, int] = {}
        self.samples: list[dict] = []          # stack figures, see stack.StackSampler
        self.fills_unmatched = 0
        self.capped = 0                        # requests that waited for an in-flight slot
        self.current = (0.0, "")               # (target orders/s, phase) from now on

    def at(self, now: float) -> Second:
        i = max(0, int(now - self.started))
        while len(self.seconds) <= i:
            # Every second carries the target of the phase it falls in, whether or not
            # the sampler woke up during it (a slow scrape must not halve the target).
            target, phase = self.current
            self.seconds.append(Second(target_orders_per_s=target, phase=phase))
        return self.seconds[i]

    def sent(self, now: float) -> None:
        self.at(now).sent += 1

    def held(self, now: float, n: int = 1) -> None:
        self.at(now).held += n

    def request(self, now: float, outcome: str, detail: str = "", *, order: bool = False,
                ack_ms: float | None = None) -> None:
        s = self.at(now)
        s.requests[outcome] += 1
        if order and outcome in ("ok", "rejected"):
            s.orders += 1
        if ack_ms is not None and outcome == "ok":
            s.ack_ms.append(ack_ms)
        if outcome == "error":
            self.errors[detail] = self.errors.get(detail, 0) + 1
        elif outcome == "rejected":
            self.rejections[detail] = self.rejections.get(detail, 0) + 1

    def fill(self, now: float, latency_ms: float) -> None:
        self.at(now).fill_ms.append(latency_ms)

    def target(self, now: float, orders_per_s: float, phase: str) -> None:
        """From `now` on the load aims at `orders_per_s` (the phase's target)."""
        self.current = (orders_per_s, phase)
        s = self.at(now)
        s.target_orders_per_s, s.phase = orders_per_s, phase

    def totals(self, first: int = 0, last: int | None = None) -> dict:
        """Figures over seconds [first, last)."""
        window = self.seconds[first:last]
        n = max(1, len(window))
        requests = {k: sum(s.requests[k] for s in window) for k in OUTCOMES}
        answered = sum(requests.values())
        ack = [v for s in window for v in s.ack_ms]
        fill = [v for s in window for v in s.fill_ms]
        return {
            "seconds": len(window),
            "orders": sum(s.orders for s in window),
            "orders_per_s": round(sum(s.orders for s in window) / n, 1),
            "sent_orders_per_s": round(sum(s.sent for s in window) / n, 1),
            "held_orders_per_s": round(sum(s.held for s in window) / n, 1),
            "target_orders_per_s": round(sum(s.target_orders_per_s for s in window) / n, 1),
            "requests": requests,
            "error_rate": round(requests["error"] / answered, 5) if answered else 0.0,
            "ack_ms": {f"p{int(q * 100)}": _r(percentile(ack, q)) for q in (0.5, 0.95, 0.99)},
            "fill_ms": {f"p{int(q * 100)}": _r(percentile(fill, q)) for q in (0.5, 0.95, 0.99)},
            "fills": len(fill),
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
