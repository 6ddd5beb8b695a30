"""Short-lived response caching for public endpoints: the same answer for everyone
within a TTL (ticker 1 s, depth 100 ms, trades 500 ms, exchangeInfo 60 s), so a burst of
pollers costs one render. Keys are the path plus the sorted query parameters."""
from __future__ import annotations

TTL_S = {
    "/api/v3/exchangeInfo": 60.0,
    "/api/v3/depth": 0.1,
    "/api/v3/trades": 0.5,
    "/api/v3/aggTrades": 0.5,
    "/api/v3/klines": 1.0,
    "/api/v3/ticker/24hr": 1.0,
    "/api/v3/ticker/price": 1.0,
    "/api/v3/ticker/bookTicker": 1.0,
    "/api/v3/ticker": 1.0,
}


def cache_control(ttl_s: float) -> str:
    # max-age is whole seconds; sub-second entries say 0 so proxies revalidate.
    return f"public, max-age={int(ttl_s)}"


class ResponseCache:
    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, object]] = {}
        self.hits = self.misses = 0

    def get(self, key: str, now: float):
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            self.hits += 1
            return hit[1]
        self.misses += 1
        return None

    def put(self, key: str, body, now: float, ttl_s: float) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[key] = (now + ttl_s, body)
