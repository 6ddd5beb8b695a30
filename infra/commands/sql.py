"""`keel sql "SELECT ..."`: an analyst's read-only query against the configured ClickHouse.

Embedded chDB: sent to the process that owns the data dir (the ClickHouse sink, or
`keel services clickhouse`) as POST /query?readonly=1, answered on a read-only handle.
A ClickHouse server: sent with the readonly=1 setting. Either way ClickHouse itself
refuses writes, DDL and SET; the statement check here only makes the refusal clearer
and earlier. Exit codes: 0 ok, 1 the query failed, 2 refused (not read-only).
"""
from __future__ import annotations

import argparse
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

from infra.clickhouse import owner_endpoint
from infra.settings import Settings

FORMATS = {"table": "PrettyCompactMonoBlock", "csv": "CSVWithNames", "json": "JSONEachRow"}
READ_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
EXIT_FAILED, EXIT_REFUSED = 1, 2
# Comments and quoted literals are blanked before the checks: a ';' or a keyword inside
# a string is data, not a statement.
_NOISE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|--[^\n]*|/\*.*?\*/", re.S)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="one read-only statement (SELECT, WITH, SHOW, ...)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="table")
    parser.add_argument("--timeout", type=float, default=60.0)


def refusal(sql: str) -> str | None:
    """Why `sql` is not a single read-only statement, or None when it is."""
    text = _NOISE.sub(lambda m: " " if m.group()[0] in "-/" else "''", sql)
    text = text.strip().rstrip(";").strip()
    if not text:
        return "empty query"
    if ";" in text:
        return "one statement at a time"
    first = text.lstrip("(").split(None, 1)[0].upper()
    if first not in READ_STATEMENTS:
        return (f"{first} is not allowed: keel sql is read-only "
                f"(only {', '.join(READ_STATEMENTS)}); writes and DDL are refused")
    if re.search(r"\bINTO\s+OUTFILE\b", text, re.I):
        return "INTO OUTFILE is not allowed: keel sql is read-only"
    return None


def run(args: argparse.Namespace, settings: Settings) -> int:
    why = refusal(args.query)
    if why is not None:
        print(f"keel sql: refused: {why}", file=sys.stderr)
        return EXIT_REFUSED
    fmt = FORMATS[args.format]
    try:
        out = (_embedded(settings, args.query, fmt, args.timeout) if settings.embedded_clickhouse
               else _server(settings, args.query, fmt))
    except QueryFailed as exc:
        message = str(exc)
        print(f"keel sql: {message}", file=sys.stderr)
        return EXIT_REFUSED if "READONLY" in message or "readonly" in message else EXIT_FAILED
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0


class QueryFailed(RuntimeError):
    pass


def _embedded(settings: Settings, sql: str, fmt: str, timeout: float) -> bytes:
    base = owner_endpoint(settings)
    url = f"{base}/query?" + urllib.parse.urlencode({"format": fmt, "readonly": 1})
    request = urllib.request.Request(url, data=sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise QueryFailed(exc.read().decode(errors="replace").strip()) from None
    except OSError as exc:
        raise QueryFailed(f"no ClickHouse owner answers at {base} ({exc}); start `keel up` "
                          f"or `keel sink clickhouse` first") from None


def _server(settings: Settings, sql: str, fmt: str) -> bytes:
    from infra.clickhouse import open_client

    client = open_client(settings)
    try:
        return client.raw_query(sql, fmt=fmt, settings={"readonly": 1})
    except Exception as exc:  # the server's message is the answer
        raise QueryFailed(str(exc)) from None
    finally:
        client.close()
