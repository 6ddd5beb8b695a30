"""Confluent framing against a tiny in-process Schema Registry (the two REST endpoints
the codec uses), standing in for the external service that cannot run here."""
from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra.settings import Settings
from schemas.catalog import SCHEMA_DIR, load_catalog
from schemas.codec import Codec
from schemas.errors import CodecError, CodecFault, RegistryUnavailable
from schemas.registry import SchemaRegistry

from .samples import EVENTS, RECORDS


class FakeRegistry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.schemas: list[str] = []                  # id = index + 1, global like Confluent's
        self.subjects: dict[str, list[int]] = {}
        self.calls: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args):   # keep test output clean
        pass

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.server.calls.append(("POST", self.path, self.headers.get("Authorization")))
        match = re.fullmatch(r"/subjects/([^/]+)/versions", self.path)
        if not match:
            return self._answer(404, {"error_code": 404, "message": "not found"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["schema"]
        json.loads(text)                                # a real registry rejects bad JSON
        with self.server.lock:
            if text not in self.server.schemas:
                self.server.schemas.append(text)
            schema_id = self.server.schemas.index(text) + 1
            self.server.subjects.setdefault(match.group(1), []).append(schema_id)
        self._answer(200, {"id": schema_id})

    def do_GET(self):
        self.server.calls.append(("GET", self.path, self.headers.get("Authorization")))
        match = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
        schema_id = int(match.group(1)) if match else 0
        if not 1 <= schema_id <= len(self.server.schemas):
            return self._answer(404, {"error_code": 40403, "message": "Schema not found"})
        self._answer(200, {"schema": self.server.schemas[schema_id - 1]})


@pytest.fixture
def registry():
    server = FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_confluent_framing_and_subject(registry):
    codec = Codec.from_settings(Settings(schema_registry_url=registry.url))
    data = codec.encode_event(EVENTS[3])
    assert data[0] == 0
    schema_id = int.from_bytes(data[1:5], "big")
    assert registry.subjects == {"keel.events-value": [schema_id]}
    # The registered text is the documented schema itself.
    assert json.loads(registry.schemas[schema_id - 1])["name"] == "EngineEvent"
    assert codec.decode_event(data) == EVENTS[3]


def test_ids_are_cached_after_first_use(registry):
    codec = Codec(registry=SchemaRegistry(registry.url))
    for event in EVENTS:
        codec.encode_event(event)
    assert [c[0] for c in registry.calls] == ["POST"]
    reader = Codec(registry=SchemaRegistry(registry.url))
    for event in EVENTS:
        assert reader.decode_event(codec.encode_event(event)) == event
    assert [c[0] for c in registry.calls] == ["POST", "GET"]


def test_every_schema_round_trips_through_the_registry(registry):
    writer = Codec(registry=SchemaRegistry(registry.url), topic_prefix="t.")
    writer.register_all()
    assert sorted(registry.subjects) == sorted(f"t.{t}-value" for t in [
        "requests", "replies", "orders", "events", "depth", "settlements", "balances",
        "tickers", "candles", "engine.snapshots", "dlq"])
    reader = Codec(registry=SchemaRegistry(registry.url))
    for name, records in RECORDS.items():
        for record in records:
            data = writer.encode(name, record)
            assert data[0] == 0
            assert reader.decode(name, data) == record
            assert reader.decode_any(data) == (name, record)


def test_registry_codec_still_reads_single_object_bytes(registry):
    data = Codec().encode_event(EVENTS[0])
    assert Codec(registry=SchemaRegistry(registry.url)).decode_event(data) == EVENTS[0]


def test_unknown_id_and_wrong_schema(registry):
    codec = Codec(registry=SchemaRegistry(registry.url))
    with pytest.raises(CodecError) as info:
        codec.decode("engine_event", b"\x00\x00\x00\x03\xe7" + b"\x02")
    assert info.value.fault is CodecFault.UNKNOWN_SCHEMA and "40403" in info.value.reason
    candle = codec.encode("candle", RECORDS["candle"][0])
    with pytest.raises(CodecError) as info:
        codec.decode("engine_event", candle)
    assert info.value.fault is CodecFault.WRONG_SCHEMA and "keel.Candle" in info.value.reason
    with pytest.raises(CodecError) as info:
        codec.decode("candle", b"\x00\x00\x00")
    assert info.value.fault is CodecFault.TRUNCATED


def test_older_reader_resolves_newer_writer_through_the_registry(registry, tmp_path):
    # Forward compatibility at run time: a v1 reader fetches the v2 writer schema by id.
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, tmp_path)
    shutil.copytree(SCHEMA_DIR / "versions", tmp_path / "versions")
    (tmp_path / "versions" / "ticker" / "v2.avsc").unlink()
    shutil.copy(SCHEMA_DIR / "versions" / "ticker" / "v1.avsc", tmp_path / "ticker.avsc")
    old = Codec(load_catalog(tmp_path), registry=SchemaRegistry(registry.url))
    new = Codec(registry=SchemaRegistry(registry.url))
    record = RECORDS["ticker"][0]
    decoded = old.decode("ticker", new.encode("ticker", record))
    assert decoded == {k: v for k, v in record.items()
                       if k not in ("first_trade_id", "last_trade_id")}
    # ...and the v2 reader reads what the v1 writer registered.
    v1_bytes = old.encode("ticker", decoded)
    assert new.decode("ticker", v1_bytes)["last_trade_id"] is None
    assert len(registry.schemas) == 2


def test_credentials_in_url_become_basic_auth(registry):
    url = registry.url.replace("http://", "http://key:s%40cret@")
    client = SchemaRegistry(url)
    assert "s%40cret" not in client.base_url and "key" not in client.base_url
    Codec(registry=client).encode_event(EVENTS[0])
    assert registry.calls[0][2] == "Basic a2V5OnNAY3JldA=="   # base64("key:s@cret")


def test_unreachable_registry_is_transient_not_a_bad_record(registry):
    url = registry.url
    registry.shutdown()
    registry.server_close()
    codec = Codec(registry=SchemaRegistry(url, timeout=2))
    with pytest.raises(RegistryUnavailable) as info:
        codec.encode_event(EVENTS[0])
    assert info.value.fault is CodecFault.REGISTRY_UNAVAILABLE
    with pytest.raises(RegistryUnavailable):
        codec.decode("engine_event", b"\x00\x00\x00\x00\x01\x02")
