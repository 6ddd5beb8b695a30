"""ClickHouse access from Settings.

chDB allows one process per data dir, so with the embedded default exactly one process
owns `<data_dir>/clickhouse` (today `keel services clickhouse`; later the ClickHouse
sink) and every other process talks to it over its local HTTP endpoint:

    GET  /ping                      -> 200 "Ok." once `SELECT 1` answers
    POST /query?format=JSONEachRow  -> body = one SQL statement, answer = the raw output

With `KEEL_CLICKHOUSE_URL` set, the same helpers use clickhouse-connect against it.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from infra.settings import Settings


class ClickHouseError(RuntimeError):
    pass


def owner_endpoint(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.embedded_clickhouse_port}"


def open_client(settings: Settings):
    """A clickhouse-connect client on the real store.

    Embedded: opens the chDB dir itself, so only the owning process may call this.
    """
    import clickhouse_connect

    if settings.embedded_clickhouse:
        (settings.data_dir / "clickhouse").mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=settings.clickhouse_dsn)


def query(settings: Settings, sql: str, fmt: str = "JSONEachRow", timeout: float = 30.0) -> bytes:
    """Run one statement wherever ClickHouse lives; returns the raw output in `fmt`."""
    if not settings.embedded_clickhouse:
        client = open_client(settings)
        try:
            return client.raw_query(sql, fmt=fmt)
        finally:
            client.close()
    url = f"{owner_endpoint(settings)}/query?" + urllib.parse.urlencode({"format": fmt})
    request = urllib.request.Request(url, data=sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise ClickHouseError(exc.read().decode(errors="replace").strip()) from None
    except OSError as exc:
        raise ClickHouseError(f"ClickHouse owner at {owner_endpoint(settings)}: {exc}") from None


def rows(settings: Settings, sql: str, timeout: float = 30.0) -> list[dict]:
    """Rows as dicts (JSONEachRow), for small answers."""
    out = query(settings, sql, "JSONEachRow", timeout)
    return [json.loads(line) for line in out.splitlines() if line.strip()]
