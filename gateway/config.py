"""The gateway's knobs, read once from Settings (KEEL_GATEWAY_* in `settings.extra`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from gateway.ratelimit import Limits
from infra.settings import Settings


def _int(extra: dict[str, str], name: str, default: int) -> int:
    raw = extra.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    order_timeout_s: float = 5.0          # reply / engine wait for an order request
    limits: Limits = field(default_factory=Limits)
    ws_outbox: int = 2048                 # messages pending per WebSocket client before drop
    ws_heartbeat_s: float = 30.0
    max_streams: int = 1024               # streams one connection may subscribe to

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayConfig:
        x = settings.extra
        return cls(
            host=settings.gateway_host, port=settings.gateway_port,
            order_timeout_s=_int(x, "KEEL_GATEWAY_ORDER_TIMEOUT_MS", 5000) / 1000,
            limits=Limits(per_ip=_int(x, "KEEL_GATEWAY_IP_LIMIT", 6000),
                          standard=_int(x, "KEEL_GATEWAY_STANDARD_LIMIT", 600),
                          vip=_int(x, "KEEL_GATEWAY_VIP_LIMIT", 6000),
                          global_ceiling=_int(x, "KEEL_GATEWAY_GLOBAL_LIMIT", 600_000)),
            ws_outbox=_int(x, "KEEL_GATEWAY_WS_OUTBOX", 2048),
            ws_heartbeat_s=_int(x, "KEEL_GATEWAY_WS_HEARTBEAT_S", 30),
        )
