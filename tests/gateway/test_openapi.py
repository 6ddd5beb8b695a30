"""`keel gateway` as a real process: /health, /metrics, the OpenAPI document at /docs
covers what is served, and schemathesis against it finds no 5xx."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

from infra.embedded import free_port
from tests.gateway.conftest import spawn, stop

WAIT = 90.0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def test_keel_gateway_process_docs_and_schemathesis(stack, tmp_path):
    port = free_port()
    settings = stack.settings.with_(extra={**stack.settings.extra,
                                           "KEEL_GATEWAY_IP_LIMIT": "100000000",
                                           "KEEL_GATEWAY_STANDARD_LIMIT": "100000000",
                                           "KEEL_GATEWAY_GLOBAL_LIMIT": "100000000"})
    proc = spawn(settings, stack.log_dir, "gateway", "gateway", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while _get(base + "/health")[0] != 200:
            assert proc.poll() is None, stack.logs()
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.2)
        status, body = _get(base + "/docs")
        assert status == 200
        doc = json.loads(body)
        for path, ops in doc["paths"].items():
            for method in ops:
                req = urllib.request.Request(base + path, method=method.upper())
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        code = resp.status
                except urllib.error.HTTPError as exc:
                    code = exc.code
                assert code not in (404, 405) and code < 500, (method, path, code)
        st = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", base + "/docs",
             "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "7",
             "--no-color", "-H", f"X-MBX-APIKEY: {stack.users['alice'].api_key}"],
            capture_output=True, text=True, timeout=600)
        assert st.returncode == 0, st.stdout[-6000:] + st.stderr[-2000:]
        passed = [int(n) for n in re.findall(r"(\d+) passed", st.stdout)]
        assert passed and max(passed) > 100, st.stdout[-3000:]
        assert "Rate limited" not in st.stdout, "limits are raised: every operation is reached"
        status, metrics = _get(base + "/metrics")
        assert status == 200
        text = metrics.decode()
        assert 'exchange_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/api/v3/depth"}' in text
        assert "exchange_ws_connections_active 0.0" in text
    finally:
        stop(proc)
    assert proc.returncode == 0, stack.logs()
