"""The load generator's HTTP/1.1 client against a real aiohttp server (the gateway's
server): answers matched to their requests, connections kept and reused, a server's
close and a timeout handled, and signatures the gateway's own check accepts."""
from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from gateway.auth import payload_and_signature, sign
from infra.loadgen.keepalive import HttpError, Pool
from infra.loadgen.traders import Account, query, signed_target


@contextlib.asynccontextmanager
async def _pool_on(handler, timeout: float):
    """A Pool on a real aiohttp server (port 0) answering with `handler`; both closed."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    pool = Pool(f"http://127.0.0.1:{port}", timeout=timeout)
    try:
        yield pool
    finally:
        pool.close()
        await runner.cleanup()


async def _echo(request: web.Request) -> web.Response:
    if request.path == "/slow":
        await asyncio.sleep(float(request.query["s"]))
    if request.path == "/close":
        return web.json_response({"bye": True}, headers={"Connection": "close"})
    status = int(request.query.get("status", "200"))
    return web.json_response({"path": request.path_qs, "method": request.method,
                              "key": request.headers.get("X-MBX-APIKEY")}, status=status)


def test_answers_match_requests_over_reused_connections():
    async def main():
        async with _pool_on(_echo, 10) as pool:
            for i in range(20):                       # one at a time: one connection
                status, body = await pool.request("POST", f"/a?i={i}", "k1")
                assert status == 200
                assert body == (b'{"path": "/a?i=%d", "method": "POST", "key": "k1"}' % i)
            assert pool.opened == 1
            answers = await asyncio.gather(*(pool.request("GET", f"/b?i={i}")
                                             for i in range(50)))
            assert [a[1].count(b"/b?i=%d\"" % i) for i, a in enumerate(answers)] == [1] * 50
            assert 1 < pool.opened <= 51              # side by side: more connections
            status, body = await pool.request("DELETE", "/c?status=400", "k2")
            assert status == 400 and b'"DELETE"' in body
    asyncio.run(main())


def test_a_closed_connection_is_replaced_and_a_timeout_fails_the_request():
    async def main():
        async with _pool_on(_echo, 0.3) as pool:
            assert (await pool.request("GET", "/close"))[0] == 200
            assert (await pool.request("GET", "/after"))[0] == 200
            assert pool.opened == 2                   # the server said close: a new one
            with pytest.raises(TimeoutError):
                await pool.request("GET", "/slow?s=2")
            assert (await pool.request("GET", "/again"))[0] == 200
    asyncio.run(main())


def test_a_server_gone_is_an_http_error():
    async def main():
        async def drop(request):
            request.transport.close()
            await asyncio.sleep(1)
        async with _pool_on(drop, 5) as pool:
            with pytest.raises(HttpError):
                await pool.request("GET", "/x")
    asyncio.run(main())


def test_signatures_are_what_the_gateway_checks():
    acct = Account(1, "key", "s3cret-value")
    target = signed_target(acct, "/api/v3/order", {
        "symbol": "BTCUSDT", "price": "29985.00", "newClientOrderId": "m1x2",
        "note": "a b&c=d/é"})                        # one value that must be escaped
    path, _, qs = target.partition("?")
    payload, signature = payload_and_signature(qs, "")
    assert path == "/api/v3/order" and signature == sign("s3cret-value", payload)
    assert "note=a%20b%26c%3Dd%2F%C3%A9" in qs and "&timestamp=" in qs
    # The same key signs twice from its one keyed state.
    assert acct.sign("x=1") == sign("s3cret-value", "x=1") == acct.sign("x=1")
    assert query({}) == "" and query({"a": 1, "b": "x y"}) == "a=1&b=x%20y"
    qs = signed_target(acct, "/api/v3/account", {}, recv_window=60000).partition("?")[2]
    payload, signature = payload_and_signature(qs, "")
    assert qs.startswith("recvWindow=60000&timestamp=") and signature == sign("s3cret-value",
                                                                              payload)
