"""Request-weight limits over a sliding one-minute window: per IP, per API key (by tier),
and one global ceiling for the process. Pure: the caller passes the clock.

Each scope keeps one-second buckets, so "the last 60 s" slides a second at a time with
O(1) memory per client. A request is charged only if every scope it touches has room,
and a refusal says how long until enough weight has aged out (Retry-After).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

WINDOW_S = 60

# Binance-like endpoint weights; anything unlisted weighs 1.
WEIGHTS = {
    "/api/v3/exchangeInfo": 20,
    "/api/v3/trades": 25,
    "/api/v3/aggTrades": 2,
    "/api/v3/klines": 2,
    "/api/v3/account": 20,
    "/api/v3/myTrades": 20,
    "/api/v3/allOrders": 20,
    "/api/v3/openOrders": 6,
    "/api/v3/order": 4,
}


def depth_weight(limit: int) -> int:
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def ticker_weight(symbols: int | None) -> int:
    """Ticker endpoints without a symbol cover every pair and weigh more."""
    return 2 if symbols == 1 else 80


@dataclass(frozen=True)
class Limits:
    per_ip: int = 6000
    standard: int = 600
    vip: int = 6000
    global_ceiling: int = 600_000

    def for_tier(self, tier: str) -> int:
        return self.vip if tier == "vip" else self.standard


class Window:
    """Weight used in the last WINDOW_S seconds by one client."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()      # [second, weight], oldest first
        self.total = 0

    def expire(self, now_s: int) -> None:
        while self.buckets and self.buckets[0][0] <= now_s - WINDOW_S:
            self.total -= self.buckets.popleft()[1]

    def add(self, now_s: int, weight: int) -> None:
        if self.buckets and self.buckets[-1][0] == now_s:
            self.buckets[-1][1] += weight
        else:
            self.buckets.append([now_s, weight])
        self.total += weight

    def retry_after(self, now_s: int, weight: int, limit: int) -> int:
        """Whole seconds until `weight` more fits under `limit`."""
        excess = self.total + weight - limit
        if weight > limit:
            return WINDOW_S
        freed = 0
        for second, w in self.buckets:
            freed += w
            if freed >= excess:
                return max(1, second + WINDOW_S - now_s)
        return WINDOW_S


class Verdict(NamedTuple):
    """A tuple, not a frozen dataclass: one is built per request."""

    allowed: bool
    used_ip: int
    used_key: int | None
    scope: str = ""              # which limit refused: "IP", "API key", "global"
    limit: int = 0
    retry_after: int = 0


class RateLimiter:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._ips: dict[str, Window] = {}
        self._keys: dict[str, Window] = {}
        self._global = Window()
        self._last_sweep = 0

    def charge(self, now: float, ip: str, weight: int, api_key: str | None = None,
               tier: str = "standard") -> Verdict:
        now_s = int(now)
        if now_s - self._last_sweep >= WINDOW_S:
            self._sweep(now_s)
        ip_window = self._ips.get(ip)
        if ip_window is None:
            ip_window = self._ips[ip] = Window()
        key_window = None
        limits = self.limits
        if api_key is None:
            checks = ((ip_window, limits.per_ip, "IP"), (self._global, limits.global_ceiling,
                                                          "global"))
        else:
            key_window = self._keys.get(api_key)
            if key_window is None:
                key_window = self._keys[api_key] = Window()
            checks = ((ip_window, limits.per_ip, "IP"),
                      (key_window, limits.for_tier(tier), "API key"),
                      (self._global, limits.global_ceiling, "global"))
        for window, limit, scope in checks:
            window.expire(now_s)
            if window.total + weight > limit:
                return Verdict(False, ip_window.total, key_window.total if key_window else None,
                               scope, limit, window.retry_after(now_s, weight, limit))
        for window, _, _ in checks:
            window.add(now_s, weight)
        return Verdict(True, ip_window.total, key_window.total if key_window else None)

    def _sweep(self, now_s: int) -> None:
        """Forget idle clients once a minute so memory follows active clients only."""
        self._last_sweep = now_s
        for table in (self._ips, self._keys):
            for name in [n for n, w in table.items()
                         if not w.buckets or w.buckets[-1][0] <= now_s - WINDOW_S]:
                del table[name]
